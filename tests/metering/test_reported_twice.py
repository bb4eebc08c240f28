"""The same provider response reported twice counts once, end to end (issue 13, item 4).

A gateway that crashes after reporting and reports again on restart puts the same
response through the adapter twice. The event id was a fresh UUID each time, so one
6,250-micro call counted 12,500; it is now the provider's id of the call.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING

import pytest

from devtools.localinfra.stack import Infra
from quartermaster.provider_usage import from_anthropic_message, from_openai_chat
from quartermaster.reporter import UsageReporter
from quartermaster.v1 import policy_pb2
from tests.conftest import MeteringWorker
from tests.helpers import eventually, new_user

if TYPE_CHECKING:
    from quartermaster.v1.policy_pb2_grpc import PolicyServiceAsyncStub as Stub

pytestmark = pytest.mark.infra


def _chat(call_id: str) -> dict[str, object]:
    """A gpt-5 chat completion of 1,000 tokens in and 500 out: 6,250 micros."""
    usage = {"prompt_tokens": 1000, "completion_tokens": 500}
    return {"id": call_id, "model": "gpt-5", "choices": [{"finish_reason": "stop"}], "usage": usage}


async def test_a_response_reported_again_after_a_crash_counts_once(
    infra: Infra, metering: MeteringWorker, policy: Stub
) -> None:
    user = new_user()
    who = {"user_id": user, "product": "chat"}
    response = _chat(f"chatcmpl-{uuid.uuid4().hex}")
    message = {
        "id": f"msg_{uuid.uuid4().hex}", "model": "claude-sonnet-4-5", "stop_reason": "end_turn",
        "usage": {"input_tokens": 1000, "output_tokens": 100},
    }  # fmt: skip

    async def used() -> int:
        budget = await policy.GetBudget(policy_pb2.GetBudgetRequest(user_id=user))
        return budget.used_micros

    for _attempt in range(2):  # the first report, and the gateway's again after a restart
        reporter = UsageReporter(infra.kafka_bootstrap)
        reporter.report(from_openai_chat(response, **who))
        reporter.report(from_anthropic_message(message, **who))
        reporter.close()
    # 6,250 (gpt-5) + 1000 x 3 + 100 x 15 = 4,500 (sonnet 4.5), each once
    await eventually(used, 10_750)
    # A later call of its own is counted after the repeats: they were seen and dropped.
    later = UsageReporter(infra.kafka_bootstrap)
    later.report(from_openai_chat(_chat(f"chatcmpl-{uuid.uuid4().hex}"), **who))
    later.close()
    await eventually(used, 17_000)
    await asyncio.sleep(1)
    assert await used() == 17_000
