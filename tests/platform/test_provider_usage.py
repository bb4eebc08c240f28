"""Provider usage objects → UsageEvent, on recorded response shapes (tests/data)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from quartermaster.provider_usage import (
    BATCH,
    COMPLETED,
    CUT_OFF,
    FAILED,
    FLEX,
    INCOMPLETE,
    PRIORITY,
    STANDARD,
    UsageMissing,
    event_id_of,
    from_anthropic_message,
    from_anthropic_stream,
    from_openai_chat,
    from_openai_chat_stream,
    from_openai_response,
    from_openai_response_stream,
)
from quartermaster.topics import CONTENT_TYPE, PROTOBUF
from quartermaster.v1.usage_pb2 import UsageEvent
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
    assert e.ending == COMPLETED


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


# -- how calls end (issue 13, item 3): record what was billed, flag what is partial ----


def test_a_responses_stream_ending_incomplete_is_recorded_as_billed() -> None:
    """20 in, 1,024 out of which 1,000 reasoning, stopped at max_output_tokens: gpt-5
    bills 20 x 1.25 + 1024 x 10 = 10,265 micros (it raised UsageMissing)."""
    e = from_openai_response_stream(lines("openai_response_incomplete_stream.jsonl"), **WHO)
    assert (e.model, e.input_tokens, e.output_tokens, e.reasoning_tokens) == (
        "gpt-5", 20, 1024, 1000,
    )  # fmt: skip
    assert e.ending == INCOMPLETE
    assert priced(e) == 10_265
    terminal = lines("openai_response_incomplete_stream.jsonl")[-1]
    assert from_openai_response(terminal, **WHO).ending == INCOMPLETE
    assert from_openai_response(terminal["response"], **WHO).ending == INCOMPLETE


def test_a_failed_response_with_usage_is_recorded_and_one_without_is_refused() -> None:
    e = from_openai_response_stream(lines("openai_response_failed_stream.jsonl"), **WHO)
    assert (e.input_tokens, e.output_tokens, e.ending) == (300, 40, FAILED)
    assert priced(e) == 775  # 300 x 1.25 + 40 x 10 micros
    billed_nothing = {"id": "resp_x", "status": "failed", "model": "gpt-5", "usage": None}
    failed = {"type": "response.failed", "response": billed_nothing}
    with pytest.raises(UsageMissing, match="failed and carries no usage"):
        from_openai_response_stream([failed], **WHO)
    cancelled = {**load("openai_response.json"), "status": "cancelled"}
    assert from_openai_response(cancelled, **WHO).ending == INCOMPLETE


def test_a_responses_stream_cut_before_its_terminal_event_is_refused_naming_why() -> None:
    cut = lines("openai_response_incomplete_stream.jsonl")[:-1]
    with pytest.raises(UsageMissing, match="without a terminal event"):
        from_openai_response_stream(cut, **WHO)


def _chat_stopped_by(reason: str) -> list[Any]:
    chunks = lines("openai_chat_stream.jsonl")
    for chunk in chunks:
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                choice["finish_reason"] = reason
    return chunks


@pytest.mark.parametrize(("reason", "ending"), [
    ("stop", COMPLETED), ("tool_calls", COMPLETED), ("length", INCOMPLETE),
    ("content_filter", INCOMPLETE),
])  # fmt: skip
def test_a_chat_completion_stopped_early_is_incomplete_and_billed_in_full(
    reason: str, ending: int
) -> None:
    streamed = from_openai_chat_stream(_chat_stopped_by(reason), **WHO)
    assert (streamed.output_tokens, streamed.ending) == (1250, ending)
    response = load("openai_chat_completion.json")
    response["choices"][0]["finish_reason"] = reason
    assert from_openai_chat(response, **WHO).ending == ending


def test_a_chat_stream_cut_before_any_finish_says_it_was_cut_off() -> None:
    chunks = [c for c in lines("openai_chat_stream.jsonl")[:-1]
              if not any(ch.get("finish_reason") for ch in c.get("choices") or ())]  # fmt: skip
    with pytest.raises(UsageMissing, match="cut off before its final chunk"):
        from_openai_chat_stream(chunks, **WHO)


def test_an_anthropic_stream_stopped_at_max_tokens_is_incomplete_and_billed() -> None:
    e = from_anthropic_stream(lines("anthropic_stream_max_tokens.jsonl"), **WHO)
    assert (e.input_tokens, e.output_tokens, e.ending) == (12, 256, INCOMPLETE)
    assert priced(e) == 12 * 3 + 256 * 15  # 3,876 micros: sonnet 4.5 at $3 / $15


def test_an_anthropic_stream_cut_off_is_recorded_with_what_it_showed() -> None:
    """An `error` event (overloaded) and no message_stop: the input is billed; the
    output seen so far (1 token) is a lower bound, flagged CUT_OFF."""
    e = from_anthropic_stream(lines("anthropic_stream_cut_off.jsonl"), **WHO)
    assert (e.input_tokens, e.output_tokens, e.ending) == (1500, 1, CUT_OFF)
    assert priced(e) == 1500 * 3 + 1 * 15
    assert e.event_id == "anthropic:msg_01CutOffAbC"


@pytest.mark.parametrize(("stop_reason", "ending"), [
    ("end_turn", COMPLETED), ("stop_sequence", COMPLETED), ("tool_use", COMPLETED),
    ("pause_turn", COMPLETED), ("max_tokens", INCOMPLETE), ("refusal", INCOMPLETE),
    ("model_context_window_exceeded", INCOMPLETE),
])  # fmt: skip
def test_every_anthropic_stop_reason_has_its_ending(stop_reason: str, ending: int) -> None:
    message = {**load("anthropic_message.json"), "stop_reason": stop_reason}
    assert from_anthropic_message(message, **WHO).ending == ending


# -- idempotent at the source (issue 13, item 4) ----------------------------------------


def test_the_same_response_reported_twice_has_one_event_id() -> None:
    """The event id is the provider's id of the call, so metering's dedupe counts a
    re-report once (it was a fresh UUID each time: 12,500 for a 6,250 call)."""
    chat = load("openai_chat_completion.json")
    first, again = from_openai_chat(chat, **WHO), from_openai_chat(chat, **WHO)
    assert first.event_id == again.event_id == "openai:chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    streamed = lines("openai_chat_stream.jsonl")
    assert from_openai_chat_stream(streamed, **WHO).event_id == "openai:chatcmpl-123"
    response = load("openai_response.json")
    completed = [{"type": "response.completed", "response": response}]
    assert from_openai_response(response, **WHO).event_id == (
        from_openai_response_stream(completed, **WHO).event_id
    )
    message = load("anthropic_message.json")
    assert from_anthropic_message(message, **WHO).event_id == f"anthropic:{message['id']}"
    assert from_openai_chat(chat, **WHO, event_id="mine").event_id == "mine"


def test_event_ids_without_a_provider_id_are_random_and_long_ids_stay_valid() -> None:
    assert event_id_of("openai", "") != event_id_of("openai", "")
    long = event_id_of("openai", "x" * 1000)
    assert long == event_id_of("openai", "x" * 1000)
    assert len(long) == 36  # a uuid5, valid as an event id
    no_id = {k: v for k, v in load("openai_chat_completion.json").items() if k != "id"}
    assert from_openai_chat(no_id, **WHO).event_id != from_openai_chat(no_id, **WHO).event_id


# -- every billed token class (issue 13, item 2) ------------------------------------------


def test_an_anthropic_one_hour_cache_write_is_priced_at_the_one_hour_rate() -> None:
    """Issue 13's case: 5,424 cache-write tokens, all ephemeral_1h, 3 input, 100 output
    on claude-sonnet-4-5 cost 5,424 x 6 + 3 x 3 + 100 x 15 = 34,053 micros; we charged
    21,849 (every cache write at the 5-minute 3.75)."""
    e = from_anthropic_message(load("anthropic_message_cache_1h.json"), **WHO)
    assert (e.input_tokens, e.cache_write_input_tokens, e.cache_write_1h_input_tokens) == (
        5427, 5424, 5424,
    )  # fmt: skip
    assert (e.output_tokens, e.service_tier, e.ending) == (100, STANDARD, COMPLETED)
    assert priced(e) == 34_053
    without_split = load("anthropic_message_cache_1h.json")
    del without_split["usage"]["cache_creation"]  # an older API version: all 5-minute
    assert priced(from_anthropic_message(without_split, **WHO)) == 21_849


def test_an_anthropic_stream_carries_both_cache_lifetimes_and_its_batch_tier() -> None:
    """Sonnet 4.5 on Message Batches (half of every class): 10 in x 1.5, 500 read x 0.15,
    1,000 5-minute writes x 1.875, 2,000 one-hour writes x 3, 40 out x 7.5 = 8,265 micros."""
    e = from_anthropic_stream(lines("anthropic_stream_cache_1h_batch.jsonl"), **WHO)
    assert (e.input_tokens, e.cached_input_tokens, e.cache_write_input_tokens) == (
        3510, 500, 3000,
    )  # fmt: skip
    assert (e.cache_write_1h_input_tokens, e.output_tokens) == (2000, 40)
    assert (e.service_tier, e.ending) == (BATCH, COMPLETED)
    assert priced(e) == 15 + 75 + 1875 + 6000 + 300


def test_openai_audio_tokens_are_priced_as_audio() -> None:
    """gpt-audio: 200 text in x 2.5 + 1,000 audio in x 32 + 50 text out x 10 + 250
    audio out x 64 = 500 + 32,000 + 500 + 16,000 = 49,000 micros (as text: 6,000)."""
    e = from_openai_chat(load("openai_chat_audio.json"), **WHO)
    assert (e.input_tokens, e.audio_input_tokens, e.output_tokens, e.audio_output_tokens) == (
        1200, 1000, 300, 250,
    )  # fmt: skip
    assert (e.service_tier, e.ending) == (STANDARD, COMPLETED)
    assert priced(e) == 49_000


def test_openai_service_tiers_as_the_response_says_or_the_caller_knows() -> None:
    """A flex response (gpt-5 at half: 1,000 x 0.625 + 1,000 cached x 0.0625 + 500 x 5
    = 3,187.5 -> 3,188 micros; standard 6,375); priority doubles; the Batch API is told by
    the caller."""
    streamed = lines("openai_response_completed_flex_stream.jsonl")
    e = from_openai_response_stream(streamed, **WHO)
    assert (e.model, e.service_tier, e.ending) == ("gpt-5-2025-08-07", FLEX, COMPLETED)
    assert (e.input_tokens, e.cached_input_tokens, e.reasoning_tokens) == (2000, 1000, 300)
    assert priced(e) == 3_188
    terminal = streamed[-1]["response"]
    for tier, micros in (("default", 6_375), ("priority", 12_750)):
        assert priced(from_openai_response({**terminal, "service_tier": tier}, **WHO)) == micros
    chat = load("openai_chat_completion.json")
    assert from_openai_chat(chat, **WHO).service_tier == STANDARD
    assert from_openai_chat(chat, **WHO, service_tier=BATCH).service_tier == BATCH
    assert from_openai_chat({**chat, "service_tier": "priority"}, **WHO).service_tier == PRIORITY


# -- every terminal stream event of both providers (issue 13, item 3) --------------------


def test_every_terminal_stream_event_gives_its_ending() -> None:
    """OpenAI Responses response.completed / .incomplete / .failed, the Chat Completions
    final chunk with usage, Anthropic message_delta end_turn / max_tokens and a stream
    cut off before message_stop, each from a recorded stream."""
    read: dict[str, Callable[..., UsageEvent]] = {
        "anthropic": from_anthropic_stream, "chat": from_openai_chat_stream,
    }  # fmt: skip
    seen = {
        "response.completed": from_openai_response_stream(
            lines("openai_response_completed_flex_stream.jsonl"), **WHO).ending,
        "response.incomplete": from_openai_response_stream(
            lines("openai_response_incomplete_stream.jsonl"), **WHO).ending,
        "response.failed": from_openai_response_stream(
            lines("openai_response_failed_stream.jsonl"), **WHO).ending,
        "chat final chunk": read["chat"](lines("openai_chat_stream.jsonl"), **WHO).ending,
        "end_turn": read["anthropic"](lines("anthropic_stream.jsonl"), **WHO).ending,
        "max_tokens": read["anthropic"](lines("anthropic_stream_max_tokens.jsonl"), **WHO).ending,
        "cut off": read["anthropic"](lines("anthropic_stream_cut_off.jsonl"), **WHO).ending,
    }  # fmt: skip
    assert seen == {
        "response.completed": COMPLETED, "response.incomplete": INCOMPLETE,
        "response.failed": FAILED, "chat final chunk": COMPLETED, "end_turn": COMPLETED,
        "max_tokens": INCOMPLETE, "cut off": CUT_OFF,
    }  # fmt: skip
