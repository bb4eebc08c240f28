"""Slack Block Kit pieces built safely from text that people wrote.

Everything a person can put in a message (a justification, a deny reason, a display
name, a product or model name, a request id) is shown literally: in `mrkdwn` text,
`&`, `<` and `>` are escaped as Slack asks (`&amp;`, `&lt;`, `&gt;`), so
`<https://evil.example|Approve>`, `<!here>` or `<@U123>` stay text, never a link or a
mention. `plain_text` needs no escaping. Every piece is kept within Slack's limits
(a longer one is cut and ends in "…"), so a long text never makes Slack refuse the
whole message (`invalid_blocks`, `msg_too_long`).

Pure: no I/O here.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

Block = dict[str, object]

# Slack's limits (Block Kit reference), in characters.
SECTION_TEXT_MAX = 3000
HEADER_TEXT_MAX = 150
BLOCK_ID_MAX = 255
MAX_BLOCKS = 50
# chat.postMessage's `text`: Slack truncates past 40,000 and advises at most 4,000.
MESSAGE_TEXT_MAX = 4000
ELLIPSIS = "…"
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")


def escape(text: str) -> str:
    """`text` as Slack mrkdwn shows it literally: `&`, `<`, `>` escaped."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    """`text`, or its first `limit` - 1 characters and "…" when it is longer."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def mrkdwn(text: str, limit: int = SECTION_TEXT_MAX) -> str:
    """`text` escaped for mrkdwn and at most `limit` characters long, cut (with "…")
    before an escape sequence rather than inside one."""
    escaped = escape(text)
    if len(escaped) <= limit:
        return escaped
    return _PARTIAL_ENTITY.sub("", escaped[: limit - 1]) + ELLIPSIS


def section(text: str, bold: bool = False) -> Block:
    """A section block showing `text` literally (in bold when `bold`)."""
    shown = f"*{mrkdwn(text, SECTION_TEXT_MAX - 2)}*" if bold else mrkdwn(text)
    return {"type": "section", "text": {"type": "mrkdwn", "text": shown}}


def header(text: str) -> Block:
    """A header block (plain_text, at most 150 characters)."""
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, HEADER_TEXT_MAX)}}


def sections(lines: Iterable[str], room: int) -> list[Block]:
    """A section block for each non-empty line, at most `room` (≥ 1) blocks: when
    there are more lines, the last block says how many were left out."""
    kept = [x for x in lines if x]
    if len(kept) > room:
        kept = [*kept[: room - 1], f"… and {len(kept) - room + 1} more"]
    return [section(x) for x in kept]


def block_id(prefix: str, key: str) -> str:
    """`prefix:key`, or `prefix:#<sha256 of key>` when that would pass Slack's 255."""
    whole = f"{prefix}:{key}"
    if len(whole) <= BLOCK_ID_MAX:
        return whole
    return f"{prefix}:#{hashlib.sha256(key.encode()).hexdigest()}"


def message_text(text: str) -> str:
    """A message's notification text (chat.postMessage / chat.update `text`, which
    Slack reads as mrkdwn): escaped and within MESSAGE_TEXT_MAX."""
    return mrkdwn(text, MESSAGE_TEXT_MAX)
