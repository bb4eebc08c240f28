"""Certificates made in the test (trustme), and the one place the TLS tests make their
gRPC calls (so that credentials added to every call later change this file only)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quartermaster.periods import quarter_ceil
from quartermaster.v1 import cost_pb2, cost_pb2_grpc, policy_pb2, policy_pb2_grpc
from quartermaster.wire import timestamp
from tests.helpers import metadata

# What the server certificates are issued for: the address the tests dial.
SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Pki:
    """PEM files in one folder: a CA, a server certificate it signed for SERVER_NAMES, a
    client certificate it signed, and a client certificate another CA signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    stranger_cert: Path  # signed by other_ca
    stranger_key: Path

    def server_env(self, *, mutual: bool = False) -> dict[str, str]:
        """QM_TLS_* for a server with this PKI's certificate (mutual: clients must show
        a certificate signed by `ca`)."""
        env = {"QM_TLS_CERT_FILE": str(self.server_cert), "QM_TLS_KEY_FILE": str(self.server_key)}
        if mutual:
            env["QM_TLS_CLIENT_CA_FILE"] = str(self.ca)
        return env

    def client_env(self, *, with_cert: bool = False) -> dict[str, str]:
        """QM_TLS_* for a client trusting `ca` (with_cert: showing the client certificate)."""
        env = {"QM_TLS_CA_FILE": str(self.ca)}
        if with_cert:
            env |= {
                "QM_TLS_CLIENT_CERT_FILE": str(self.client_cert),
                "QM_TLS_CLIENT_KEY_FILE": str(self.client_key),
            }
        return env


def make_pki(folder: Path) -> Pki:
    """A fresh Pki written to `folder` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*SERVER_NAMES)
    client = ca.issue_cert("gateway@tests")
    stranger = other.issue_cert("stranger@tests")
    files = {
        "ca": ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "other_ca": other.cert_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return Pki(**paths)


async def check(channel: grpc.aio.Channel, user_id: str = "ann") -> policy_pb2.CheckResponse:
    """PolicyService.Check over `channel` (raises grpc.aio.AioRpcError when refused)."""
    stub = policy_pb2_grpc.PolicyServiceStub(channel)
    request = policy_pb2.CheckRequest(user_id=user_id, product="chat", model="gpt-5")
    return await stub.Check(request, timeout=10, metadata=metadata("gateway"))


async def health(channel: grpc.aio.Channel) -> str:
    """The server's overall health status name (SERVING, NOT_SERVING, ...)."""
    stub = health_pb2_grpc.HealthStub(channel)
    resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


async def usage_of_groups(
    channel: grpc.aio.Channel, *group_ids: str
) -> cost_pb2.QueryUsageResponse:
    """UsageService.QueryUsage over `channel`: the last day's totals of these groups'
    members (the Cost API asks policy's DirectoryService who they are)."""
    stub = cost_pb2_grpc.UsageServiceStub(channel)
    now = quarter_ceil(datetime.now(UTC))  # the Cost API takes quarter hours
    request = cost_pb2.QueryUsageRequest(
        filter=cost_pb2.UsageFilter(
            start=timestamp(now - timedelta(days=1)), end=timestamp(now), group_ids=group_ids
        ),
        group_by=[cost_pb2.DIMENSION_USER],
        granularity=cost_pb2.GRANULARITY_TOTAL,
    )
    return await stub.QueryUsage(request, timeout=10, metadata=metadata("reader"))
