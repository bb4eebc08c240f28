"""`python -m services.metering`: run one metering worker until SIGTERM/SIGINT."""

from __future__ import annotations

import sys

import faust

from quartermaster import telemetry
from quartermaster.settings import SettingsError
from services.metering.app import create_app
from services.metering.pricing import CatalogError, PriceCatalog
from services.metering.settings import MeteringSettings


def main() -> None:
    try:
        settings = MeteringSettings.from_env()
        catalog = PriceCatalog.from_file(settings.prices_file)
    except (SettingsError, CatalogError) as exc:
        sys.stderr.write(f"metering: {exc}\n")
        raise SystemExit(2) from None
    telemetry.setup("metering", settings.log_level, metrics_addr=settings.metrics_addr)
    app = create_app(settings, catalog)
    # Not faust's CLI: its `worker` command turns the web server back on (port 6066).
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
