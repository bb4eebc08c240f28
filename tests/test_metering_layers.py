"""metering's domain modules import no I/O library: no asyncpg, Kafka client, faust or
grpc (checked in a fresh interpreter, so what other tests imported doesn't count)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

DOMAIN = [
    "quartermaster.partitioning",
    "quartermaster.provider_usage",
    "services.metering.aggregate",
    "services.metering.burnrate",
    "services.metering.cost_query",
    "services.metering.decode",
    "services.metering.dlq_limit",
    "services.metering.pricing",
    "services.metering.revisions",
    "services.metering.state",
]
FORBIDDEN = {"asyncpg", "aiokafka", "confluent_kafka", "faust", "mode", "grpc"}


@pytest.mark.parametrize("module", DOMAIN)
def test_domain_module_imports_no_io_library(module: str) -> None:
    code = (
        f"import json, sys; import {module}; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = set(json.loads(out))
    assert not loaded & FORBIDDEN, f"{module} pulls in {sorted(loaded & FORBIDDEN)}"
