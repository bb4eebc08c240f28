"""`make run`, the README's first command, as a newcomer runs it: it comes up from
nothing, shows usage climbing and a decision flipping, carol asking for credits when
denied, her manager approving, carol allowed again and denied when the grant ends, and
Ctrl-C stops everything it started within 30 s."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devtools.localinfra import free_port
from devtools.localinfra.ports import port_open
from tests.helpers import metrics_env, scrape

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.infra  # starts its own PostgreSQL and broker on free ports
# The demo's monthly limit (make run's default is 20) and carol's grant (120): what
# the test waits through, kept short. The grant still outlasts its ALLOW and the
# "policy has the grant" line (1-2 s after the click) several times over.
LIMIT_CREDITS = 12
GRANT_SECONDS = 10


def _lines(stream: object, out: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):  # type: ignore[attr-defined]
        out.put(line)


def _start(run_dir: Path, ports: dict[str, int], **extra: str) -> subprocess.Popen[str]:
    """`make run` on free ports with its data in `run_dir`, as a terminal's foreground job."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QM_")}
    env.update(
        QM_RUN_DIR=str(run_dir),
        QM_LOCAL_PG_PORT=str(ports["pg"]),
        QM_LOCAL_BROKER_PORT=str(ports["broker"]),
        QM_POLICY_ADDR=f"127.0.0.1:{ports['policy']}",
        QM_USAGE_API_ADDR=f"127.0.0.1:{ports['api']}",
        **{**metrics_env(), "QM_METERING_METRICS_ADDR": f"127.0.0.1:{ports['metrics']}"},
        QM_METERING_SESSION_TIMEOUT="4",
        QM_SLACK_STANDIN_PORT=str(ports["slack"]),
        QM_SMTP_SINK_PORT=str(ports["smtp"]),
        QM_REQUESTS_ADDR=f"127.0.0.1:{ports['requests']}",
        QM_NOTIFIER_INTERACTIVITY_ADDR=f"127.0.0.1:{ports['clicks']}",
        QM_METERING_INGEST_ADDR=f"127.0.0.1:{ports['ingest']}",
        # carol reaches it in ~13 s, not ~23 (0.9 credits/s), still with ~2.7 s of WARN
        QM_DEMO_LIMIT_CREDITS=str(LIMIT_CREDITS),
        # short, so the demo's grant ends within the test; alice decides by click
        QM_DEMO_GRANT_SECONDS=str(GRANT_SECONDS),
        QM_DEMO_AUTO_APPROVE="0",
        **extra,
    )
    return subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )


def _ports() -> dict[str, int]:
    names = ("pg", "broker", "policy", "api", "metrics", "slack", "smtp", "requests", "clicks",
             "notifier-metrics", "ingest")  # fmt: skip
    return {name: free_port() for name in names}


def _left_behind(run_dir: Path, ports: dict[str, int]) -> list[str]:
    """What make run left running: listening ports and processes under `run_dir`."""
    left = [f"{name} still listening on {port}" for name, port in ports.items() if port_open(port)]
    pids = subprocess.run(
        ["pgrep", "-f", str(run_dir)], capture_output=True, text=True, check=False
    ).stdout.split()
    return left + [f"process {pid}" for pid in pids]


def _end(proc: subprocess.Popen[str], run_dir: Path) -> None:
    """A failed test still lets make run stop what it started (its children run in
    sessions of their own and would outlive a SIGKILL of this group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shutil.rmtree(run_dir, ignore_errors=True)


def _page(port: int, until: str, within: float = 60) -> str:
    """The stand-in's page once it shows `until`; AssertionError after `within` s."""
    page, deadline = "", time.monotonic() + within
    while until not in page and time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as resp:
            page = resp.read().decode()
        time.sleep(0.5)
    assert until in page, page[-3000:]
    return page


