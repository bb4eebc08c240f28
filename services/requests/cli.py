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
import os
import sys
from collections.abc import Sequence
from typing import TextIO

import grpc

from quartermaster.grpcclient import bearer, open_blocking_channel
from quartermaster.money import MICROS_PER_CREDIT, credits
from quartermaster.settings import load_or_exit
from quartermaster.v1 import requests_pb2, requests_pb2_grpc
from quartermaster.wire import from_timestamp
from services.requests.settings import RequestsSettings

TIMEOUT_S = 30.0


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
    p = argparse.ArgumentParser(prog="python -m services.requests.cli")
    p.add_argument("--addr", help="RequestService address (default: QM_REQUESTS_ADDR)")
    p.add_argument("--token", help="bearer token (default: QM_TOKEN; see docs/security.md)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="ask for credits")
    c.add_argument("credits", type=float)
    c.add_argument("--hours", type=float, default=24.0, help="how long once approved")
    c.add_argument("--why", required=True, help="what the credits are for")
    c.add_argument("--link", action="append", default=[])
    c.add_argument("--product", default="")
    c.add_argument("--project", default="")
    c.add_argument("--id", default="", help="your id for this ask (asking again returns it)")
    sub.add_parser("get", help="a request with its timeline").add_argument("request_id")
    d = sub.add_parser("decide", help="approve or deny a request awaiting you")
    d.add_argument("request_id")
    d.add_argument("vote", choices=["approve", "deny"])
    d.add_argument("--version", type=int, required=True, help="the version you decided on")
    d.add_argument("--reason", default="")
    d.add_argument("--credits", type=float, default=0, help="grant less than asked")
    d.add_argument("--hours", type=float, default=0, help="grant shorter than asked")
    for name, text in (
        ("cancel", "withdraw your pending request"),
        ("revoke", "end an approved grant early"),
    ):
        x = sub.add_parser(name, help=text)
        x.add_argument("request_id")
        x.add_argument("--version", type=int, required=True)
        x.add_argument("--reason", default="", required=name == "revoke")
    for name in ("mine", "awaiting", "all"):
        x = sub.add_parser(name, help=f"list requests: {name}")
        x.add_argument("--limit", type=int, default=50)
        x.add_argument("--page-token", default="", help="the next page (printed by the last)")
    return p


def _call(stub: requests_pb2_grpc.RequestServiceStub, ns: argparse.Namespace, out: TextIO) -> None:
    md, pb = ns.metadata, requests_pb2
    if ns.command == "create":
        r = stub.Create(
            pb.CreateCreditRequest(
                request_id=ns.id,
                amount_micros=round(ns.credits * MICROS_PER_CREDIT),
                duration_seconds=round(ns.hours * 3600),
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
                granted_micros=round(ns.credits * MICROS_PER_CREDIT),
                granted_duration_seconds=round(ns.hours * 3600),
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
