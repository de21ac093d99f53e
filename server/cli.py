"""``chatft server``: run chat-finetune-flows from a Prefect server on this machine.

``up`` starts a local Prefect server, waits until it is healthy, registers this project's
block types, saves the ``local-workspace/default`` block, makes the shared result storage
(block ``local-file-system/chatft-results``, the server's default result storage, so a
worker on any machine finds the cached steps of another), makes sure the smoke-test
notification exists (block ``custom-webhook/chatft-alerts`` and its automation, see
blocks/alerts.py), creates the ``chatft-process`` work pool, deploys every deployment of
prefect.yaml whose flow file exists, and starts a process worker in the background.
``down`` stops the worker, the server, then the project's PostgreSQL if it runs; ``clean``
does that and deletes the project's PostgreSQL (its data, and its placement under
/var/lib when root had to put it there: server/postgres.py). Pid files and logs
live in the Prefect home folder.

The database: SQLite in the home folder for one person (``--db sqlite``, the default), or
PostgreSQL for a team (``--db postgres``): the project's own (server/postgres.py,
its data under the home folder, its port chosen free and printed), or the team's when
``PREFECT_API_DATABASE_CONNECTION_URL`` is set (its password never printed).

    chatft server up        # UI at http://127.0.0.1:4200
    chatft server up --db postgres
    chatft server status
    chatft server down
    chatft server clean     # down, and delete the project's PostgreSQL

``python -m server ...`` is the same command. Endpoints started by flow runs keep serving
after ``down`` (they belong to the workspace, not to the server); ``down`` lists them with
the commands that stop or delete them. Every command ``up`` and ``down`` print can be
pasted as it is: it names the executable, the port, the Prefect home and the state folder
in use.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from server import auth
from server.instance import PROJECT_DIR, Server
from server.manager import DATABASES, clean, down, status, up
from server.printed_commands import after_up_lines

COMMANDS = ("up", "down", "status", "clean")


def parser() -> argparse.ArgumentParser:
    """The options of ``chatft server``; defaults come from ``CHATFT_*`` variables."""
    found = argparse.ArgumentParser(prog="chatft server", description=__doc__.split("\n")[0])
    found.add_argument("command", choices=COMMANDS)
    env = os.environ.get
    found.add_argument("--home", type=Path,
                       default=Path(env("CHATFT_PREFECT_HOME", PROJECT_DIR / ".prefect")),
                       help="PREFECT_HOME: database, pid files and logs (default ./.prefect)")
    found.add_argument("--host", default="127.0.0.1")
    found.add_argument("--port", type=int, default=int(env("CHATFT_PREFECT_PORT", "4200")))
    found.add_argument("--state-dir", type=Path,
                       default=Path(env("CHATFT_STATE_DIR", PROJECT_DIR / ".workspace")),
                       help="state_dir of block local-workspace/default (default ./.workspace)")
    found.add_argument("--worker-query-seconds", type=float, default=None,
                       help="how often the worker polls for runs (Prefect's default: 10)")
    found.add_argument("--db", choices=DATABASES, default=env("CHATFT_DB", "sqlite"),
                       help="sqlite (one person) or postgres (a team: the project's own "
                       "PostgreSQL, or PREFECT_API_DATABASE_CONNECTION_URL's)")
    found.add_argument("--results-dir", type=Path,
                       default=Path(env("CHATFT_RESULTS_DIR")) if env("CHATFT_RESULTS_DIR")
                       else None,
                       help="shared result storage folder, mounted at the same path on "
                       "every worker machine (default <home>/results)")
    found.add_argument("--auth", action="store_true",
                       help="authentication on loopback too (always on beyond loopback)")
    found.add_argument("--auth-file", type=Path, default=None,
                       help="a team's own auth string (one line, mode 0600) instead of "
                       "the one generated into <home>/auth-string")
    found.add_argument("--public-url", default=env("CHATFT_PUBLIC_URL"),
                       help="where others reach the server, e.g. its TLS proxy "
                       "https://prefect.example.internal (default http://<this host>:PORT)")
    return found


def main(argv: list[str] | None = None) -> int:
    """Run one command of ``chatft server`` (``argv`` without ``server``); its exit code."""
    options = parser()
    args = options.parse_args(argv)
    try:
        # A public URL means others reach the server (through a proxy on this machine,
        # say), so it asks for the auth string even when it listens on loopback.
        auth_file = (auth.resolve(args.home.resolve(), args.host, args.auth_file,
                                  args.auth or bool(args.public_url))
                     if args.command == "up" else auth.recorded(args.home.resolve()))
    except auth.AuthError as exc:
        options.exit(2, f"{options.prog}: error: {exc}\n")
    server = Server(args.home, args.host, args.port, auth_file=auth_file,
                    public_url=args.public_url)
    if args.command == "up":
        deployed = up(server, args.state_dir, args.worker_query_seconds, args.db,
                      args.results_dir)
        for line in after_up_lines(server, deployed, args.state_dir):
            print(line)
    elif args.command == "down":
        down(server, args.state_dir)
    elif args.command == "clean":
        clean(server)
    else:
        print(json.dumps(status(server), indent=2))
    return 0
