"""Every series the chart's alerts and dashboard read is served by a running service
(issue 17: "a test that scrapes each service's metrics endpoint and finds the metrics
the alerts use"): policy, the Cost API, the requests service and the notifier as
processes, the session's metering worker and HTTP ingest, each scraped at its own
metrics port after real calls, posts and deliveries: each series by the service whose
name it bears, with every label an alert or panel groups or filters it by."""

from __future__ import annotations

import re
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import aiohttp
import grpc
import pytest
from google.protobuf import json_format
from prometheus_client.parser import text_string_to_metric_families

from devtools.localinfra import free_port
from devtools.localinfra.ports import wait_for_port
from devtools.localinfra.process import ChildProcess
from devtools.slack_standin import SlackStandin
from quartermaster.db import connect_pool
from quartermaster.money import MICROS_PER_CREDIT as C
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2, policy_pb2_grpc
from services.policy.decide import Enforcement
from services.policy.stores.limits import LimitStore
from tests.conftest import ROOT, MeteringWorker
from tests.deploy.chart import (
    PRODUCTION,
    PROMETHEUS_SERIES,
    load_values,
    manifests,
    metric_names,
    monitoring,
    series_names,
)
from tests.deploy.chart import render as render_chart
from tests.helpers import (
    TOKENS,
    channel,
    eventually,
    metadata,
    metrics_env,
    produce_usage,
    serving,
    usage,
)
from tests.notifier.kit import add_people, produce_intents, threshold_intent

pytestmark = pytest.mark.infra

# Series that exist only while something is wrong, shown by their own tests.
ONLY_WHEN_WRONG = {
    # one series per source over its DLQ limit: tests/metering/test_noisy_source.py
    "qm_metering_dlq_source_over_limit",
}
# Who serves the series of a prefix (the rest, qm_rpc_* and qm_grpc_*, every gRPC service).
SERVED_BY = {"qm_notifier_": "notifier", "qm_ingest_": "ingest", "qm_metering_": "metering"}
# Labels Prometheus puts on every series from the target it scraped, not the services.
TARGET_LABELS = {"namespace", "pod", "job"}
# `by (a, b)` and the names of label matchers `{a="x", b!~"y"}` in PromQL.
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def _labels_read(expr: str) -> set[str]:
    """The labels a PromQL expression groups or filters by, less TARGET_LABELS."""
    grouped = {n.strip() for g in _BY.findall(expr) for n in g.split(",") if n.strip()}
    return (grouped | set(_MATCHER.findall(expr))) - TARGET_LABELS


