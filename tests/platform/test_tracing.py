"""One trace across gRPC and Kafka (issue 17, item 3): a gateway's `Check`, the usage
it reports and the totals update that follows. The gateway and a policy replica run
here with an in-memory exporter; the metering worker is the session's process,
restarted to export over real OTLP to a collector this test serves."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from quartermaster import telemetry
from quartermaster.grpcclient import open_channel
from quartermaster.reporter import UsageReporter
from quartermaster.v1 import policy_pb2, policy_pb2_grpc
from services.policy import wiring
from services.policy.settings import PolicySettings
from tests.conftest import MeteringWorker
from tests.helpers import eventually, metadata, new_user, usage

pytestmark = pytest.mark.infra


@dataclass
class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver: keeps every span exported to it."""

    spans: list[trace_pb2.Span] = field(default_factory=list)

    async def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: object
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def in_memory() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process, spans kept in memory; off again after."""
    exporter = InMemorySpanExporter()
    current = trace.get_tracer_provider()
    provider = current if isinstance(current, TracerProvider) else TracerProvider()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    telemetry.trace_to(provider)
    try:
        yield exporter
    finally:
        telemetry.stop_tracing()
        processor.shutdown()


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    kept = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield kept, port
    finally:
        await server.stop(None)


@pytest.fixture
def traced_metering(
    metering: MeteringWorker, collector: tuple[Collector, int]
) -> Iterator[Collector]:
    """The session's worker, restarted exporting spans to `collector`; restarted
    plain after."""
    kept, port = collector
    metering.proc.stop(timeout=15)
    metering.start(
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    try:
        yield kept
    finally:
        metering.proc.stop(timeout=15)
        metering.start()


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_check_usage_and_totals_form_one_trace_across_kafka(
    in_memory: InMemorySpanExporter,
    traced_metering: Collector,
    service_env: dict[str, str],
    policy_server: wiring.RunningPolicy,  # the workspace's default limit is set
) -> None:
    replica = await wiring.start(PolicySettings.from_env(service_env), addr="127.0.0.1:0")
    user = new_user()
    try:
        await asyncio.wait_for(replica.serving.wait(), 60)
        gateway = trace.get_tracer("a-gateway")
        reporter = UsageReporter(service_env["QM_KAFKA_BOOTSTRAP"])
        channel = open_channel(f"127.0.0.1:{replica.port}", None)
        stub = policy_pb2_grpc.PolicyServiceStub(channel)
        check = policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5")
        try:
            with gateway.start_as_current_span("gateway request") as root:
                await stub.Check(check, metadata=metadata("gateway"))
                reporter.report(usage(user))
                reporter.flush()

            async def counted() -> bool:
                got = await stub.Check(check, metadata=metadata("gateway"))
                return got.used_micros > 0

            await eventually(counted, True, within=60)
        finally:
            reporter.close()
            await channel.close(None)
        trace_id = root.get_span_context().trace_id

        # gRPC: the client's and the server's span of that Check are in the gateway's trace.
        spans = in_memory.get_finished_spans()
        checks = _named(spans, "/quartermaster.v1.PolicyService/Check")
        kinds = {s.kind for s in checks if s.context.trace_id == trace_id}
        assert kinds == {trace.SpanKind.CLIENT, trace.SpanKind.SERVER}, checks

        # Kafka, usage: metering's batch span links the gateway's span.
        def batch() -> trace_pb2.Span | None:
            for span in traced_metering.spans:
                if span.name == "meter batch" and any(
                    int.from_bytes(link.trace_id, "big") == trace_id for link in span.links
                ):
                    return span
            return None

        await eventually(lambda: asyncio.sleep(0, batch() is not None), True, within=30)
        found = batch()
        assert found is not None

        # Kafka, totals: policy's span for that total is a child of the batch.
        def applied() -> list[ReadableSpan]:
            return [
                s for s in _named(in_memory.get_finished_spans(), "apply totals")
                if s.parent is not None
                and s.parent.span_id == int.from_bytes(found.span_id, "big")
                and s.context.trace_id == int.from_bytes(found.trace_id, "big")
            ]  # fmt: skip

        await eventually(lambda: asyncio.sleep(0, bool(applied())), True, within=30)
    finally:
        with contextlib.suppress(Exception):
            await replica.stop(1)
