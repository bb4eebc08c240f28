"""A child process with a log file, stopped politely and then firmly."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def read_since(path: Path, offset: int = 0) -> str:
    """What `path` holds from byte `offset` on, decoded ("" when there is no such file):
    of a log every start appends to, what one start wrote."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


class ChildProcess:
    """Runs `argv` with stdout+stderr going to `log_path`; `stop()` leaves nothing behind.

    The child gets its own process group so that stopping it also stops anything it
    spawned, and so that a Ctrl-C in the terminal reaches only the supervisor, which
    then stops children in order.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.user = user
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._log_start = 0  # where the latest start's output begins in the log

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_start = self._log.tell()
        self._proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            user=self.user,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """Started, not stopped, and not exited."""
        return self._proc is not None and self._proc.poll() is None

    def poll(self) -> int | None:
        """The exit code if the process has ended, else None."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = 40, *, this_start: bool = False) -> str:
        """The log's last `lines`; with `this_start`, of what the latest start wrote
        alone (the log is appended to by every start)."""
        text = read_since(self.log_path, self._log_start if this_start else 0)
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL the whole process group at once (used by crash tests)."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL it."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                except ProcessLookupError:
                    proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