def _samples(addr: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """{sample name: [(labels, value)]} of a /metrics scrape."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


@pytest.fixture
def services(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """policy, the Cost API, requests and the notifier as processes: {name: its metrics
    address}, plus "policy_addr", "api_addr" and "slack_port". The notifier's Slack is
    that port, where nobody listens until the test starts a stand-in there: what it is
    given to send stays in its backlog, retried, until then."""
    metrics = metrics_env()
    slack_port = free_port()
    policy, api = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**service_env, **metrics, "QM_METERING_METRICS_ADDR": "",
           "QM_POLICY_ADDR": policy, "QM_DIRECTORY_ADDR": policy, "QM_USAGE_API_ADDR": api,
           "QM_REQUESTS_ADDR": f"127.0.0.1:{free_port()}", "QM_REQUESTS_POLICY_ADDR": policy,
           "QM_REQUESTS_USAGE_API_ADDR": api}  # fmt: skip
    logs = ROOT / ".run" / f"test-metrics-{uuid.uuid4().hex[:6]}"
    notifier = {**env, "QM_NOTIFIER_SLACK_BASE_URL": f"http://127.0.0.1:{slack_port}/api/",
                "QM_NOTIFIER_GROUP_ID": f"qm-notifier-metrics-{uuid.uuid4().hex[:6]}",
                "QM_NOTIFIER_RECONCILE_SECONDS": "0.5",
                "QM_NOTIFIER_POLL_SECONDS": "0.05"}  # fmt: skip
    procs = [
        ChildProcess(name, [sys.executable, "-m", module], logs / f"{name}.log", env=e, cwd=ROOT)
        for name, module, e in [("policy", "services.policy", env),
                                ("cost-api", "services.metering.api", env),
                                ("requests", "services.requests", env),
                                ("notifier", "services.notifier", notifier)]
    ]  # fmt: skip
    scraped = {
        "policy": metrics["QM_POLICY_METRICS_ADDR"],
        "cost-api": metrics["QM_USAGE_API_METRICS_ADDR"],
        "requests": metrics["QM_REQUESTS_METRICS_ADDR"],
        "notifier": metrics["QM_NOTIFIER_METRICS_ADDR"],
    }
    try:
        for p in procs:
            p.start()
        # Each scraped once it listens: a scrape before that is refused, not retried
        # (the notifier, slowest to start on a busy host, was scraped a moment early).
        for name, addr in scraped.items():
            wait_for_port(int(addr.rpartition(":")[2]), 60, what=f"{name}'s metrics")
        yield {**scraped, "policy_addr": policy, "api_addr": api, "slack_port": str(slack_port)}
    finally:
        for p in procs:
            p.stop()


async def _notice_delivered_on_retry(services: dict[str, str], service_env: dict[str, str]) -> None:
    """A threshold crossing for a person in the directory, which the notifier can't
    deliver at first (its Slack is out of reach): a `retry` attempt and a backlog, once
    its metrics show both; then Slack (a stand-in) is there, and it is delivered on its
    next attempt (FIRST_DELAY_S later): its lag is recorded."""
    user = f"notice-{uuid.uuid4().hex[:6]}"
    async with channel(services["policy_addr"]) as ch:
        await add_people(policy_pb2_grpc.PolicyAdminServiceStub(ch), [user])
    produce_intents(service_env["QM_KAFKA_BOOTSTRAP"],
                    [threshold_intent(service_env["QM_WORKSPACE_ID"], user, 1)])  # fmt: skip

    async def shown() -> bool:
        found = _samples(services["notifier"])
        return "qm_notifier_deliveries_total" in found and "qm_notifier_backlog" in found

    await eventually(shown, True, within=60)
    slack = SlackStandin()
    await slack.start(port=int(services["slack_port"]))
    try:

        async def delivered() -> bool:
            return "qm_notifier_delivery_lag_seconds_bucket" in _samples(services["notifier"])

        await eventually(delivered, True, within=60)
    finally:
        await slack.stop()


async def _post_usage(ingest_addr: str) -> None:
    """One event through the HTTP ingest, accepted."""
    event = json_format.MessageToDict(usage(f"metrics-{uuid.uuid4().hex[:6]}"))
    auth = {"Authorization": f"Bearer {TOKENS['reporter']}"}
    async with (
        aiohttp.ClientSession(f"http://{ingest_addr}") as http,
        http.post("/v1/usage", json=event, headers=auth) as posted,
    ):
        assert posted.status == 202, await posted.text()


async def test_every_series_the_alerts_and_dashboard_read_is_served(
    services: dict[str, str],
    metering: MeteringWorker,
    service_env: dict[str, str],
    ingest_addr: str,
) -> None:
    pool = await connect_pool(service_env["QM_DATABASE_URL"])
    try:  # a default limit, as an admin sets it: Check answers only with one
        await LimitStore(pool, service_env["QM_WORKSPACE_ID"]).set_workspace_default(
            1000 * C, Enforcement.HARD, "tests"
        )
    finally:
        await pool.close()
    await eventually(lambda: serving(services["policy_addr"]), True, within=60)
    await eventually(lambda: serving(services["api_addr"]), True, within=60)
    # Usage counted (a batch, a lag, an unpriced model) and calls made, some refused.
    user = f"metrics-{uuid.uuid4().hex[:6]}"
    produce_usage(
        service_env["QM_KAFKA_BOOTSTRAP"], [usage(user), usage(user, model="no-such-model-x")]
    )
    async with grpc.aio.insecure_channel(services["policy_addr"]) as ch:
        stub = policy_pb2_grpc.PolicyServiceStub(ch)
        check = policy_pb2.CheckRequest(user_id=user, product="chat", model="gpt-5")

        async def counted() -> bool:
            got = await stub.Check(check, metadata=metadata("gateway"))
            return got.used_micros > 0

        await eventually(counted, True, within=60)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Check(check)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with grpc.aio.insecure_channel(services["api_addr"]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as invalid:  # no period: refused, counted
            await cost_pb2_grpc.UsageServiceStub(ch).TopSpenders(
                cost_pb2.TopSpendersRequest(), metadata=metadata("reader")
            )
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await _notice_delivered_on_retry(services, service_env)
    await _post_usage(ingest_addr)
    scrapes = {n: _samples(services[n]) for n in ("policy", "cost-api", "requests", "notifier")}
    scrapes["metering"] = _samples(metering.env["QM_METERING_METRICS_ADDR"])
    scrapes["ingest"] = _samples(ingest_addr)

    rules, exprs = monitoring(manifests(render_chart(load_values(PRODUCTION))))
    read = [r["expr"] for r in rules] + exprs
    wanted = metric_names(read) - ONLY_WHEN_WRONG
    # Anything else read is Prometheus's own per target (`up`), allowed by name.
    assert series_names(read) - metric_names(read) <= PROMETHEUS_SERIES
    served = {name for scrape in scrapes.values() for name in scrape}
    assert wanted <= served, f"not served by any service: {sorted(wanted - served)}"
    for prefix, service in SERVED_BY.items():
        theirs = {m for m in wanted if m.startswith(prefix)}
        assert theirs <= set(scrapes[service]), (service, sorted(theirs - set(scrapes[service])))
    # Each label an expression groups or filters by is on what it reads: a panel by a
    # label the service does not set shows one unlabelled line, an alert never fires.
    labels = {name: {k for scrape in scrapes.values() for lb, _ in scrape.get(name, [])
                     for k in lb} for name in served}  # fmt: skip
    for expr in [r["expr"] for r in rules] + exprs:
        has = set().union(*(labels.get(m, set()) for m in metric_names([expr])))
        missing = _labels_read(expr) - has
        assert not missing or metric_names([expr]) <= ONLY_WHEN_WRONG, (expr, missing)

    # And the figures are the calls made: Check OK and UNAUTHENTICATED, by method.
    calls = scrapes["policy"]["qm_rpc_server_calls_total"]
    by_code = {(lb["method"], lb["code"]): v for lb, v in calls}
    assert by_code[("Check", "OK")] >= 1
    assert by_code[("Check", "UNAUTHENTICATED")] == 1
    says_serving = {lb["service"]: v for lb, v in scrapes["policy"]["qm_grpc_serving"]}
    assert says_serving["quartermaster.v1.PolicyService"] == 1
    api_calls = {
        (lb["method"], lb["code"]) for lb, _ in scrapes["cost-api"]["qm_rpc_server_calls_total"]
    }
    assert ("TopSpenders", "INVALID_ARGUMENT") in api_calls
    for name in ("policy", "cost-api", "requests"):
        assert "qm_grpc_serving" in scrapes[name], name
