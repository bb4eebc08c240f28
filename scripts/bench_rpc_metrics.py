"""What counting and timing a gRPC call costs (quartermaster.rpcmetrics), beside the
same two instruments through the OpenTelemetry SDK, in the same run.

    .venv/bin/python scripts/bench_rpc_metrics.py [--calls N] [--rounds R]

Each round awaits a do-nothing unary method --calls times bare, through RpcMetrics'
wrapper, and with an OpenTelemetry counter add and histogram record per call (the SDK
with its Prometheus reader, as the services run it). Prints microseconds added per call
for each, per round, and the last line as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import grpc
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider

from quartermaster.rpcmetrics import RpcMetrics

METHOD = "/quartermaster.v1.PolicyService/Check"


class _Context:
    def code(self) -> None:
        return None


async def _method(request: Any, _context: Any) -> Any:
    return request


async def _run(calls: int, rounds: int) -> dict[str, list[float]]:
    meter = MeterProvider(metric_readers=[PrometheusMetricReader()]).get_meter("bench")
    counter = meter.create_counter("bench_calls")
    histogram = meter.create_histogram("bench_duration", unit="s")
    labels = {"service": "PolicyService", "method": "Check"}
    with_code = {**labels, "code": "OK"}

    async def otel(request: Any, context: Any) -> Any:
        began = time.perf_counter()
        try:
            return await _method(request, context)
        finally:
            histogram.record(time.perf_counter() - began, labels)
            counter.add(1, with_code)

    details = type("Details", (), {"method": METHOD, "invocation_metadata": ()})()

    async def handler(_details: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(_method)

    wrapped: Any = (await RpcMetrics().intercept_service(handler, details)).unary_unary
    ctx = _Context()
    added: dict[str, list[float]] = {"rpcmetrics_us": [], "otel_sdk_us": []}
    for _ in range(rounds):
        per: dict[str, float] = {}
        methods: list[tuple[str, Any]] = [
            ("bare", _method),
            ("rpcmetrics", wrapped),
            ("otel_sdk", otel),
        ]
        for name, method in methods:
            began = time.perf_counter()
            for _ in range(calls):
                await method(1, ctx)
            per[name] = (time.perf_counter() - began) / calls * 1e6
        added["rpcmetrics_us"].append(round(per["rpcmetrics"] - per["bare"], 2))
        added["otel_sdk_us"].append(round(per["otel_sdk"] - per["bare"], 2))
        print(f"added per call: rpcmetrics {added['rpcmetrics_us'][-1]} us, "  # noqa: T201
              f"OpenTelemetry SDK {added['otel_sdk_us'][-1]} us")  # fmt: skip
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    ns = parser.parse_args()
    added = asyncio.run(_run(ns.calls, ns.rounds))
    pairs = zip(added["otel_sdk_us"], added["rpcmetrics_us"], strict=True)
    ratio = statistics.median(o / r for o, r in pairs if r > 0)
    print(json.dumps({**added, "median_ratio_otel_to_rpcmetrics": round(ratio, 1)}))  # noqa: T201


if __name__ == "__main__":
    main()
