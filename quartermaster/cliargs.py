"""What every command-line tool of ours shares about its arguments and its errors:
`Parser`, an argparse parser whose errors never repeat a value that could be a token,
and `rpc_hint`, what a CLI user should do about a refused or failed call.

A token pasted in the wrong place (`cli --token` without a value, then the token
read as a subcommand) once came back on screen in argparse's "invalid choice:
'<the token>'", and so into terminal scrollback and CI logs.
"""

from __future__ import annotations

import argparse
import re
from typing import NoReturn

from quartermaster.tls import ClientTls, handshake_hint
from quartermaster.tokens import MIN_TOKEN_CHARS

# A word as long as the shortest token, made of what tokens are made of.
_LONG_WORD = re.compile(rf"[^\s'\",\[\]()]{{{MIN_TOKEN_CHARS},}}")


def hide_long_values(message: str, known: str) -> str:
    """`message` with every word of MIN_TOKEN_CHARS or more characters that is not in
    `known` (the parser's usage: option names, choices) replaced by "<N characters,
    not shown>". Over-cautious on purpose: a long date or path typed wrong is hidden
    too, and its owner has it on the line above."""
    words = set(re.findall(r"[\w.:/-]+", known))

    def hide(match: re.Match[str]) -> str:
        word = match.group(0)
        return word if word in words else f"<{len(word)} characters, not shown>"

    return _LONG_WORD.sub(hide, message)


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser whose error messages hide values that could be a token
    (see `hide_long_values`); exits 2 as argparse does. Subparsers made with
    `add_subparsers` are of this class too."""

    def error(self, message: str) -> NoReturn:
        super().error(hide_long_values(message, self.format_usage()))


def token_argument(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """`--token` on `parser`. Given on the top parser (`top`, default None) and on each
    subcommand (default SUPPRESS, so a subcommand without it leaves the top one's
    value), it may stand before or after the subcommand."""
    parser.add_argument(
        "--token",
        default=None if top else argparse.SUPPRESS,
        help="bearer token (default: QM_TOKEN; see docs/security.md)",
    )


def rpc_hint(code: str, details: str, *, token_given: bool, tls: ClientTls | None) -> str:
    """What a CLI user can do about a call that failed with status `code` (its name)
    and `details`; "" when there is nothing to add. `token_given`: whether the call
    carried a token (QM_TOKEN or --token); `tls`: the client's TLS (None: plaintext)."""
    if code == "UNAUTHENTICATED":
        if not token_given:
            return "no token was sent: set QM_TOKEN or give --token (docs/security.md)"
        return "the token in QM_TOKEN or --token is not one this server accepts"
    if code == "UNAVAILABLE":
        return handshake_hint(details, tls)
    return ""
