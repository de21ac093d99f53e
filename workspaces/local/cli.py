"""``chatft``: look after local endpoints from a shell.

    chatft endpoints list                 # name, state, health, URL, deployments, traffic
    chatft endpoints keys NAME            # the keys, to call an endpoint yourself
    chatft endpoints stop NAME            # stop serving, keep the endpoint
    chatft endpoints restart NAME         # serve again (e.g. after a reboot)
    chatft endpoints delete NAME | --all  # stop and delete

The state directory is ``--state-dir``, else ``$CHATFT_STATE_DIR``, else ``./.workspace``.
"""

from __future__ import annotations

import argparse
import os
import sys

from workspaces.errors import WorkspaceError
from workspaces.local.workspace import DEFAULT_STATE_DIR, LocalWorkspace


def _list(ws: LocalWorkspace) -> int:
    endpoints = ws.list_endpoints()
    if not endpoints:
        print(f"no local endpoints in {ws.root}")
        return 0
    for e in endpoints:
        health = "serving" if e.healthy else "NOT SERVING (server stopped or dead)"
        print(f"{e.name}  {e.provisioning_state}  {health}  {e.scoring_uri}")
        for d in e.deployments:
            print(
                f"    {d.name}: {d.provisioning_state}, traffic {e.traffic.get(d.name, 0)}%, "
                f"model {d.model_id}"
            )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: the process's arguments); the exit status."""
    parser = argparse.ArgumentParser(prog="chatft", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--state-dir", default=os.environ.get("CHATFT_STATE_DIR", DEFAULT_STATE_DIR)
    )
    sub = parser.add_subparsers(dest="group", required=True)
    endpoints = sub.add_parser("endpoints", help="local online endpoints")
    action = endpoints.add_subparsers(dest="action", required=True)
    action.add_parser("list")
    for name in ("keys", "stop", "restart"):
        action.add_parser(name).add_argument("name")
    delete = action.add_parser("delete")
    delete.add_argument("name", nargs="?")
    delete.add_argument("--all", action="store_true", help="every local endpoint")
    args = parser.parse_args(argv)

    ws = LocalWorkspace(args.state_dir, chosen_by="chatft --state-dir (default: "
                        "$CHATFT_STATE_DIR, else ./.workspace)")
    try:
        if args.action == "list":
            return _list(ws)
        if args.action == "keys":
            keys = ws.get_endpoint_keys(args.name)
            print(f"primary:   {keys.primary.get_secret_value()}")
            print(f"secondary: {keys.secondary.get_secret_value()}")
            return 0
        if args.action == "stop":
            stopped = ws.endpoints.stop(args.name)
            print(f"{args.name}: {'stopped' if stopped else 'was not running'}")
            return 0
        if args.action == "restart":
            endpoint = ws.restart_endpoint(args.name)
            print(f"{args.name}: serving at {endpoint.scoring_uri}")
            return 0
        if args.action == "delete":
            if not args.all and not args.name:
                parser.error("endpoints delete needs a NAME or --all")
            names = [e.name for e in ws.list_endpoints()] if args.all else [args.name]
            for name in names:
                ws.begin_delete_endpoint(name)
                print(f"deleted {name}")
            if not names:
                print(f"no local endpoints in {ws.root}")
            return 0
    except WorkspaceError as exc:
        print(f"chatft: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
