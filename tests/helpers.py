"""Producing usage, reading topics and waiting, for the integration tests; serving a
servicer in process, for the tests without infrastructure; the tests' credentials."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from devtools.localinfra import free_port
from quartermaster import kafka
from quartermaster.auth import Authenticator
from quartermaster.grpcclient import bearer
from quartermaster.tokens import parse_tokens
from quartermaster.topics import CONTENT_TYPE, PROTOBUF, Topic
from quartermaster.v1 import usage_pb2

# The tests' credentials (QM_TOKENS of every server they start): one token per role,
# named tests-<role>, and "tests" holding every role, which channels made by
# `channel()` send unless a call brings its own (tests about roles give their own).
TOKENS = {
    role: f"test-{role}-token-0123456789"
    for role in ("gateway", "reader", "admin", "prices", "member", "delegate", "reporter")
}
TOKENS["all"] = "test-all-roles-token-0123456789"
TOKENS_SPEC = ",".join(
    [f"tests-{role}:{role}:{token}" for role, token in TOKENS.items() if role != "all"]
    + [f"tests:gateway+reader+admin+prices+member+delegate:{TOKENS['all']}"]
)


# The deadline of a PolicyClient in a test that expects the server's own answer, not
# the fail mode: the product's 250 ms default (which covers every retry) runs out on a
# loaded 2-core runner during a fresh channel's connect and handshake.
# A bootstrap no broker answers on: producers made for it never connect (tests of a
# producer's own bookkeeping), and a fatal error to mark one failed with.
NOWHERE = "127.0.0.1:1"
FATAL = KafkaError(KafkaError._FATAL, "test: fatal", fatal=True)
SERVED_WITHIN_S = 5.0

# Every process that serves Prometheus metrics, by the variable that says where.
METRICS_ADDRS = ("QM_METERING_METRICS_ADDR", "QM_POLICY_METRICS_ADDR", "QM_REQUESTS_METRICS_ADDR",
                 "QM_USAGE_API_METRICS_ADDR", "QM_NOTIFIER_METRICS_ADDR")  # fmt: skip


def metrics_env() -> dict[str, str]:
    """Free ports for every service's metrics endpoint: the defaults would collide
    between processes a test starts side by side."""
    return {name: f"127.0.0.1:{free_port()}" for name in METRICS_ADDRS}


async def serving(addr: str) -> bool:
    """Whether the plaintext gRPC server at `addr` (host:port) says SERVING on its
    health check now; False when it can't be reached or says otherwise."""
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            reply = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def metadata(role: str) -> tuple[tuple[str, str], ...]:
    """Call metadata presenting the tests' token for `role` ("all": every role)."""
    return bearer(TOKENS[role])


if TYPE_CHECKING:  # grpc-stubs make it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.UnaryUnaryClientInterceptor


class _DefaultCredential(_Interceptor):
    """Adds a bearer token to every call that does not bring its own."""

    def __init__(self, token: str) -> None:
        self._auth = bearer(token)

    async def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        given = tuple(client_call_details.metadata or ())
        if not any(k == "authorization" for k, _ in given):
            client_call_details = client_call_details._replace(metadata=(*given, *self._auth))
        return await continuation(client_call_details, request)


