"""Small helpers for picking and waiting on loopback ports."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1", what: str = "") -> None:
    """Block until something accepts connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{what or 'service'} did not listen on {host}:{port} within {timeout:.0f}s")


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (any address), from /proc/net/tcp{,6}.

    Each line's second field is `ADDR:PORT` in hex, the fourth the state (0A = LISTEN),
    the tenth the socket's inode (proc(5))."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def listens(pid: int, port: int, *, group: bool = False) -> bool:
    """Whether process `pid` itself holds a socket listening on TCP `port` (Linux);
    with `group`, `pid` or a process of the process group it leads (a child started
    in its own session, run through a wrapper that does not exec: the listener is
    the wrapper's child).

    A port that merely answers may belong to someone else: `free_port` can hand two
    processes the same port, and a child that loses the race exits while the winner
    answers for it."""
    inodes = _listening_inodes(port)
    if not inodes:
        return False
    owners = _group(pid) if group else [pid]
    return any(_holds(owner, inodes) for owner in owners)


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed since the listing
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


def _group(pgid: int) -> list[int]:
    """`pgid` and the processes of the process group it leads."""
    members = [pgid]
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == pgid:
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # ended since the listing
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


# (what went wrong, what the failed start logged) of a start that failed, else None
Attempt = Callable[[int], "tuple[str, str] | None"]


def start_on_a_port(what: str, port: int, choose: bool, start: Attempt, clash: str) -> int:
    """Start `what` with `start(port)` on `port`, or when `choose` on a free port, and on
    another (3 tries in all) when the failed start logged `clash` (its "address in
    use"): `free_port` only says nothing listened a moment ago, and a process started
    meanwhile may take the port. `start` returns None once up, else what went wrong and
    what that start alone logged, having cleaned up after itself. Returns the port;
    RuntimeError naming the problem (and the port when another process holds it) with
    the log."""
    attempts = 3 if choose else 1
    for attempt in range(1, attempts + 1):
        if choose:
            port = free_port()
        failed = start(port)
        if failed is None:
            return port
        problem, logged = failed
        clashed = clash in logged
        if attempt == attempts or not clashed:
            why = f" (port {port} is in use by another process)" if clashed else ""
            raise RuntimeError(f"{what} {problem}{why}:\n{logged}")
        log.info("%s: port %d was taken meanwhile; trying another", what, port)
    raise AssertionError("unreachable: the last attempt returns or raises")
