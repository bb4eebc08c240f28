"""Demo traffic: a few people spend at different rates; their budgets are shown live.

It plays an internal AI gateway: before each model call it asks policy `Check`,
makes the "call" only when allowed, and reports the usage to `qm.usage.v1` keyed by
user. Every few seconds it prints where each person stands, and a line whenever a
decision flips.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

import grpc
from confluent_kafka import KafkaException

from quartermaster import kafka
from quartermaster.grpcclient import bearer, open_channel
from quartermaster.money import credits
from quartermaster.telemetry import inject_headers
from quartermaster.tls import ClientTls
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import policy_pb2, policy_pb2_grpc, usage_pb2


@dataclass(frozen=True)
class Persona:
    user_id: str
    display_name: str
    product: str
    model: str
    input_tokens: int
    output_tokens: int
    calls_per_second: float


PERSONAS = (
    Persona("alice", "Alice (chat, light)", "chat", "gpt-5-mini", 3_000, 800, 1.0),
    Persona("bob", "Bob (coding agent)", "codex", "claude-sonnet-4-5", 30_000, 3_000, 1.0),
    Persona("carol", "Carol (runaway agent loop)", "agents", "claude-opus-4-1", 20_000, 2_000, 2.0),
)

_NAMES = {
    policy_pb2.DECISION_ALLOW: "ALLOW",
    policy_pb2.DECISION_WARN: "WARN",
    policy_pb2.DECISION_DENY: "DENY",
}


def usage_event(p: Persona, workspace_id: str) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        workspace_id=workspace_id,
        user_id=p.user_id,
        product=p.product,
        model=p.model,
        input_tokens=p.input_tokens,
        output_tokens=p.output_tokens,
        request_id=str(uuid.uuid4()),
        source="demo/simulator",
    )
    event.occurred_at.GetCurrentTime()
    return event


async def run(
    bootstrap: str,
    policy_addr: str,
    workspace_id: str,
    out: TextIO = sys.stdout,
    report_every: float = 3.0,
    tls: ClientTls | None = None,
    token: str = "",
    on_deny: Callable[[str], None] | None = None,
) -> None:
    """Run until cancelled, calling policy with `token` (role gateway); `tls`: how to
    reach policy over TLS (None: plaintext). `on_deny(user_id)` is called when a
    person's decision flips to DENY (make run's credit request starts there)."""
    producer = kafka.producer(bootstrap, **{"linger.ms": 5})
    gateway = _Gateway(producer, workspace_id, out, bearer(token), on_deny)
    next_report, start, said = 0.0, time.monotonic(), set[str]()
    async with open_channel(policy_addr, tls) as channel:
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        try:
            while True:
                now = time.monotonic()
                try:
                    await gateway.calls(stub, now - start)
                    if now >= next_report:
                        next_report = now + report_every
                        await _report(stub, out, now - start, gateway.auth)
                except (grpc.aio.AioRpcError, KafkaException, BufferError) as exc:
                    # A gateway goes on when policy or the broker is away (a broker that
                    # lost its topics, a replica not ready): said once per kind, never
                    # raised (it had ended make run in a traceback, before the service
                    # that refused could say why).
                    _trouble(exc, said, out)
                out.flush()
                await asyncio.sleep(0.05)
        finally:
            producer.flush(5)
            # Destroyed now, while the broker is up: the cancelled task's traceback
            # keeps this frame, and a producer outliving the broker logged
            # "Connection refused" after make run's Ctrl-C.
            del producer, gateway


class _Gateway:
    """What a gateway does for each person whose next call is due: Check, say when a
    decision flips, and report the usage of an allowed call."""

    def __init__(
        self,
        producer: Any,
        workspace_id: str,
        out: TextIO,
        auth: tuple[tuple[str, str], ...],
        on_deny: Callable[[str], None] | None,
    ) -> None:
        self.producer, self.workspace_id, self.out = producer, workspace_id, out
        self.auth, self.on_deny = auth, on_deny
        self.last: dict[str, int] = {}
        self.next_call = {p.user_id: 0.0 for p in PERSONAS}

    async def calls(self, stub: policy_pb2_grpc.PolicyServiceAsyncStub, elapsed: float) -> None:
        now = time.monotonic()
        for p in PERSONAS:
            if now < self.next_call[p.user_id]:
                continue
            self.next_call[p.user_id] = now + 1.0 / p.calls_per_second
            request = policy_pb2.CheckRequest(
                user_id=p.user_id, product=p.product, model=p.model, estimated_micros=0
            )
            resp = await stub.Check(request, timeout=2.0, metadata=self.auth)
            if self.last.get(p.user_id) != resp.decision:
                if p.user_id in self.last:
                    self.out.write(
                        f"{elapsed:6.1f}s  >>> {p.user_id} is now "
                        f"{_NAMES.get(resp.decision, '?')}: {resp.reason}\n"
                    )
                self.last[p.user_id] = resp.decision
                if resp.decision == policy_pb2.DECISION_DENY and self.on_deny is not None:
                    self.on_deny(p.user_id)
            if resp.decision == policy_pb2.DECISION_DENY:
                continue  # a gateway would not make the call
            self.producer.produce(
                Topic.USAGE.value,
                key=p.user_id.encode(),
                value=usage_event(p, self.workspace_id).SerializeToString(),
                headers=[(CONTENT_TYPE, PROTOBUF.encode()), *inject_headers()],
            )
        self.producer.poll(0)


def _trouble(exc: Exception, said: set[str], out: TextIO) -> None:
    """Say what kept the demo traffic from policy or the broker, once per kind."""
    if isinstance(exc, grpc.aio.AioRpcError):
        kind, why = f"policy answered {exc.code().name}", exc.details() or ""
    else:
        kind, why = "the broker refused", str(exc.args[0] if exc.args else exc)
    if kind not in said:
        said.add(kind)
        out.write(f"  (demo traffic: {kind}: {why[:200]}; going on)\n")


async def _report(
    stub: policy_pb2_grpc.PolicyServiceAsyncStub,
    out: TextIO,
    elapsed: float,
    auth: tuple[tuple[str, str], ...],
) -> None:
    lines = [f"{elapsed:6.1f}s  budget this month (credits)"]
    for p in PERSONAS:
        request = policy_pb2.GetBudgetRequest(user_id=p.user_id)
        b = await stub.GetBudget(request, timeout=2.0, metadata=auth)
        pct = 100 * b.used_micros // b.limit_micros if b.limit_micros else 0
        bar = "#" * min(20, pct // 5)
        lines.append(
            f"         {p.display_name:<28} {credits(b.used_micros):>7} / "
            f"{credits(b.limit_micros):<7} {pct:3d}% |{bar:<20}|"
        )
    out.write("\n".join(lines) + "\n")
