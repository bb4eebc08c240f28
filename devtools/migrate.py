"""`python -m devtools.migrate [URL]` (`make migrate`): apply every service's migrations
to URL, or to QM_DATABASE_URL when no URL is given."""

from __future__ import annotations

import sys

from devtools.discovery import migration_dirs
from quartermaster.config import CommonSettings
from quartermaster.db import migrate
from quartermaster.redact import mask_url, mask_urls
from quartermaster.settings import load_or_exit


def main() -> None:
    """Exit 2 naming the variable when QM_DATABASE_URL is wrong; exit 1 with dbmate's
    output when a migration fails (URLs in it shown without their passwords)."""
    url = sys.argv[1] if len(sys.argv) > 1 else load_or_exit(CommonSettings, "migrate").database_url
    # dbmate waits up to 30 s for PostgreSQL (a hook Job may start before it): said, so
    # the wait is not silence.
    sys.stderr.write(f"migrate: applying migrations to {mask_url(url)} (waiting up to 30 s "
                     "for PostgreSQL to answer)\n")  # fmt: skip
    try:
        migrate(url, migration_dirs())
    except RuntimeError as exc:
        sys.stderr.write(f"migrate ({mask_url(url)}): {mask_urls(str(exc))}\n")
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
