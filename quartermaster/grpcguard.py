"""What every gRPC server of ours answers when a call fails outside its servicer's
own checks, in one place: `add_guarded` adds a generated servicer with each of its
methods wrapped.

- A request protobuf can't parse (invalid UTF-8 in a string field, a truncated or
  garbled message): INVALID_ARGUMENT naming the field, not grpc's UNKNOWN quoting a
  DecodeError.
- InvalidRequest raised by the method (a mapping that found a field no domain type
  can hold, such as a Timestamp out of range): INVALID_ARGUMENT naming the fields.
- A NUL character in any string field: INVALID_ARGUMENT naming the field (PostgreSQL's
  text can't hold one; it would fail deep in a store). A method that answers from
  memory on a hot path may skip this walk (`unchecked`) and validate its own ids.
- A dependency out of reach (the database refused, lost or timed out a connection, or
  is shutting down): UNAVAILABLE, so the caller's retry policy and fail mode decide,
  not UNKNOWN quoting ConnectionRefusedError. The log says what failed.
- Anything else a servicer raises: INTERNAL, saying only which method failed and a
  reference to the log line with the traceback (no class names or SQL leave the
  server).

The wrapping is done once, when the servicer is added, rather than in a server
interceptor: an interceptor runs a chain of coroutines on every call, this costs a
call one more coroutine and one more function around the parser.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import Callable, Collection
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message

from quartermaster.db import is_outage
from quartermaster.grpcserver import abort
from quartermaster.validation import NUL, NUL_PROBLEM, InvalidRequest

log = logging.getLogger("qm.grpc")


class Undecodable:
    """What the guarded parser hands the method instead of a request it could not
    parse; `problem` names the field (or says the message is garbled)."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise DecodeError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def bad_utf8_field(descriptor: Descriptor, data: bytes, prefix: str = "") -> str | None:
    """The path (`checks[2].user_id`) of the first string field in `data`, a
    serialized `descriptor` message, whose bytes are not UTF-8; None when there is
    none or the wire format itself is broken (the caller says "garbled" then)."""
    seen: dict[int, int] = {}
    pos = 0
    try:
        while pos < len(data):
            key, pos = _varint(data, pos)
            number, wire = key >> 3, key & 7
            if wire == 0:
                _, pos = _varint(data, pos)
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            elif wire == 2:
                size, pos = _varint(data, pos)
                chunk, pos = data[pos : pos + size], pos + size
                found = _check_chunk(descriptor.fields_by_number.get(number), chunk, seen, prefix)
                if found:
                    return found
            else:
                return None  # groups (3, 4) have no place in our proto3 messages
    except DecodeError:
        return None
    return None


def _check_chunk(
    field: FieldDescriptor | None, chunk: bytes, seen: dict[int, int], prefix: str
) -> str | None:
    if field is None:
        return None  # an unknown field: protobuf keeps its bytes as they are
    name = prefix + field.name
    if field.is_repeated:
        index = seen.get(field.number, 0)
        seen[field.number] = index + 1
        name = f"{name}[{index}]"
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            chunk.decode("utf-8")
        except UnicodeDecodeError:
            return name
    elif field.type == FieldDescriptor.TYPE_MESSAGE and field.message_type is not None:
        return bad_utf8_field(field.message_type, chunk, name + ".")
    return None


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first string field of `message` (nested ones included) that
    holds a NUL character, or None."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                for i, v in enumerate(value):
                    if NUL in v:
                        return f"{name}[{i}]"
            elif NUL in value:
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            items = enumerate(value) if field.is_repeated else [(-1, value)]
            for i, v in items:
                found = nul_field(v, f"{name}[{i}]." if i >= 0 else f"{name}.")
                if found:
                    return found
    return None


def _parser(parse: Callable[[bytes], Any], descriptor: Descriptor) -> Callable[[bytes], Any]:
    def guarded_parse(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError:
            field = bad_utf8_field(descriptor, data)
            if field is not None:
                return Undecodable(f"{field}: not valid UTF-8")
            return Undecodable(f"request: not a valid {descriptor.full_name} message")

    return guarded_parse


Behavior = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]


def _behavior(behavior: Behavior, method: str, check_strings: bool) -> Behavior:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request.__class__ is Undecodable:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.problem)
        if check_strings:
            bad = nul_field(request)
            if bad is not None:
                problem = f"{bad}: {NUL_PROBLEM}"
                await abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise  # the method ended the call itself
        except InvalidRequest as exc:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Exception as exc:
            if is_outage(exc):
                # What failed goes to the log; the caller learns to come back later.
                log.warning("%s: a dependency is out of reach: %r", method, exc)
                await abort(
                    context,
                    grpc.StatusCode.UNAVAILABLE,
                    f"{method}: the server's database is out of reach; try again shortly",
                )
            ref = uuid.uuid4().hex[:12]
            log.exception("%s failed (ref %s)", method, ref)
            await abort(
                context, grpc.StatusCode.INTERNAL, f"{method} failed in the server (log ref {ref})"
            )

    return guarded


class _Recorder:
    """Stands in for the server while a generated add_*_to_server runs, to learn
    its method handlers."""

    def __init__(self) -> None:
        self.services: list[tuple[str, dict[str, grpc.RpcMethodHandler[Any, Any]]]] = []

    def add_generic_rpc_handlers(self, _handlers: object) -> None:
        pass  # the same handlers come to add_registered_method_handlers

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services.append((service, handlers))


def guard(
    handler: grpc.RpcMethodHandler[Any, Any],
    method: str,
    request: Descriptor,
    check_strings: bool = True,
) -> grpc.RpcMethodHandler[Any, Any]:
    """A unary-unary method handler with the answers of this module's docstring
    (`method` names it in messages and logs; `request` is its request message's
    descriptor). Raises ValueError for a streaming one. A plain (not async) method is
    left as it is: in our servicers that is only the generated base class's
    UNIMPLEMENTED answer."""
    if not inspect.iscoroutinefunction(handler.unary_unary):
        return handler
    if handler.request_streaming or handler.response_streaming or handler.unary_unary is None:
        raise ValueError(f"{method}: only unary-unary methods are guarded")
    parse = handler.request_deserializer
    if parse is None:
        raise ValueError(f"{method}: no request parser to guard")
    return grpc.unary_unary_rpc_method_handler(
        _behavior(handler.unary_unary, method, check_strings),
        request_deserializer=_parser(parse, request),
        response_serializer=handler.response_serializer,
    )


def add_guarded(
    server: grpc.aio.Server,
    add: Callable[[Any, Any], None],
    servicer: object,
    unchecked: Collection[str] = (),
) -> None:
    """Add `servicer` to `server` as the generated `add` (add_XServicer_to_server)
    would, with every method guarded; methods named in `unchecked` skip the NUL walk.
    Raises ValueError when `add` registers nothing this can wrap."""
    recorder = _Recorder()
    add(servicer, recorder)
    if not recorder.services:
        raise ValueError("the generated add_*_to_server registered no method handlers")
    for service, handlers in recorder.services:
        methods = descriptor_pool.Default().FindServiceByName(service).methods_by_name
        guarded = {
            name: guard(h, name, methods[name].input_type, check_strings=name not in unchecked)
            for name, h in handlers.items()
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, guarded),))
        # grpc-stubs 1.53 predates this method (grpcio 1.62 added it; generated code calls it)
        server.add_registered_method_handlers(service, guarded)  # type: ignore[attr-defined]
