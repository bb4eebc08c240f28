"""What metering's CLI commands share: a time argument, and rows written as a table
or CSV."""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO


def when(text: str) -> datetime:
    """An argument's ISO-8601 date or time; UTC when it names no zone (`prices list
    --at`: prices take effect at UTC instants; the Cost API's commands read dates in the
    workspace's zone instead, services.metering.cli_time)."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 date or time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def write(rows: Sequence[Sequence[str]], header: Sequence[str], fmt: str, out: TextIO) -> None:
    """`rows` under `header`: CSV when `fmt` is "csv", else a table of padded columns."""
    if fmt == "csv":
        w = csv.writer(out)
        w.writerow(header)
        w.writerows(rows)
        return
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    out.write("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "\n")
    for r in rows:
        out.write("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + "\n")
