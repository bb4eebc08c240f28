"""Per-method gRPC server metrics, the same for every service (issue 17, item 4):

- `qm_rpc_server_calls_total{service, method, code}`: calls answered, by gRPC status
  name (`OK`, `INVALID_ARGUMENT`, `UNAVAILABLE`, ...): the request and error rates;
- `qm_rpc_server_duration_seconds{service, method}`: a histogram of the time from the
  method's start to its answer, in seconds (authentication included);
- `qm_grpc_serving{service}`: 1 while the gRPC service (`quartermaster.v1.PolicyService`,
  ...) says SERVING on its health check, 0 while it says NOT_SERVING (starting, its
  database or topic lost): what the "not serving" alert watches.

Served for Prometheus where the process's `metrics_addr` says (quartermaster.telemetry),
on the same endpoint as the OpenTelemetry metrics. Kept with `prometheus_client`
directly rather than the OpenTelemetry SDK, whose per-call cost is about ten times
higher (`scripts/bench_rpc_metrics.py`, docs/benchmarks.md): policy answers a Check in
tens of microseconds.

Labels come from the server's own method table (the gRPC path `/pkg.Service/Method`),
never from input: a call to an unknown path is counted under `method="(unknown)"`, so a
scan of random paths can't grow the label set. Health and reflection are not counted:
probes would drown the figures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from prometheus_client import Counter, Gauge, Histogram

from quartermaster import roles

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
UNKNOWN_METHOD = "(unknown)"
NOT_COUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Bucket bounds in seconds: policy answers in tens of microseconds, the Cost API and the
# requests service in milliseconds to seconds.
BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
          1.0, 2.5, 5.0, 10.0)  # fmt: skip

# Process-wide, as the registry they are served from (a process may run two servers).
CALLS = Counter(
    "qm_rpc_server_calls", "gRPC calls answered, by service, method and status code",
    ["service", "method", "code"],
)  # fmt: skip
DURATION = Histogram(
    "qm_rpc_server_duration_seconds", "gRPC call duration from the method's start to its answer",
    ["service", "method"], buckets=BOUNDS,
)  # fmt: skip
SERVING = Gauge(
    "qm_grpc_serving", "1 while the gRPC service says SERVING on its health check, else 0",
    ["service"],
)  # fmt: skip

if TYPE_CHECKING:  # grpc-stubs make it generic; grpcio's class is not subscriptable
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor


def set_serving(service: str, serving: bool) -> None:
    """Say whether the gRPC `service` (its full name) is SERVING now."""
    SERVING.labels(service).set(1 if serving else 0)


def _labels(path: str) -> tuple[str, str]:
    """(service, method) of a gRPC path `/pkg.Service/Method`, for a known method."""
    if path not in roles.METHOD_ROLES:
        return UNKNOWN_METHOD, UNKNOWN_METHOD
    service, _, method = path.lstrip("/").rpartition("/")
    return service.rpartition(".")[2], method


class _Method:
    """One method's series, looked up once (a `labels()` lookup costs more than the
    increment it is for)."""

    def __init__(self, service: str, method: str) -> None:
        self._service, self._method = service, method
        self.duration = DURATION.labels(service, method)
        self._calls: dict[str, Any] = {}

    def count(self, code: str) -> None:
        child = self._calls.get(code)
        if child is None:
            child = self._calls[code] = CALLS.labels(self._service, self._method, code)
        child.inc()


class RpcMetrics(_Interceptor):
    """Counts every unary call of the server and times it (the module docstring). Put
    it first among the interceptors, so that calls refused by authentication count too.
    Streaming methods pass through uncounted (none of ours stream)."""

    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        path = handler_call_details.method
        if handler is None or handler.unary_unary is None or path.startswith(NOT_COUNTED):
            return handler
        series = self._methods.get(path)
        if series is None:
            series = self._methods[path] = _Method(*_labels(path))
        behavior: Any = handler.unary_unary

        async def timed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            began = time.perf_counter()
            code = "OK"
            try:
                return await behavior(request, context)
            except BaseException:
                # An abort sets the context's code; anything else grpc answers UNKNOWN.
                got: object = context.code()
                code = got.name if isinstance(got, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                if code == "OK":
                    set_code: object = context.code()
                    if isinstance(set_code, grpc.StatusCode):  # set_code, no exception
                        code = set_code.name
                series.duration.observe(time.perf_counter() - began)
                series.count(code)

        return grpc.unary_unary_rpc_method_handler(
            timed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
