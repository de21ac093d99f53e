"""``chatft``: the project's command line.

    chatft endpoints list|keys|stop|restart|delete ...   # local endpoints (workspaces/local/cli.py)
    chatft release status ENDPOINT                       # what serves, what is held, the history
    chatft release promote ENDPOINT [--reason TEXT]      # a held canary to 100 %
    chatft release abort ENDPOINT --reason TEXT          # a canary back to what served
    chatft release rollback ENDPOINT --reason TEXT [--version V] [--immediate]
    chatft release history ENDPOINT                      # the history alone (no flow run)
    chatft server up|down|status|clean [options]          # the project's Prefect server (server/)

``release`` acts on the local workspace in ``--state-dir`` (else ``$CHATFT_STATE_DIR``,
else ``./.workspace``) through the ``release_control`` flow, so each action is a flow run
with its artifacts; ``python -m flows.release_control --help`` is the same flow with every
field, for either workspace. ``server`` runs the project's Prefect server with its worker
and deployments (``chatft server --help`` lists the options; docs/server.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from workspaces.local import cli as endpoints_cli
from workspaces.local.workspace import DEFAULT_STATE_DIR

ACTIONS = ("status", "promote", "abort", "rollback", "history")


def _release_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatft release", description="See and steer the release on a local endpoint")
    parser.add_argument("--state-dir", default=os.environ.get("CHATFT_STATE_DIR",
                                                              DEFAULT_STATE_DIR))
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("endpoint")
    parser.add_argument("--reason", default="", help="why (required for abort and rollback)")
    parser.add_argument("--requested-by", default="", help="who asks, for the history")
    parser.add_argument("--version", help="rollback: the version to put back")
    parser.add_argument("--immediate", action="store_true",
                        help="rollback: onto the version's kept deployment at once")
    parser.add_argument("--release-request", help="promote/abort: only this request's release")
    return parser


def release(argv: list[str]) -> int:
    """``chatft release ...``: one action through the release_control flow."""
    args = _release_parser().parse_args(argv)
    os.environ["CHATFT_STATE_DIR"] = args.state_dir
    if args.action == "history":
        from workspaces.local.workspace import LocalWorkspace
        from workspaces.release_history import history_table

        workspace = LocalWorkspace(args.state_dir)
        print(history_table(workspace.release_history(args.endpoint)))
        return 0
    from flows.release_control import main

    flow_argv = ["--endpoint-name", args.endpoint, "--action", args.action]
    for option in ("reason", "requested_by", "version", "release_request"):
        value = getattr(args, option)
        if value:
            flow_argv += [f"--{option.replace('_', '-')}", value]
    if args.immediate:
        flow_argv.append("--immediate")
    try:
        main(flow_argv)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            print(f"chatft release {args.action}: {exc.code}", file=sys.stderr)
            return 1 if isinstance(exc.code, str) else int(exc.code)
    return 0


def server(argv: list[str]) -> int:
    """``chatft server ...``: the server package's command, imported only when asked for,
    so the other commands do not load it."""
    from server.cli import main as server_main

    return server_main(argv)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``release``, ``server`` or the endpoint commands."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in ([], ["-h"], ["--help"]):
        print(__doc__)
        return 0 if args else 2
    if args and args[0] == "release":
        return release(args[1:])
    if args and args[0] == "server":
        return server(args[1:])
    return endpoints_cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