def channel(
    target: str, role: str = "all", options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to `target` whose calls present the tests' token for `role` unless a
    call gives its own `authorization` metadata."""
    # grpc-stubs type the interceptor list for stubs, not interceptors like this one
    interceptors = [_DefaultCredential(TOKENS[role])]
    return grpc.aio.insecure_channel(
        target,
        options=list(options),
        interceptors=interceptors,  # type: ignore[arg-type]
    )


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:10]}"


def usage(user_id: str, **fields: object) -> usage_pb2.UsageEvent:
    """A valid UsageEvent for `user_id` (gpt-5, 1000 in / 500 out, now) with overrides."""
    event = usage_pb2.UsageEvent(
        event_id=str(uuid.uuid4()),
        workspace_id="",  # this workspace, whichever the session's is
        user_id=user_id,
        product="chat",
        model="gpt-5",
        input_tokens=1000,
        output_tokens=500,
        source="tests",
    )
    event.occurred_at.FromDatetime(datetime.now(UTC))
    for name, value in fields.items():
        if name == "occurred_at":
            assert isinstance(value, datetime)
            event.occurred_at.FromDatetime(value)
        else:
            setattr(event, name, value)
    return event


def produce(
    bootstrap: str,
    records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]],
    topic: str = Topic.USAGE.value,
) -> None:
    """Produce (key, value, headers) records and wait until the broker has them all."""
    producer = kafka.producer(bootstrap, acks="all")
    errors: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    for key, value, headers in records:
        hdrs: list[tuple[str, str | bytes | None]] = list(headers)
        producer.produce(topic, key=key, value=value, headers=hdrs, on_delivery=delivered)
    assert producer.flush(30) == 0, "records still in flight after 30 s"
    assert not errors, errors


def produce_usage(bootstrap: str, events: list[usage_pb2.UsageEvent]) -> None:
    produce(
        bootstrap,
        [
            (e.user_id.encode(), e.SerializeToString(), [(CONTENT_TYPE, PROTOBUF.encode())])
            for e in events
        ],
    )


def new_topic(bootstrap: str, prefix: str, partitions: int = 1) -> str:
    """A topic of a test's own on `bootstrap` (`prefix` and a random suffix), created
    now: what a test writes there no other test reads. The session's topics (say
    qm.notifications.v1) are read whole by other tests, which parse every record."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[
        name
    ].result()
    return name


def read_topic(bootstrap: str, topic: str, idle: float = 1.0, limit: float = 20.0) -> list[Message]:
    """Every record of `topic` from the beginning, until `idle` s pass with nothing new."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"t-{uuid.uuid4()}",
            "enable.auto.commit": False,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list[Message] = []
        last = time.monotonic()
        deadline = last + limit
        while time.monotonic() - last < idle and time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is None or msg.error() is not None:
                continue
            out.append(msg)
            last = time.monotonic()
        return out
    finally:
        consumer.close()


async def eventually(
    probe: Callable[[], Awaitable[object]],
    expect: object,
    within: float = 30.0,
) -> None:
    """Poll `probe` until it returns `expect`; fail with the last value seen."""
    deadline = time.monotonic() + within
    seen: object = None
    while time.monotonic() < deadline:
        seen = await probe()
        if seen == expect:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"expected {expect!r} within {within}s, last saw {seen!r}")


def scrape(addr: str, name: str, **labels: str) -> float | None:
    """The value of Prometheus sample `name` with these labels at http://addr/metrics
    (summed over its other labels), or None when there is no such sample."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + sample.value
    return total


@asynccontextmanager
async def in_process_server(
    add: Callable[[grpc.aio.Server], None],
) -> AsyncIterator[grpc.aio.Channel]:
    """A real grpc.aio server on a free port around the servicers `add` registers, and
    a channel to it (servicer tests without infrastructure: the real servicer, small
    fakes of its stores). The server authenticates as ours do (TOKENS); the channel
    presents the every-role token unless a call gives its own."""
    server = grpc.aio.server(interceptors=[Authenticator(parse_tokens(TOKENS_SPEC))])
    add(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(None)


# name: (async servicer method, request class, response class)
PolicyMethods = dict[str, tuple[Any, Any, Any]]


async def serve_policy_methods(methods: PolicyMethods) -> AsyncIterator[str]:
    """A grpc.aio stand-in serving only `methods` of PolicyService on a free port; yields
    its address (for PolicyClient tests that need failures the real server can't make)."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behavior, request.FromString, response.SerializeToString
        )
        for name, (behavior, request, response) in methods.items()
    }
    server = grpc.aio.server()
    service = "quartermaster.v1.PolicyService"
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    """(status code, details) of a gRPC call that must fail; AssertionError if it didn't."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    raise AssertionError("the call succeeded")
