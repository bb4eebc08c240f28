"""Provider usage objects → UsageEvent, on recorded response shapes (tests/data)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quartermaster.provider_usage import (
    UsageMissing,
    from_anthropic_message,
    from_anthropic_stream,
    from_openai_chat,
    from_openai_chat_stream,
    from_openai_response,
    from_openai_response_stream,
)
from quartermaster.topics import CONTENT_TYPE, PROTOBUF
from services.metering.decode import decode, tokens
from services.metering.pricing import PriceCatalog
from services.metering.settings import DEFAULT_PRICES

DATA = Path(__file__).parents[1] / "data"
WHO = {"user_id": "ann", "product": "chat"}


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def lines(name: str) -> list[Any]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line]


def priced(event: Any) -> int:
    """What metering charges for the event (it must also pass validation)."""
    now = datetime.now(UTC)
    (ok,) = decode(
        event.SerializeToString(), {CONTENT_TYPE: PROTOBUF}, now, timedelta(days=35)
    ).events
    cat = PriceCatalog.from_file(DEFAULT_PRICES)
    return cat.price(ok.model, now, tokens(ok)).micros


def test_openai_chat_completion_with_cached_prompt() -> None:
    e = from_openai_chat(load("openai_chat_completion.json"), **WHO)
    assert (e.model, e.input_tokens, e.cached_input_tokens, e.output_tokens) == (
        "gpt-4.1", 1117, 1024, 46,
    )  # fmt: skip
    assert e.request_id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    # gpt-4.1: 93 x 2 + 1024 x 0.5 + 46 x 8 = 1066 micros, not 1117 x 2 + 46 x 8
    assert priced(e) == 1066


def test_openai_chat_stream_counts_the_final_chunk_with_reasoning() -> None:
    e = from_openai_chat_stream(lines("openai_chat_stream.jsonl"), **WHO)
    assert (e.model, e.input_tokens, e.cached_input_tokens) == ("o3", 2006, 1920)
    assert (e.output_tokens, e.reasoning_tokens) == (1250, 1024)
    # o3 (June 2025 price): 86 x 2 + 1920 x 0.5 + 226 x 8 + 1024 x 8 = 11132
    assert priced(e) == 11_132


def test_a_stream_without_usage_is_refused_not_recorded_as_free() -> None:
    chunks = lines("openai_chat_stream.jsonl")[:-1]
    with pytest.raises(UsageMissing, match="include_usage"):
        from_openai_chat_stream(chunks, **WHO)


def test_openai_responses_api_and_its_stream() -> None:
    response = load("openai_response.json")
    e = from_openai_response(response, **WHO)
    assert (e.model, e.input_tokens, e.output_tokens, e.reasoning_tokens) == (
        "gpt-5", 328, 1052, 832,
    )  # fmt: skip
    streamed = [{"type": "response.created"}, {"type": "response.completed", "response": response}]
    again = from_openai_response_stream(streamed, **WHO, event_id=e.event_id)
    assert again.output_tokens == 1052
    with pytest.raises(UsageMissing):
        from_openai_response_stream([{"type": "response.created"}], **WHO)


def test_anthropic_message_counts_cache_writes_as_input_priced_as_writes() -> None:
    e = from_anthropic_message(load("anthropic_message.json"), **WHO)
    assert (e.input_tokens, e.cached_input_tokens, e.cache_write_input_tokens) == (
        21 + 188_086, 0, 188_086,
    )  # fmt: skip
    # sonnet 4.5: 21 x 3 + 188086 x 3.75 + 393 x 15 = 711,280.5 -> 711,281 micros
    assert priced(e) == 711_281


def test_anthropic_stream_input_from_start_output_from_the_last_delta() -> None:
    e = from_anthropic_stream(lines("anthropic_stream.jsonl"), **WHO)
    assert (e.model, e.input_tokens, e.cached_input_tokens, e.output_tokens) == (
        "claude-opus-4-1", 472 + 2048, 2048, 89,
    )  # fmt: skip
    assert e.request_id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"


def test_sdk_objects_with_attributes_work_like_dicts() -> None:
    usage = SimpleNamespace(
        prompt_tokens=10, completion_tokens=5,
        prompt_tokens_details=SimpleNamespace(cached_tokens=4),
        completion_tokens_details=None,
    )  # fmt: skip
    e = from_openai_chat(SimpleNamespace(id="c1", model="gpt-5", usage=usage), **WHO)
    assert (e.input_tokens, e.cached_input_tokens, e.reasoning_tokens) == (10, 4, 0)


def test_a_response_without_usage_is_refused() -> None:
    with pytest.raises(UsageMissing):
        from_anthropic_message({"id": "m", "model": "x"}, **WHO)
