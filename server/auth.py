"""Who may use a team's Prefect server: its auth string, where it is kept, who gets it.

Prefect's self-hosted server checks one shared string (HTTP basic authentication:
``PREFECT_SERVER_API_AUTH_STRING`` on the server, ``PREFECT_API_AUTH_STRING`` on every
client, worker and flow run; the UI asks for it once per browser). ``up`` turns it on
whenever the server listens beyond loopback, and on loopback when asked (``--auth``):

- The string is generated once (``chatft:`` and 43 random URL-safe characters) into
  ``<home>/auth-string``, mode 0600, and kept across ``up`` and ``down``; a team's own
  file is taken with ``--auth-file`` and must be closed to others (mode 0600 or 0400).
- ``<home>/auth-file`` remembers which file is in use (its path, not the string), so a
  later ``up`` of the same home keeps authentication on with the same string.
- The string reaches the server and the workers ``up`` starts through their environment
  only: never a command line (``ps`` shows those to every user), a log or a printed
  command. Printed commands read it from the file in the shell that runs them
  (``PREFECT_API_AUTH_STRING="$(cat FILE)" prefect ...``), an assignment the shell keeps
  out of the command's arguments.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import secrets
import shlex
import stat
import threading
from pathlib import Path

FILE_NAME = "auth-string"
POINTER_NAME = "auth-file"
USER = "chatft"
# What the server, the UI and every client read (Prefect's own settings).
SERVER_SETTING = "PREFECT_SERVER_API_AUTH_STRING"
CLIENT_SETTING = "PREFECT_API_AUTH_STRING"


class AuthError(RuntimeError):
    """The auth string cannot be used as given; the message names the file and the fix."""


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, others may reach it


def generate(path: Path) -> None:
    """Write a new strong auth string to ``path`` (0600), unless a file is there already.

    The string is written to a private temporary file and linked into place, so of two
    ``up``s at once one string wins whole and both use it; none sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"{USER}:{secrets.token_urlsafe(32)}\n")
        os.link(tmp, path)  # fails, leaving the first one, when another up made it first
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path, option: str = "--auth-file") -> str:
    """The auth string in ``path``; refused when others may read the file or it is empty."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise AuthError(f"{option}: cannot read {path} ({exc.strerror})") from exc
    if not stat.S_ISREG(mode):
        raise AuthError(f"{option}: {path} is not a file")
    if mode & 0o077:
        raise AuthError(
            f"{option}: {path} is open to other users (mode {stat.filemode(mode)}); the "
            f"auth string opens the whole server: `chmod 600 {path}`")
    text = path.read_text(encoding="utf-8").strip()
    if not text or "\n" in text:
        raise AuthError(f"{option}: {path} must hold the auth string on one line "
                        "(e.g. team:a-long-random-password)")
    return text


def resolve(home: Path, host: str, auth_file: Path | None = None,
            wanted: bool = False) -> Path | None:
    """The auth file the server of ``home`` uses, made or recorded as needed; None when
    it runs without authentication (loopback, never asked for)."""
    pointer = home / POINTER_NAME
    if auth_file is not None:
        path = auth_file.expanduser().resolve()
        read(path)
    elif pointer.exists():
        path = Path(pointer.read_text(encoding="utf-8").strip())
        read(path, option=f"the auth file recorded in {pointer}")
        return path
    elif wanted or not is_loopback(host):
        path = home / FILE_NAME
        if not path.exists():
            generate(path)
        read(path)
    else:
        return None
    home.mkdir(parents=True, exist_ok=True)
    # Replaced whole, never truncated in place: another up reading it mid-write would
    # otherwise read an empty path.
    staged = pointer.with_name(f".{pointer.name}.{os.getpid()}.{threading.get_ident()}")
    staged.write_text(f"{path}\n", encoding="utf-8")
    os.replace(staged, pointer)
    return path


def recorded(home: Path) -> Path | None:
    """The auth file the server of ``home`` was set up with, or None."""
    pointer = home / POINTER_NAME
    return Path(pointer.read_text(encoding="utf-8").strip()) if pointer.exists() else None


def basic_header(auth_string: str) -> str:
    """The Authorization header value Prefect's server checks."""
    return "Basic " + base64.b64encode(auth_string.encode()).decode()


def client_prefix(auth_file: Path | None) -> str:
    """Shell assignments that give a printed command the string without showing it."""
    if auth_file is None:
        return ""
    return f'{CLIENT_SETTING}="$(cat {shlex.quote(str(auth_file))})" '
