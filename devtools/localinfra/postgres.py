"""A PostgreSQL 15 cluster in a project-local directory.

Installs the Debian package when the server binaries are missing (needs root, as on
these machines). `initdb` refuses to run as root, so as root the cluster belongs to
the `postgres` user the package creates; the data directory sits inside the project
and is git-ignored.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

from devtools.localinfra.ports import start_on_a_port, wait_for_port
from devtools.localinfra.process import read_since

log = logging.getLogger(__name__)

PG_MAJOR = "15"
DATABASE = "quartermaster"
ROLE = "qm"


def _bindir() -> Path | None:
    for candidate in (Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin"),):
        if (candidate / "initdb").exists():
            return candidate
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def ensure_installed() -> Path:
    """The directory with initdb/pg_ctl, installing `postgresql-15` when it is missing."""
    bindir = _bindir()
    if bindir is not None:
        return bindir
    if os.geteuid() != 0:
        raise RuntimeError(
            f"PostgreSQL {PG_MAJOR} is not installed and this user cannot install it: "
            f"run `sudo apt-get install -y postgresql-{PG_MAJOR}` or set QM_DATABASE_URL"
        )
    log.info("installing postgresql-%s from Debian packages", PG_MAJOR)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", f"postgresql-{PG_MAJOR}"],
        check=True,
        env=env,
    )
    bindir = _bindir()
    if bindir is None:
        raise RuntimeError(f"postgresql-{PG_MAJOR} installed but initdb was not found")
    return bindir


class LocalPostgres:
    """`start()` creates the cluster on first use and starts it on 127.0.0.1:`port`; with
    no port it picks a free one, and another when a process started meanwhile took it
    (`free_port` only says nothing listened a moment ago). Restarts keep the port.
    """

    def __init__(
        self, root: Path, port: int | None = None, *, durable: bool = True, fresh: bool = False
    ) -> None:
        self.root = root.resolve()
        self.datadir = self.root / "data"
        self._choose_port = not port  # None or 0: ours to choose
        self._started = False
        self.port = port or 0
        # Tests throw the cluster away afterwards, so they skip fsync for speed.
        self.durable = durable
        # Start from an empty cluster (the local broker forgets everything on restart,
        # so state kept beside it must be forgotten too).
        self.fresh = fresh
        self._bindir: Path | None = None
        self._user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        cmd = [str(self._bindir / argv[0]), *argv[1:]]
        if self._user is not None:
            # As `postgres` through setpriv, not subprocess's user=: that forces a plain
            # fork, whose child runs the parent's atfork handlers (grpc's, in a test
            # process) before exec, and one crashed pg_ctl with SIGSEGV under load.
            # Without user= Python uses vfork, which runs none.
            cmd = ["setpriv", f"--reuid={self._user}", f"--regid={self._user}",
                   "--init-groups", *cmd]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, cwd="/", check=False)

    def _check(self, *argv: str) -> None:
        res = self._run(*argv)
        if res.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({res.returncode}): {res.stderr.strip() or res.stdout.strip()}"
            )

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            pw = pwd.getpwnam(self._user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def start(self) -> None:
        self._bindir = ensure_installed()
        if self._user is not None:
            pwd.getpwnam(self._user)  # the Debian package creates it; fail clearly if not
        self.root.mkdir(parents=True, exist_ok=True)
        self._chown(self.root)
        if self.fresh and (self.datadir / "PG_VERSION").exists():
            self._stop_if_running()
            shutil.rmtree(self.datadir)
        if not (self.datadir / "PG_VERSION").exists():
            shutil.rmtree(self.datadir, ignore_errors=True)
            self._check(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                ROLE,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        # A previous run that was killed may have left its server running.
        self._stop_if_running()
        self.port = start_on_a_port(
            "postgres",
            self.port,
            self._choose_port and not self._started,  # restarts keep the port
            self._start_on,
            "Address already in use",
        )
        self._started = True
        wait_for_port(self.port, 30, what="postgres")
        exists = self._run(
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            ROLE,
            "-d",
            "postgres",
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'",
        )
        if exists.stdout.strip() != "1":
            self._check("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", ROLE, DATABASE)
        log.info("postgres ready at %s", self.url)

    def _start_on(self, port: int) -> tuple[str, str] | None:
        """One `pg_ctl start` on `port`: None once up, else what went wrong and what
        this start logged (the log is appended to by every start)."""
        self.port = port
        since = self._log_size()
        try:
            self._pg_ctl_start()
        except RuntimeError as exc:
            return f"did not start on port {port}: {exc}", self._log_tail(since)
        return None

    def _pg_ctl_start(self) -> None:
        """`pg_ctl start -w` on `self.port`: RuntimeError when the server does not come up
        (a port another process took meanwhile among the reasons: see `_log_tail`)."""
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
        ]
        if not self.durable:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._check(
            "pg_ctl",
            "start",
            "-D",
            str(self.datadir),
            "-w",
            "-t",
            "60",
            "-l",
            str(self.root / "postgres.log"),
            "-o",
            " ".join(opts),
        )

    def _log_size(self) -> int:
        try:
            return (self.root / "postgres.log").stat().st_size
        except FileNotFoundError:
            return 0

    def _log_tail(self, since: int = 0, size: int = 4000) -> str:
        """The log's last `size` characters of what was written from byte `since` on."""
        return read_since(self.root / "postgres.log", since)[-size:]

    def stop(self) -> None:
        if self._bindir is None:
            return
        self._stop_if_running()
        self._bindir = None

    def _stop_if_running(self) -> None:
        """Fast shutdown (clients disconnected) of a server running on our data dir."""
        if self._run("pg_ctl", "status", "-D", str(self.datadir)).returncode == 0:
            self._check("pg_ctl", "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30")
