"""`python -m services.metering.report`: report usage from a shell (issue 12, item 4).

    python -m services.metering.report --http URL [--token T] [FILE]   # the HTTP ingest
    python -m services.metering.report --kafka HOST:PORT [FILE]        # the broker

Reads UsageEvents in the proto3 JSON mapping, one a line (NDJSON / JSON lines), from
FILE or stdin. Each line is checked here first with metering's own reading and checks
(`json_event`, `decode.validate`), and a bad one is named on stderr (`line 3:
input_tokens: must not be negative`) and not sent; the others are sent:

- `--http`: NDJSON bodies of up to --batch lines to the ingest, with the bearer token
  of --token or QM_TOKEN (a credential with role reporter). A body the ingest refuses
  for some events (400) is sent again without them; a 503 is retried after its
  Retry-After, up to --retries times; any other refusal refuses the body's lines.
- `--kafka`: each event a protobuf record keyed by its user (murmur2, idempotent,
  acks=all), with the process's Kafka security (QM_KAFKA_*).

It prints `accepted N of M lines` on stdout and exits 0 when every line was accepted,
1 when any line was refused (each named on stderr), 2 for a wrong invocation. Sending a
file again is safe: metering counts an event_id once.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from quartermaster import json_input, kafka
from quartermaster.settings import load_or_exit
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1.usage_pb2 import UsageEvent
from services.metering.acceptance import Accepted
from services.metering.decode import InvalidUsage, validate_within
from services.metering.json_event import JsonEventError, event_from_json, unknown_fields
from services.metering.settings import MeteringSettings

# (line number, the line as read, its event)
Line = tuple[int, str, UsageEvent]


class Outcome:
    """Lines accepted and refused; a refusal is said on stderr at once."""

    def __init__(self, err: IO[str]) -> None:
        self.accepted = 0
        self.refused = 0
        self._err = err

    def refuse(self, number: int, why: str) -> None:
        self.refused += 1
        self.warn(number, why)

    def warn(self, number: int, what: str) -> None:
        """Something said of line `number` on stderr (a refusal, or of a line sent)."""
        self._err.write(f"line {number}: {what}\n")


def read_lines(
    source: Iterable[str], max_age: timedelta, outcome: Outcome, workspace: str = ""
) -> list[Line]:
    """The good lines of `source`, each checked as metering checks it (an event naming
    a workspace other than `workspace` refused; "": any); each bad one refused with its
    reason (blank lines are skipped)."""
    now = datetime.now(UTC)
    accepted = Accepted.at(now, max_age, workspace)
    good: list[Line] = []
    for number, text in enumerate(source, start=1):
        if not text.strip():
            continue
        try:
            raw = json_input.loads(text)
            event = event_from_json(raw)
            validate_within(event, accepted)
        except json.JSONDecodeError as exc:
            outcome.refuse(number, f"not JSON: {exc}")
        except RecursionError:
            outcome.refuse(number, "not JSON: nested too deeply")
        except JsonEventError as exc:
            outcome.refuse(number, str(exc))
        except InvalidUsage as exc:
            outcome.refuse(number, str(exc))
        else:
            good.append((number, text.strip(), event))
            ignored = unknown_fields(raw)
            if ignored:
                outcome.warn(number, f"ignored (no UsageEvent field): {', '.join(ignored)}")
    return good


def send_http(
    url: str, token: str, lines: list[Line], batch: int, retries: int, outcome: Outcome,
    tls: ssl.SSLContext | None,
) -> None:  # fmt: skip
    """Post `lines` to the ingest at `url` in NDJSON bodies of `batch` lines."""
    for start in range(0, len(lines), batch):
        chunk = lines[start : start + batch]
        while chunk:
            status, answer = _post(url, token, chunk, retries, tls)
            if status == 202:
                outcome.accepted += len(chunk)
                break
            named = {p.get("index") for p in answer.get("problems", ())} - {None}
            if status != 400 or not named:
                for number, _, _ in chunk:
                    outcome.refuse(number, f"refused ({status}): {answer.get('error', answer)}")
                break
            said: dict[int, list[str]] = {}
            for problem in answer["problems"]:
                field = f"{problem['field']}: " if problem["field"] else ""
                said.setdefault(problem["index"], []).append(f"{field}{problem['message']}")
            for index, reasons in said.items():
                outcome.refuse(chunk[index][0], "; ".join(reasons))
            # named (of at most MAX_NAMED problems) lines go; the rest is sent again
            chunk = [line for i, line in enumerate(chunk) if i not in named]


def _post(
    url: str, token: str, chunk: list[Line], retries: int, tls: ssl.SSLContext | None
) -> tuple[int, dict[str, Any]]:
    """(status, answer) of posting `chunk`, 503s retried after their Retry-After;
    status 0 when the ingest can't be reached."""
    body = "".join(text + "\n" for _, text, _ in chunk).encode()
    headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {token}"}
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=60, context=tls) as resp:
                return resp.status, _json(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            answer = _json(exc.read())
            if exc.code != 503 or attempt == retries:
                return exc.code, answer
            time.sleep(float(exc.headers.get("Retry-After", "1")))
        except OSError as exc:
            if attempt == retries:
                return 0, {"error": f"{url} not reached: {exc}"}
            time.sleep(1)
    raise AssertionError("unreachable")


def _json(raw: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:200]}
    return answer if isinstance(answer, dict) else {"error": str(answer)[:200]}


