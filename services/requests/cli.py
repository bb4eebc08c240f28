"""`python -m services.requests.cli`: credit requests from a terminal.

    python -m services.requests.cli create 50 --hours 24 --why "eval run for the launch"
    python -m services.requests.cli get cr-1234
    python -m services.requests.cli decide cr-1234 approve --version 1 [--credits 30]
    python -m services.requests.cli cancel cr-1234 --version 1
    python -m services.requests.cli revoke cr-1234 --version 2 --reason "done early"
    python -m services.requests.cli mine | awaiting | all [--limit 50] [--page-token …]

Who acts is whoever the token names (QM_TOKEN or --token: a member's or admin's own
credential, see docs/security.md), never an argument. The address is --addr or
QM_REQUESTS_ADDR. Exit 0 done, 1 refused (the server's status and reason on stderr),
2 a bad command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import grpc

from quartermaster.cliargs import Parser
from quartermaster.grpcclient import bearer, open_blocking_channel
from quartermaster.money import MICROS_PER_CREDIT, credits
from quartermaster.settings import load_or_exit
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from quartermaster.validation import text_problem
from quartermaster.wire import from_timestamp
from services.requests.ask import MAX_AMOUNT_MICROS, MAX_DURATION_SECONDS
from services.requests.settings import RequestsSettings

TIMEOUT_S = 30.0
MAX_PAGE = 500  # as RequestService's
MAX_VERSION = 2**63 - 1  # int64 on the wire


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def scaled(
    unit: int, unit_name: str, name: str, high: int, *, zero: str = ""
) -> Callable[[str], int]:
    """An argparse type: a decimal number of `name`s (e.g. credits) as a whole count of
    `unit_name`s (`unit` of them a `name`), between 1 and `high` of them. 0 is taken
    only when `zero` says what it means (e.g. "as asked"); a positive number that
    rounds to 0 never is. ArgumentTypeError (exit 2, naming the argument) otherwise."""

    def parse(text: str) -> int:
        value = _finite(text)
        if value == 0 and zero:
            return 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be positive" + (
                f" (or 0: {zero})" if zero else ""))  # fmt: skip
        if value > high / unit:
            raise argparse.ArgumentTypeError(f"{text} is more than {high / unit:g} {name}")
        count = round(value * unit)
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text} {name} round to 0 {unit_name}; the least is {1 / unit:.6f} {name}"
            )
        return count

    return parse


def whole(low: int, high: int, high_text: str = "") -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high` (said as `high_text`, when
    given: Parser hides words as long as a token)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low} and {high_text or high}")
        return value

    return parse


def text(value: str) -> str:
    """An argparse type: text that can be sent (no NUL; bytes the terminal gave that
    are not UTF-8 come as lone surrogates, which protobuf can't encode)."""
    bad = text_problem(value)
    if bad:
        raise argparse.ArgumentTypeError(bad)
    return value


credits_micros = scaled(MICROS_PER_CREDIT, "micro-credits", "credits", MAX_AMOUNT_MICROS)
hours_seconds = scaled(3600, "seconds", "hours", MAX_DURATION_SECONDS)


def _state(s: int) -> str:
    return requests_pb2.RequestState.Name(s).removeprefix("REQUEST_STATE_").lower()  # type: ignore[arg-type]


def show(r: requests_pb2.CreditRequest, out: TextIO) -> None:
    """A request as a few lines: what, who, state, standing and timeline."""
    out.write(f"{r.request_id}  {_state(r.state)}  v{r.version}\n")
    out.write(
        f"  {r.requester_user_id} asks {credits(r.amount_micros)} credits for "
        f"{r.duration_seconds} s: {r.justification}\n"
    )
    if r.granted_micros and r.granted_micros != r.amount_micros:
        out.write(f"  granted {credits(r.granted_micros)} credits\n")
    s = r.standing
    if s.unavailable:
        out.write(f"  standing incomplete: {s.unavailable}\n")
    out.write(
        f"  standing: {credits(s.used_micros)} of {credits(s.limit_micros)} this {s.period},"
        f" {credits(s.burn_7d_micros)} in 7 days\n"
    )
    for i, step in enumerate(r.steps):
        mark = "*" if i == r.current_step and r.state == requests_pb2.REQUEST_STATE_PENDING else " "
        out.write(
            f" {mark}step {step.name}: {step.required} of {', '.join(step.approver_user_ids)}"
            f" (approved: {', '.join(step.approved_by) or 'none'})\n"
        )
    for e in r.timeline:
        who = f"{e.actor_user_id} via {e.via}" if e.via else e.actor_user_id
        at = from_timestamp(e.at).isoformat(timespec="seconds")
        out.write(
            f"  {at}  v{e.version} {e.action} by {who}{': ' + e.reason if e.reason else ''}\n"
        )


def parser() -> argparse.ArgumentParser:
    """The command line; a bad argument exits 2 with the usage and names it."""
    p = Parser(prog="python -m services.requests.cli")
    p.add_argument("--addr", help="RequestService address (default: QM_REQUESTS_ADDR)")
    p.add_argument("--token", help="bearer token (default: QM_TOKEN; see docs/security.md)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="ask for credits")
    c.add_argument("credits", type=credits_micros, help="how many (decimal, > 0)")
    c.add_argument("--hours", type=hours_seconds, default=24 * 3600,
                   help="how long once approved (decimal, > 0; default 24)")  # fmt: skip
    c.add_argument("--why", type=text, required=True, help="what the credits are for")
    c.add_argument("--link", type=text, action="append", default=[])
    c.add_argument("--product", type=text, default="")
    c.add_argument("--project", type=text, default="")
    c.add_argument("--id", type=text, default="",
                   help="your id for this ask (asking again returns it)")  # fmt: skip
    sub.add_parser("get", help="a request with its timeline").add_argument("request_id", type=text)
    d = sub.add_parser("decide", help="approve or deny a request awaiting you")
    d.add_argument("request_id", type=text)
    d.add_argument("vote", choices=["approve", "deny"])
    d.add_argument("--version", type=whole(1, MAX_VERSION, "2**63 - 1"), required=True,
                   help="the version you decided on")  # fmt: skip
    d.add_argument("--reason", type=text, default="")
    d.add_argument("--credits", type=scaled(MICROS_PER_CREDIT, "micro-credits", "credits",
                                            MAX_AMOUNT_MICROS, zero="as asked"),
                   default=0, help="grant less than asked")  # fmt: skip
    d.add_argument("--hours", type=scaled(3600, "seconds", "hours", MAX_DURATION_SECONDS,
                                          zero="as asked"),
                   default=0, help="grant shorter than asked")  # fmt: skip
    for name, what in (
        ("cancel", "withdraw your pending request"),
        ("revoke", "end an approved grant early"),
    ):
        x = sub.add_parser(name, help=what)
        x.add_argument("request_id", type=text)
        x.add_argument("--version", type=whole(1, MAX_VERSION, "2**63 - 1"), required=True)
        x.add_argument("--reason", type=text, default="", required=name == "revoke")
    for name in ("mine", "awaiting", "all"):
        x = sub.add_parser(name, help=f"list requests: {name}")
        x.add_argument("--limit", type=whole(1, MAX_PAGE), default=50)
        x.add_argument("--page-token", type=text, default="",
                       help="the next page (printed by the last)")  # fmt: skip
    return p


def _call(stub: requests_pb2_grpc.RequestServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    md, pb = ns.metadata, requests_pb2
    if ns.command == "create":
        r = stub.Create(
            pb.CreateCreditRequest(
                request_id=ns.id,
                amount_micros=ns.credits,
                duration_seconds=ns.hours,
                justification=ns.why,
                links=ns.link,
                product=ns.product,
                project=ns.project,
            ),
            metadata=md,
            timeout=TIMEOUT_S,
        )
    elif ns.command == "get":
        r = stub.Get(pb.GetCreditRequest(request_id=ns.request_id), metadata=md, timeout=TIMEOUT_S)
    elif ns.command == "decide":
        r = stub.Decide(
            pb.DecideCreditRequest(
                request_id=ns.request_id,
                version=ns.version,
                reason=ns.reason,
                vote=pb.VOTE_APPROVE if ns.vote == "approve" else pb.VOTE_DENY,
                granted_micros=ns.credits,
                granted_duration_seconds=ns.hours,
            ),
            metadata=md,
            timeout=TIMEOUT_S,
        )
    elif ns.command == "cancel":
        cancel = pb.CancelCreditRequest(
            request_id=ns.request_id, version=ns.version, reason=ns.reason
        )
        r = stub.Cancel(cancel, metadata=md, timeout=TIMEOUT_S)
    elif ns.command == "revoke":
        revoke = pb.RevokeCreditRequest(
            request_id=ns.request_id, version=ns.version, reason=ns.reason
        )
        r = stub.Revoke(revoke, metadata=md, timeout=TIMEOUT_S)
    else:
        lists = {"mine": stub.ListMine, "awaiting": stub.ListAwaitingMe, "all": stub.ListAll}
        page = lists[ns.command](
            pb.ListCreditRequests(limit=ns.limit, page_token=ns.page_token),
            metadata=md,
            timeout=TIMEOUT_S,
        )
        for x in page.requests:
            out.write(
                f"{x.request_id}  {_state(x.state)}  v{x.version}  {x.requester_user_id}  "
                f"{credits(x.amount_micros)} credits  {x.justification}\n"
            )
        if page.next_page_token:
            out.write(f"more: {ns.command} --page-token {page.next_page_token}\n")
        return
    show(r, out)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    ns = parser().parse_args(argv)
    token = ns.token or os.environ.get("QM_TOKEN", "")
    if not token:
        sys.stderr.write("no credential: set QM_TOKEN or pass --token (see docs/security.md)\n")
        return 2
    ns.metadata = bearer(token)
    settings = load_or_exit(RequestsSettings, "requests cli")
    with open_blocking_channel(ns.addr or settings.addr, settings.client_tls) as channel:
        try:
            _call(requests_pb2_grpc.RequestServiceStub(channel), ns, out)
        except grpc.RpcError as exc:
            sys.stderr.write(f"{exc.code().name}: {exc.details()}\n")
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
