"""The requests CLI's command line (services.requests.cli), without a server: a number
that is not one, not finite, too large, or a positive one that rounds to nothing exits
2 with the usage and names the argument (it printed a traceback, or sent 0 and was
refused as "amount_micros: must be positive"); good ones become the wire's units."""

from __future__ import annotations

import pytest

from services.requests.cli import main, parser

BAD = [  # (argv, what stderr says after "argument ")
    (["create", "nan", "--why", "x"], "credits: 'nan' is not a finite number"),
    (["create", "inf", "--why", "x"], "credits: 'inf' is not a finite number"),
    (["create", "1e30", "--why", "x"], "credits: 1e30 is more than 1e+09 credits"),
    (["create", "ten", "--why", "x"], "credits: 'ten' is not a number"),
    (["create", "-5", "--why", "x"], "credits: -5 must be positive"),
    (["create", "0", "--why", "x"], "credits: 0 must be positive"),
    (["create", "0.0000001", "--why", "x"],
     "credits: 0.0000001 credits round to 0 micro-credits; the least is 0.000001 credits"),
    (["create", "5", "--why", "x", "--hours", "nan"], "--hours: 'nan' is not a finite number"),
    (["create", "5", "--why", "x", "--hours", "1e20"], "--hours: 1e20 is more than 8784 hours"),
    (["create", "5", "--why", "x", "--hours", "0.0001"],
     "--hours: 0.0001 hours round to 0 seconds; the least is 0.000278 hours"),
    (["create", "5", "--why", "a\x00b"], "--why: must not contain NUL (U+0000)"),
    (["create", "5", "--why", "a\udcffb"], "--why: must be valid Unicode"),
    (["decide", "cr-1", "approve", "--version", "1", "--credits", "nan"],
     "--credits: 'nan' is not a finite number"),
    (["decide", "cr-1", "approve", "--version", "1", "--credits", "0.0000004"],
     "--credits: 0.0000004 credits round to 0 micro-credits"),  # 0 would grant it all
    (["decide", "cr-1", "approve", "--version", "1", "--hours", "-1"],
     "--hours: -1 must be positive (or 0: as asked)"),
    (["decide", "cr-1", "approve", "--version", "99999999999999999999"],
     "--version: <20 characters, not shown> is not between 1 and 2**63 - 1"),
    (["revoke", "cr-1", "--version", "0", "--reason", "x"], "--version: 0 is not between 1"),
    (["mine", "--limit", "9999999999"], "--limit: 9999999999 is not between 1 and 500"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "said"), BAD, ids=[" ".join(a)[:40] for a, _ in BAD])
def test_a_bad_number_or_text_exits_2_naming_the_argument(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--token", "t", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ")
    assert f"error: argument {said}" in err
    assert "Traceback" not in err


def test_good_numbers_become_micro_credits_and_seconds() -> None:
    ns = parser().parse_args(["create", "0.000001", "--hours", "0.5", "--why", "x"])
    assert (ns.credits, ns.hours) == (1, 1800)
    ns = parser().parse_args(["create", "1e9", "--why", "x"])
    assert (ns.credits, ns.hours) == (10**15, 24 * 3600)
    ns = parser().parse_args(["decide", "cr-1", "approve", "--version", "2"])
    assert (ns.credits, ns.hours) == (0, 0)  # as asked
    ns = parser().parse_args(["decide", "cr-1", "deny", "--version", "2", "--credits", "2.5"])
    assert ns.credits == 2_500_000
