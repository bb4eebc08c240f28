"""From providers' usage objects to `UsageEvent`, exactly as they bill, however the call ended.

- OpenAI Chat Completions: `usage.prompt_tokens` (cached and audio ones included,
  detailed in `prompt_tokens_details.cached_tokens` / `.audio_tokens`) and
  `completion_tokens` (reasoning and audio included, `completion_tokens_details.
  reasoning_tokens` / `.audio_tokens`); `service_tier` "flex" or "priority" (what the
  call ran on; "default", "auto" and "scale" are standard). A streamed completion
  carries its usage only on the final chunk, and only with `stream_options=
  {"include_usage": True}`: `from_openai_chat_stream` refuses a stream without it
  rather than record a free call. `finish_reason` "length" or "content_filter" is an
  INCOMPLETE ending.
- OpenAI Responses: `usage.input_tokens` / `input_tokens_details.cached_tokens`,
  `output_tokens` / `output_tokens_details.reasoning_tokens`; streamed, on the
  terminal event's `response.usage`: `response.completed`, `response.incomplete`
  (stopped at `max_output_tokens` or by a content filter, billed for what it
  produced) or `response.failed` (billed when it carries usage).
- Anthropic Messages: `usage.input_tokens` counts only uncached input;
  `cache_read_input_tokens` and `cache_creation_input_tokens` come on top, the latter
  split by how long the cache keeps them in `usage.cache_creation`
  (`ephemeral_5m_input_tokens`, `ephemeral_1h_input_tokens`: 1.25x and 2x input);
  `usage.service_tier` "standard", "priority" or "batch". Streamed,
  `message_start` carries the input side and each `message_delta` the cumulative
  output so far; a stream without `message_stop` (a dropped connection, an `error`
  event such as `overloaded_error`) is recorded with what it showed, CUT_OFF.
  `stop_reason` "max_tokens", "refusal" or "model_context_window_exceeded" is an
  INCOMPLETE ending.

Sources: OpenAI's API reference (Chat Completions `usage` and `stream_options`;
Responses streaming events), Anthropic's Messages API and streaming reference.

A call made through a batch API (OpenAI Batch, whose result lines carry a plain
completion) is told by the caller: `service_tier=BATCH`; the keyword overrides what the
response says. Audio read from the prompt cache (OpenAI Realtime) is priced as cached
input: the catalog has no cached-audio class.

Each event's `ending` (UsageEvent.CallEnding) says how the call ended; its tokens are
priced the same either way. Only what carries no usage at all is refused
(`UsageMissing`): recording it would make the call free.

`event_id`, unless given, is derived from the provider's id of the call
(`openai:chatcmpl-...`, `openai:resp_...`, `anthropic:msg_...`), so reporting the
same response twice (a gateway retrying after a crash) counts it once: metering
dedupes on event_id. A response without an id gets a random one.

Objects may be dicts (parsed JSON) or the SDKs' models (anything with attributes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from quartermaster.v1.usage_pb2 import CallEnding, ServiceTier, UsageEvent
from quartermaster.validation import MAX_ID_LENGTH
from quartermaster.wire import timestamp

COMPLETED = CallEnding.CALL_ENDING_COMPLETED
INCOMPLETE = CallEnding.CALL_ENDING_INCOMPLETE
FAILED = CallEnding.CALL_ENDING_FAILED
CUT_OFF = CallEnding.CALL_ENDING_CUT_OFF
STANDARD = ServiceTier.SERVICE_TIER_STANDARD
BATCH = ServiceTier.SERVICE_TIER_BATCH
FLEX = ServiceTier.SERVICE_TIER_FLEX
PRIORITY = ServiceTier.SERVICE_TIER_PRIORITY
# What providers call their tiers; any other name ("default", "auto", "scale") is standard.
_TIERS = {"batch": BATCH, "flex": FLEX, "priority": PRIORITY}

# How each provider says a call was stopped early (billed for what it produced).
_OPENAI_STOPPED_EARLY = frozenset({"length", "content_filter"})
_ANTHROPIC_STOPPED_EARLY = frozenset({"max_tokens", "refusal", "model_context_window_exceeded"})
# Responses API `status` → ending; "cancelled" is a background response stopped early.
_RESPONSE_STATUS = {"completed": COMPLETED, "incomplete": INCOMPLETE, "cancelled": INCOMPLETE,
                    "failed": FAILED}  # fmt: skip
_RESPONSE_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_ANTHROPIC_USAGE = ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens",
                    "output_tokens", "cache_creation", "service_tier")  # fmt: skip


class UsageMissing(ValueError):
    """The provider's object holds no usage: recording it would make the call free."""


