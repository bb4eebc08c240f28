"""Typed settings read from the environment once and validated at start-up.

Each service declares a frozen dataclass whose fields use `setting(...)`. A wrong
value stops the process with the variable's name; every bad variable is reported at
once. Booleans accept true/false/1/0/yes/no/on/off and nothing else.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self, TypeVar

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


SettingsT = TypeVar("SettingsT", bound="Settings")


class SettingsError(ValueError):
    """One or more environment variables are wrong; `problems` names each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


def setting(env: str, default: Any, help: str) -> Any:
    """Declare a field read from environment variable `env` (documented by `help`)."""
    return dataclasses.field(default=default, metadata={"env": env, "help": help})


def _parse(kind: Any, raw: str) -> Any:
    if kind is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if kind is int:
        return int(raw.strip())
    if kind is float:
        return float(raw.strip())
    if kind is Path:
        return Path(raw)
    if kind is str:
        return raw
    raise TypeError(f"unsupported setting type {kind!r}")


class Settings:
    """Base for the per-service settings dataclasses."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[f.name] = _parse(hints[f.name], raw)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
        if problems:
            raise SettingsError(problems)
        instance = cls(**values)
        problems = [f"{env_name(cls, k)}: {msg}" for k, msg in instance.problems()]
        if problems:
            raise SettingsError(problems)
        return instance

    def problems(self) -> list[tuple[str, str]]:
        """(field, message) for every value that parses but makes no sense."""
        return []

    @classmethod
    def documented(cls) -> list[tuple[str, Any, str]]:
        """(variable, default, help) for each setting, for docs and the example file."""
        return [
            (f.metadata["env"], f.default, f.metadata["help"])
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        ]


def env_name(cls: type[Settings], field_name: str) -> str:
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name == field_name:
            return str(f.metadata["env"])
    raise KeyError(field_name)


def host_port(value: str) -> tuple[str, int] | None:
    """Parse "host:port"; None when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def load_or_exit(cls: type[SettingsT], process: str, *also: type[Settings]) -> SettingsT:
    """`cls.from_env()`, or exit 2 naming every wrong variable (for entrypoints). The
    classes in `also` are checked too (say, those of the children a launcher starts),
    so that every wrong variable of all of them is named at once."""
    problems: list[str] = []
    loaded: SettingsT | None = None
    try:
        loaded = cls.from_env()
    except SettingsError as exc:
        problems += exc.problems
    for other in also:
        try:
            other.from_env()
        except SettingsError as exc:
            problems += [p for p in exc.problems if p not in problems]
    if problems or loaded is None:
        sys.stderr.write(f"{process}: {SettingsError(problems)}\n")
        raise SystemExit(2)
    return loaded
