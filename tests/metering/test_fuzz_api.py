"""The Cost API's gRPC methods (UsageService, PriceCatalogService) fed random messages
and random bytes by hypothesis, on a real Cost API server over the session's
PostgreSQL: no call may end UNKNOWN or INTERNAL, and every status message stays within
its bound. The same generators as policy's fuzz (tests/policy/test_fuzz.py): built from
the proto descriptors, so a field added later is fuzzed too.

LoadPrices is always a dry run here: a random document that happened to be a valid
catalog must not change the prices the session's other tests count with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from devtools.localinfra.stack import Infra
from quartermaster.v1 import cost_pb2, prices_pb2
from services.metering import api
from services.metering.settings import MeteringSettings
from tests.conftest import ALL_METADATA, PRICES_METADATA, READER_METADATA
from tests.policy.test_fuzz import FUZZ, Target, messages

pytestmark = pytest.mark.infra

METHODS = [
    (f"/{service.full_name}/{method.name}", method.input_type)
    for service in (
        cost_pb2.DESCRIPTOR.services_by_name["UsageService"],
        prices_pb2.DESCRIPTOR.services_by_name["PriceCatalogService"],
    )
    for method in service.methods
]
KNOWN = ["gpt-5", "gpt-5-mini", "ann", "eng", "chat"]
LOAD = "/quartermaster.v1.PriceCatalogService/LoadPrices"


def credentials() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Mostly every role, sometimes one role, none or an unknown token."""
    wrong = (("authorization", "Bearer not-a-token-0123456789"),)
    every = [ALL_METADATA] * 4
    return st.sampled_from([*every, READER_METADATA, PRICES_METADATA, (), wrong])


@pytest.fixture
async def target(infra: Infra, service_env: dict[str, str]) -> AsyncIterator[Target]:
    running = await api.start(MeteringSettings.from_env(service_env), addr="127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.served.port}") as channel:
            t = Target(channel, [], {})
            yield t
    finally:
        await running.stop(1)
    if t.require_ok:  # not only refusals: the fuzz got into the store too
        assert t.calls.get("OK", 0) > 0, t.calls


CALLS = st.one_of(
    [
        st.tuples(st.just(path), messages(desc, KNOWN, wild=wild))
        for path, desc in METHODS
        for wild in (True, False)
    ]
)


@settings(FUZZ, max_examples=200)
@given(call=CALLS, metadata=credentials())
async def test_random_messages_never_get_unknown_or_internal(
    target: Target, call: tuple[str, Message], metadata: Any
) -> None:
    path, msg = call
    target.require_ok = True
    if path == LOAD:
        msg.dry_run = True  # type: ignore[attr-defined]
    await target.send(path, msg.SerializeToString(), metadata)


# Not LoadPrices: random bytes are not a dry run, and could (in theory) be a catalog.
@settings(FUZZ, max_examples=100)
@given(path=st.sampled_from([m[0] for m in METHODS if m[0] != LOAD]), body=st.binary(max_size=300))
async def test_random_bytes_never_get_unknown_or_internal(
    target: Target, path: str, body: bytes
) -> None:
    await target.send(path, body, ALL_METADATA)
