"""Developer tooling that sits above the services: `make run` (`devtools.run`), the demo
traffic (`devtools.simulator`), the settings reference (`devtools.settings_doc`), local
PostgreSQL and broker for `make run` and the tests (`devtools.localinfra`), and the
discovery of what each service brings (`devtools.discovery`: its migrations and its
settings classes).

Nothing in `quartermaster/` or `services/` imports this package: it may import both.
"""