def send_kafka(bootstrap: str, lines: list[Line], outcome: Outcome) -> None:
    """Produce each event to the usage topic and wait for the broker's confirmations."""
    producer = kafka.producer(bootstrap, **{"enable.idempotence": True, "acks": "all"})

    def report(number: int) -> Callable[[object, object], None]:
        def delivered(err: object, _msg: object) -> None:
            if err is None:
                outcome.accepted += 1
            else:
                outcome.refuse(number, f"not delivered: {err}")

        return delivered

    for number, _, event in lines:
        producer.produce(
            Topic.USAGE.value, key=event.user_id.encode(), value=event.SerializeToString(),
            headers=[(CONTENT_TYPE, PROTOBUF.encode())], on_delivery=report(number),
        )  # fmt: skip
        producer.poll(0)
    left = producer.flush(30)
    if left:
        sys.stderr.write(f"{left} record(s) not confirmed by the broker within 30 s\n")
        outcome.refused += left


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m services.metering.report",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--http", metavar="URL", help="the ingest's POST URL (…/v1/usage)")
    where.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers")
    parser.add_argument("--token", help="reporter credential for --http (default: QM_TOKEN)")
    parser.add_argument("--batch", type=int, default=500, help="lines a body (--http)")
    parser.add_argument("--retries", type=int, default=5, help="retries of a 503 (--http)")
    parser.add_argument("file", nargs="?", help="JSON lines (default: stdin)")
    args = parser.parse_args(argv)
    token = args.token or os.environ.get("QM_TOKEN", "")
    if args.http and not token:
        parser.error("--http needs --token or QM_TOKEN (a credential with role reporter)")
    if args.batch < 1:
        parser.error("--batch: at least 1")
    settings = load_or_exit(MeteringSettings, "report")
    kafka.configure(settings)
    outcome = Outcome(sys.stderr)
    try:
        with open(args.file) if args.file else sys.stdin as source:
            # To the broker, this shell's QM_WORKSPACE_ID is the check metering will make;
            # the ingest makes it itself.
            ws = "" if args.http else settings.workspace_id
            lines = read_lines(source, timedelta(days=settings.max_event_age_days), outcome, ws)
    except OSError as exc:
        parser.error(f"{args.file}: {exc.strerror}")
    if args.http:
        tls = (
            ssl.create_default_context(cafile=settings.tls_ca_file)
            if settings.tls_ca_file
            else None
        )
        send_http(args.http, token, lines, args.batch, args.retries, outcome, tls)
    else:
        send_kafka(args.kafka, lines, outcome)
    total = outcome.accepted + outcome.refused
    sys.stdout.write(f"accepted {outcome.accepted} of {total} lines\n")
    raise SystemExit(1 if outcome.refused else 0)


if __name__ == "__main__":
    main()
