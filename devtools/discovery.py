"""What each service brings, found by looking, not by a list to keep up to date.

A service is a package `services.<name>` (a folder with `__init__.py`). Its database
schema is `<name>` when it has a `migrations/` folder beside its code; its settings are
the `quartermaster.settings.Settings` subclasses defined in `services.<name>.settings`.
A new service is picked up by `make migrate`, `make run`, the tests and the settings
reference as soon as it has these.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import services
from quartermaster.settings import Settings


def service_names() -> list[str]:
    """The names of the service packages under `services/`, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules(services.__path__) if m.ispkg)


def _package_dir(name: str) -> Path:
    return Path(services.__path__[0]) / name


def migration_dirs() -> dict[str, Path]:
    """{schema: migrations folder} for every service that has one; schema = service name."""
    dirs = {name: _package_dir(name) / "migrations" for name in service_names()}
    return {schema: path for schema, path in dirs.items() if path.is_dir()}


def settings_classes() -> list[tuple[str, type[Settings]]]:
    """(service name, class) for each Settings subclass defined in a service's
    `settings` module, in the order the module defines them. A service without a
    settings module has none; an import error in one is raised, not hidden."""
    found: list[tuple[str, type[Settings]]] = []
    for name in service_names():
        if not (_package_dir(name) / "settings.py").is_file():
            continue
        module = importlib.import_module(f"services.{name}.settings")
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, Settings)
                and obj.__module__ == module.__name__
            ):
                found.append((name, obj))
    return found
