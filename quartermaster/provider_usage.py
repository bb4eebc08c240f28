"""From providers' usage objects to `UsageEvent`, exactly as they bill.

- OpenAI Chat Completions: `usage.prompt_tokens` (cached ones included, detailed in
  `prompt_tokens_details.cached_tokens`) and `completion_tokens` (reasoning included,
  `completion_tokens_details.reasoning_tokens`). A streamed completion carries its
  usage only on the final chunk, and only with `stream_options={"include_usage":
  True}`: `from_openai_chat_stream` refuses a stream without it rather than record
  a free call.
- OpenAI Responses: `usage.input_tokens` / `input_tokens_details.cached_tokens`,
  `output_tokens` / `output_tokens_details.reasoning_tokens`; streamed, on the
  `response.completed` event's `response.usage`.
- Anthropic Messages: `usage.input_tokens` counts only uncached input;
  `cache_read_input_tokens` and `cache_creation_input_tokens` come on top. Streamed,
  `message_start` carries the input side and each `message_delta` the cumulative
  output so far.

Objects may be dicts (parsed JSON) or the SDKs' models (anything with attributes).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from quartermaster.v1.usage_pb2 import UsageEvent
from quartermaster.wire import timestamp


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


def _event(
    *,
    user_id: str,
    product: str,
    model: str,
    input_tokens: int,
    cached: int,
    cache_write: int,
    output: int,
    reasoning: int,
    source: str,
    request_id: str,
    occurred_at: datetime | None,
    event_id: str | None,
    attributes: Mapping[str, str] | None,
) -> UsageEvent:
    return UsageEvent(
        event_id=event_id or str(uuid.uuid4()),
        occurred_at=timestamp(occurred_at or datetime.now(UTC)),
        user_id=user_id,
        product=product,
        model=model,
        input_tokens=input_tokens,
        cached_input_tokens=cached,
        cache_write_input_tokens=cache_write,
        output_tokens=output,
        reasoning_tokens=reasoning,
        request_id=request_id,
        source=source,
        attributes=dict(attributes or {}),
    )


def _openai(
    response: Any, names: tuple[str, str, str, str], source: str,
    user_id: str, product: str, kw: dict[str, Any],
) -> UsageEvent:  # fmt: skip
    """Both OpenAI APIs: (input, input details, output, output details) field names."""
    usage = _get(response, "usage")
    if usage is None:
        raise UsageMissing("the OpenAI response has no usage")
    inp, inp_details, out, out_details = names
    return _event(
        user_id=user_id, product=product,
        model=_get(response, "model") or kw.pop("model", ""),
        input_tokens=_int(usage, inp), cached=_int(usage, inp_details, "cached_tokens"),
        cache_write=0, output=_int(usage, out),
        reasoning=_int(usage, out_details, "reasoning_tokens"),
        source=kw.pop("source", source),
        request_id=kw.pop("request_id", "") or (_get(response, "id") or ""),
        occurred_at=kw.pop("occurred_at", None), event_id=kw.pop("event_id", None),
        attributes=kw.pop("attributes", None),
    )  # fmt: skip


def from_openai_chat(response: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """A Chat Completions response (or its final streamed chunk) → UsageEvent.
    Optional keywords: model, source, request_id, occurred_at, event_id, attributes."""
    names = ("prompt_tokens", "prompt_tokens_details", "completion_tokens",
             "completion_tokens_details")  # fmt: skip
    return _openai(response, names, "openai/chat", user_id, product, kw)


def from_openai_chat_stream(chunks: Iterable[Any], **kw: Any) -> UsageEvent:
    """The usage of a streamed chat completion, from its final chunk."""
    last = None
    for chunk in chunks:
        if _get(chunk, "usage") is not None:
            last = chunk
    if last is None:
        raise UsageMissing(
            'the stream carried no usage: request it with stream_options={"include_usage": True}'
        )
    return from_openai_chat(last, **kw)


def from_openai_response(response: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """A Responses API response (or a `response.completed` stream event) → UsageEvent."""
    if _get(response, "type") == "response.completed":
        response = _get(response, "response")
    names = ("input_tokens", "input_tokens_details", "output_tokens", "output_tokens_details")
    return _openai(response, names, "openai/responses", user_id, product, kw)


def from_openai_response_stream(events: Iterable[Any], **kw: Any) -> UsageEvent:
    for event in events:
        if _get(event, "type") == "response.completed":
            return from_openai_response(event, **kw)
    raise UsageMissing("the stream ended without a response.completed event")


def from_anthropic_message(message: Any, *, user_id: str, product: str, **kw: Any) -> UsageEvent:
    """An Anthropic Messages response → UsageEvent (input counts every input token)."""
    usage = _get(message, "usage")
    if usage is None:
        raise UsageMissing("the message has no usage")
    plain = _int(usage, "input_tokens")
    read = _int(usage, "cache_read_input_tokens")
    written = _int(usage, "cache_creation_input_tokens")
    return _event(
        user_id=user_id, product=product, model=_get(message, "model") or kw.pop("model", ""),
        input_tokens=plain + read + written, cached=read, cache_write=written,
        output=_int(usage, "output_tokens"), reasoning=0,
        source=kw.pop("source", "anthropic/messages"), request_id=kw.pop("request_id", "")
        or (_get(message, "id") or ""),
        occurred_at=kw.pop("occurred_at", None), event_id=kw.pop("event_id", None),
        attributes=kw.pop("attributes", None),
    )  # fmt: skip


def from_anthropic_stream(events: Iterable[Any], **kw: Any) -> UsageEvent:
    """A streamed Anthropic message: input from `message_start`, output (cumulative)
    from the last `message_delta`."""
    message: Any = None
    usage: dict[str, int] = {}
    for event in events:
        kind = _get(event, "type")
        if kind == "message_start":
            message = _get(event, "message")
            start = _get(message, "usage")
            for name in ("input_tokens", "cache_read_input_tokens",
                         "cache_creation_input_tokens", "output_tokens"):  # fmt: skip
                usage[name] = _int(start, name)
        elif kind == "message_delta":
            delta = _get(event, "usage")
            for name in ("input_tokens", "cache_read_input_tokens",
                         "cache_creation_input_tokens", "output_tokens"):  # fmt: skip
                if _get(delta, name) is not None:  # cumulative: the latest wins
                    usage[name] = _int(delta, name)
    if message is None:
        raise UsageMissing("the stream had no message_start event")
    whole = {"model": _get(message, "model"), "id": _get(message, "id"), "usage": usage}
    return from_anthropic_message(whole, **kw)
