"""`python -m devtools.migrate [URL]` (`make migrate`): apply every service's migrations
to URL, or to QM_DATABASE_URL when no URL is given."""

from __future__ import annotations

import sys

from devtools.discovery import migration_dirs
from quartermaster.config import CommonSettings
from quartermaster.db import migrate
from quartermaster.settings import load_or_exit


def main() -> None:
    """Exit 2 naming the variable when QM_DATABASE_URL is wrong; dbmate's output on failure."""
    url = sys.argv[1] if len(sys.argv) > 1 else load_or_exit(CommonSettings, "migrate").database_url
    migrate(url, migration_dirs())


if __name__ == "__main__":
    main()