def _get(obj: Any, name: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(obj: Any, *path: str) -> int:
    for name in path:
        obj = _get(obj, name)
    return int(obj or 0)


def event_id_of(provider: str, call_id: str) -> str:
    """The event id of the call `call_id` of `provider` ("openai", "anthropic"): the
    same for every report of that call; random when there is no id. An id too long to
    be an event id is replaced by a UUID derived from it (uuid5), the same every time."""
    if not call_id:
        return str(uuid.uuid4())
    derived = f"{provider}:{call_id}"
    if len(derived) <= MAX_ID_LENGTH:
        return derived
    return str(uuid.uuid5(uuid.NAMESPACE_URL, derived))


def _event(
    *, provider: str, call: Any, usage: Mapping[str, int], ending: int, source: str,
    user_id: str, product: str, kw: dict[str, Any],
) -> UsageEvent:  # fmt: skip
    """The event of one call: `call` gives the model and the provider's id, `usage`
    the token counts (input, cached, cache_write, output, reasoning and, when known,
    cache_write_1h, audio_in, audio_out, tier), `kw` the caller's optional keywords
    (model, source, request_id, occurred_at, event_id, attributes, service_tier)."""
    call_id = str(_get(call, "id") or "")
    tier = kw.pop("service_tier", None) or usage.get("tier") or STANDARD
    occurred_at = kw.pop("occurred_at", None) or datetime.now(UTC)
    return UsageEvent(
        event_id=kw.pop("event_id", None) or event_id_of(provider, call_id),
        occurred_at=timestamp(occurred_at),
        user_id=user_id,
        product=product,
        model=_get(call, "model") or kw.pop("model", ""),
        input_tokens=usage["input"],
        cached_input_tokens=usage["cached"],
        cache_write_input_tokens=usage["cache_write"],
        output_tokens=usage["output"],
        reasoning_tokens=usage["reasoning"],
        cache_write_1h_input_tokens=usage.get("cache_write_1h", 0),
        audio_input_tokens=usage.get("audio_in", 0),
        audio_output_tokens=usage.get("audio_out", 0),
        service_tier=tier,  # type: ignore[arg-type]  # as ending
        request_id=kw.pop("request_id", "") or call_id,
        source=kw.pop("source", source),
        attributes=dict(kw.pop("attributes", None) or {}),
        ending=ending,  # type: ignore[arg-type]  # the stub wants the enum's own type
    )


def _openai(
    response: Any, names: tuple[str, str, str, str], source: str, ending: int,
    user_id: str, product: str, kw: dict[str, Any],
) -> UsageEvent:  # fmt: skip
    """Both OpenAI APIs: (input, input details, output, output details) field names."""
    usage = _get(response, "usage")
    if usage is None:
        raise UsageMissing("the OpenAI response has no usage")
    inp, inp_details, out, out_details = names
    counts = {
        "input": _int(usage, inp), "cached": _int(usage, inp_details, "cached_tokens"),
        "cache_write": 0, "output": _int(usage, out),
        "reasoning": _int(usage, out_details, "reasoning_tokens"),
        "audio_in": _int(usage, inp_details, "audio_tokens"),
        "audio_out": _int(usage, out_details, "audio_tokens"),
        "tier": _tier(_get(response, "service_tier")),
    }  # fmt: skip
    return _event(provider="openai", call=response, usage=counts, ending=ending, source=source,
                  user_id=user_id, product=product, kw=kw)  # fmt: skip


def _tier(name: Any) -> int:
    return _TIERS.get(str(name or "").lower(), STANDARD)


def _chat_ending(finish_reasons: Iterable[Any]) -> int:
    reasons = {r for r in finish_reasons if r}
    return INCOMPLETE if reasons & _OPENAI_STOPPED_EARLY else COMPLETED


def from_openai_chat(response: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """A Chat Completions response (or its final streamed chunk) → UsageEvent.
    Optional keywords: model, source, request_id, occurred_at, event_id, attributes.
    Raises UsageMissing when it has no usage."""
    names = ("prompt_tokens", "prompt_tokens_details", "completion_tokens",
             "completion_tokens_details")  # fmt: skip
    ending = kw.pop("ending", None)
    if ending is None:
        ending = _chat_ending(_get(c, "finish_reason") for c in _get(response, "choices") or ())
    return _openai(response, names, "openai/chat", ending, user_id, product, kw)


def from_openai_chat_stream(chunks: Iterable[Any], **kw: Any) -> UsageEvent:
    """The usage of a streamed chat completion, from its final chunk; the ending from
    the chunks' `finish_reason`. Raises UsageMissing when no chunk carried usage (the
    request lacked `include_usage`, or the stream was cut before its last chunk)."""
    last = None
    reasons: list[Any] = []
    for chunk in chunks:
        reasons.extend(_get(c, "finish_reason") for c in _get(chunk, "choices") or ())
        if _get(chunk, "usage") is not None:
            last = chunk
    if last is None:
        why = (
            "it was cut off before its final chunk"
            if not any(reasons)
            else 'request it with stream_options={"include_usage": True}'
        )
        raise UsageMissing(f"the stream carried no usage: {why}")
    return from_openai_chat(last, ending=_chat_ending(reasons), **kw)


def from_openai_response(response: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """A Responses API response, or a stream's terminal event (`response.completed`,
    `response.incomplete`, `response.failed`) → UsageEvent, its ending from the
    response's `status`. Raises UsageMissing when it has no usage (a failed response
    that billed nothing)."""
    if _get(response, "type") in _RESPONSE_TERMINAL:
        response = _get(response, "response")
    ending = _RESPONSE_STATUS.get(_get(response, "status") or "completed", COMPLETED)
    if _get(response, "usage") is None and ending == FAILED:
        raise UsageMissing("the response failed and carries no usage: nothing was billed")
    names = ("input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details")
    return _openai(response, names, "openai/responses", ending, user_id, product, kw)


def from_openai_response_stream(events: Iterable[Any], **kw: Any) -> UsageEvent:
    """A Responses stream's usage, from its terminal event (see from_openai_response).
    Raises UsageMissing when the stream ended without one: usage comes only there."""
    for event in events:
        if _get(event, "type") in _RESPONSE_TERMINAL:
            return from_openai_response(event, **kw)
    raise UsageMissing(
        "the stream ended without a terminal event (response.completed, response.incomplete"
        " or response.failed), the only ones that carry usage"
    )


def from_anthropic_message(message: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """An Anthropic Messages response → UsageEvent (input counts every input token);
    its ending from `stop_reason`. Raises UsageMissing when it has no usage."""
    usage = _get(message, "usage")
    if usage is None:
        raise UsageMissing("the message has no usage")
    plain = _int(usage, "input_tokens")
    read = _int(usage, "cache_read_input_tokens")
    hour = _int(usage, "cache_creation", "ephemeral_1h_input_tokens")
    # The total, or the split's sum where a reporter kept only the split.
    written = max(_int(usage, "cache_creation_input_tokens"),
                  hour + _int(usage, "cache_creation", "ephemeral_5m_input_tokens"))  # fmt: skip
    counts = {"input": plain + read + written, "cached": read, "cache_write": written,
              "output": _int(usage, "output_tokens"), "reasoning": 0, "cache_write_1h": hour,
              "tier": _tier(_get(usage, "service_tier"))}  # fmt: skip
    ending = kw.pop("ending", None)
    if ending is None:
        stopped_early = _get(message, "stop_reason") in _ANTHROPIC_STOPPED_EARLY
        ending = INCOMPLETE if stopped_early else COMPLETED
    return _event(provider="anthropic", call=message, usage=counts, ending=ending,
                  source="anthropic/messages", user_id=user_id, product=product, kw=kw)  # fmt: skip


def from_anthropic_stream(events: Iterable[Any], **kw: Any) -> UsageEvent:
    """A streamed Anthropic message: input from `message_start`, output (cumulative)
    from the last `message_delta`, the ending from its `stop_reason`, or CUT_OFF when
    the stream ended before `message_stop`. Raises UsageMissing without `message_start`."""
    message: Any = None
    usage: dict[str, Any] = {}  # the fields as reported: counts, cache_creation, tier
    stop_reason = None
    stopped = False
    for event in events:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            start = _get(message, "usage")
            usage = {name: _get(start, name) for name in _ANTHROPIC_USAGE}
        elif kind == "message_delta":
            delta = _get(event, "usage")
            for name in _ANTHROPIC_USAGE:
                if _get(delta, name) is not None:  # cumulative: the latest wins
                    usage[name] = _get(delta, name)
            stop_reason = _get(_get(event, "delta"), "stop_reason") or stop_reason
        elif kind == "message_stop":
            stopped = True
    if message is None:
        raise UsageMissing("the stream had no message_start event")
    whole = {"model": _get(message, "model"), "id": _get(message, "id"), "usage": usage,
             "stop_reason": stop_reason}  # fmt: skip
    ending = kw.pop("ending", None) or (None if stopped else CUT_OFF)
    return from_anthropic_message(whole, ending=ending, **kw)