def _approve_carols_request_on_the_page(port: int) -> None:
    """What a newcomer does: alice's message about carol's request, Approve clicked on
    the page (a signed click to the notifier, decided as alice at the requests
    service); carol is told, alice's copy loses its buttons, mails arrive too."""
    page = _page(port, "Carol (runaway agent loop) asks for 200.00 credits")
    alice = page[page.index("asks for 200.00 credits") :]
    index = re.search(r'name="message" value="(\d+)"><input type="hidden" name="action" '
                      r'value="approve"', alice)  # fmt: skip
    assert index is not None, alice[:2000]
    form = urllib.parse.urlencode({"message": index.group(1), "action": "approve"}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/click", data=form) as resp:
        answer = resp.read().decode()
    assert answer.endswith("answered 200: "), answer
    page = _page(port, "Your request for 200.00 credits: approved")
    assert "You approved request demo-" in page  # alice, ephemerally
    assert "Approved by Alice (chat, light) at " in page  # her copy, edited
    assert "to carol@example.com" in page  # the e-mails, on the same page
    # The old form again (a copy without buttons now), and a message not on the page:
    # refused with why, not a server error.
    for fields, status, why in (
        ({"message": index.group(1), "action": "approve"}, 409, "has no 'approve' button"),
        ({"message": "99999", "action": "approve"}, 404, "no message '99999'"),
    ):
        again = urllib.parse.urlencode(fields).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/click", data=again)
        assert refused.value.code == status
        assert why in refused.value.read().decode()


def _until_all(
    lines: queue.Queue[str], seen: list[str], proc: subprocess.Popen[str], texts: list[str],
    within: float, start: int,
) -> list[str]:  # fmt: skip
    """Read lines (into `seen`) until each of `texts` is in a line from seen[start:] on,
    in any order (they come from loops of their own); those lines, in texts' order."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = [next((x for x in seen[start:] if t in x), "") for t in texts]
        if all(found):
            return found
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert proc.poll() is None, "make run exited early:\n" + "".join(seen)
    raise AssertionError(f"not all of {texts} within {within} s:\n" + "".join(seen[start:]))


def _credit_request_story(
    lines: queue.Queue[str], seen: list[str], proc: subprocess.Popen[str], slack_port: int
) -> None:
    """carol, denied, asks for credits; alice approves on the stand-in's page; carol is
    allowed until the grant ends, then denied again (QM_DEMO_GRANT_SECONDS)."""
    denied = len(seen)
    asked, _, _ = _until_all(lines, seen, proc, [
        ">>> carol asks for", "    awaiting alice (step manager); standing: ",
        "    alice decides on the Slack stand-in's page, or with the CLI:",
    ], 60, denied)  # fmt: skip
    found = re.search(
        rf">>> carol asks for 200 credits for {GRANT_SECONDS} s \(request (demo-\w+)\): \"", asked
    )
    assert found, asked
    rid = found.group(1)
    start = len(seen)
    _approve_carols_request_on_the_page(slack_port)
    approved, _, _ = _until_all(lines, seen, proc, [
        f">>> {rid} approved by alice: ", ">>> carol is now ALLOW",
        "    policy has the grant: carol's limit is ",
    ], 60, start)  # fmt: skip
    assert f"200.00 credits for {GRANT_SECONDS} s, until " in approved, approved
    after_allow = next(i for i in range(start, len(seen)) if ">>> carol is now ALLOW" in seen[i])
    _until_all(lines, seen, proc, [
        ">>> carol is now DENY", f">>> {rid} ended: the grant's time ran out",
    ], 60, after_allow)  # fmt: skip


def _says_the_zone_and_no_librdkafka_info(text: str) -> None:
    """The workspace's time zone is said; librdkafka's informational lines (BGQUEUE as a
    client closes) stay out of the console: its clients log from warnings up."""
    assert not re.search(r"^%[5-7]\|", text, re.MULTILINE), text[:3000]
    assert "seeded workspace 'default' (time zone UTC: its days and months" in text


def test_make_run_comes_up_flips_a_decision_and_stops_on_ctrl_c() -> None:
    run_dir = ROOT / ".run" / f"make-run-test-{os.getpid()}"
    ports = _ports()
    proc = _start(run_dir, ports)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                assert proc.poll() is None, "make run exited early:\n" + "".join(seen)
                continue
            if ">>> carol is now DENY" in seen[-1]:
                break
        else:
            raise AssertionError("no DENY within 180 s:\n" + "".join(seen[-40:]))
        text = "".join(seen)
        assert "policy gRPC serving on" in text
        # Ready means counted: the probe's line, before the demo's traffic starts.
        ready = re.search(r"\n  ready: an event produced now was counted and in policy's "
                          r"budget (\d+\.\d) s later \(user qm-ready-probe\)\n", text)  # fmt: skip
        assert ready, text[:4000]
        assert text.index(ready.group(0)) < text.index("Demo traffic:")
        assert "  TLS: off (plaintext" in text
        # The README's gateway_token: printed with its name and role.
        assert re.search(r"\n    local-gateway \(gateway\) \S{16,}\n", text), text[:2000]
        assert (
            f"Slack stand-in: what the notifier sends shows on http://127.0.0.1:{ports['slack']}/"
            in text
        )
        assert ">>> carol is now WARN" in text
        assert "limit reached" in seen[-1]
        page = ""
        deadline = time.monotonic() + 60
        # carol's warnings say what drove her spend (the notifier asks the Cost API)
        while "Most of it: product agents (" not in page and time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports['slack']}/") as resp:
                page = resp.read().decode()
            time.sleep(0.5)
        assert "to UCAROL" in page, "carol's threshold message reaches the Slack stand-in"
        assert "Most of it: product agents (" in page, page[-3000:]
        # The ingest's line, with the reporter token make run made: it takes an event.
        url = f"http://127.0.0.1:{ports['ingest']}/v1/usage"
        _says_the_zone_and_no_librdkafka_info(text)
        said = re.search(rf"--http {re.escape(url)} --token=(\S{{16,}}) < events.jsonl", text)
        assert said, text[:3000]
        event = {
            "eventId": "make-run-1", "occurredAt": datetime.now(UTC).isoformat(),
            "userId": "dave", "product": "cli", "model": "gpt-5", "inputTokens": 10,
        }  # fmt: skip
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {said.group(1)}"}
        body = json.dumps(event).encode()
        posted = urllib.request.Request(url, body, method="POST", headers=headers)
        with urllib.request.urlopen(posted, timeout=30) as resp:
            assert resp.status == 202
        metrics = f"127.0.0.1:{ports['metrics']}"
        counted = scrape(metrics, "qm_metering_events_total", outcome="counted")
        assert counted is not None, "metering serves its metrics"
        assert counted > 0
        _credit_request_story(lines, seen, proc, ports["slack"])

        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stopped = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - stopped
        time.sleep(0.5)
        while not lines.empty():
            seen.append(lines.get())
        assert "Stopped. Bye." in "".join(seen), "".join(seen[-20:])
        # Ctrl-C's shutdown without librdkafka's or gRPC's noise.
        shutdown = "".join(seen[seen.index(next(s for s in seen if "Stopping" in s)) :])
        assert "rdkafka" not in shutdown, shutdown
        assert "fork_posix" not in shutdown, shutdown
        assert took < 30
        assert _left_behind(run_dir, ports) == []
    finally:
        _end(proc, run_dir)


def test_make_run_says_when_a_service_dies_and_stops_everything() -> None:
    """A service that dies is named with the end of its log, and the run stops (status
    non-zero) instead of going on as if the system were whole."""
    run_dir = ROOT / ".run" / f"make-run-dies-{os.getpid()}"
    ports = _ports()
    proc = _start(run_dir, ports, QM_DEMO_TRAFFIC="0")
    try:
        out = proc.stdout
        assert out is not None
        seen: list[str] = []
        for line in out:
            seen.append(line)
            if "policy gRPC serving on" in line:
                break
        pids = dict(re.findall(r"started ([a-z-]+) \(pid (\d+)\)", "".join(seen)))
        assert set(pids) == {"metering", "policy", "cost-api", "requests", "notifier", "ingest"}, (
            "".join(seen)
        )
        os.kill(int(pids["cost-api"]), signal.SIGKILL)
        status = proc.wait(timeout=60)
        text = "".join(seen) + out.read()
        assert status != 0
        assert "cost-api exited by itself (status -9)" in text, text
        assert "Stopped everything" in text
        assert "stopped policy" in text
        assert "stopped metering" in text
        assert _left_behind(run_dir, ports) == []
    finally:
        _end(proc, run_dir)
