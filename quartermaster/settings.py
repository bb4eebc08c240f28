"""Typed settings read from the environment once and validated at start-up, on
pydantic-settings.

Each process declares a `Settings` subclass: fields with defaults, constraints
(`Field(ge=..., le=...)`, the annotated types below) and, under each field, a
docstring that says what it means (the settings reference, docs/settings.md, is
generated from these). A field is read from `env_prefix` + its name upper-cased
(`QM_POLICY_` + `warn_percent`), or from its `validation_alias` where the variable is
named otherwise; names match in any case (pydantic-settings' default). An empty
variable means the default. Booleans take pydantic's words (true/false, 1/0, yes/no,
on/off, t/f, y/n): "false" is False, "nope" is an error.

A wrong value raises `SettingsError` naming the variable; every bad variable is named
at once. `load_or_exit` turns that into a message and exit status 2 for entrypoints.

Measured here (2 shared cores, Python 3.11, pydantic 2.14): importing pydantic-settings
with pydantic adds 0.15-0.35 s to a process's start, and reading metering's 30 settings
takes about 4 ms. Both happen once, at start-up, on no request path; the hand-written
framework this replaced was faster to import and nothing else.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, NamedTuple, Self, TypeVar

import annotated_types
from pydantic import AfterValidator, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from quartermaster.redact import mask_url, mask_urls

SettingsT = TypeVar("SettingsT", bound="Settings")

# pydantic's words for a value that does not parse, in ours.
_PARSE_ERRORS = {
    "bool_parsing": "expected true or false",
    "int_parsing": "expected a whole number",
    "float_parsing": "expected a number",
}


class SettingsError(ValueError):
    """One or more environment variables are wrong; `problems` has one "VAR: why" each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


class Documented(NamedTuple):
    """One setting as the settings reference shows it."""

    variable: str
    default: Any
    meaning: str
    bounds: str  # "1 to 100", "at least 1", "above 0, at most 1", or "" when unbounded


def _bounds(metadata: list[Any]) -> str:
    found: dict[str, Any] = {}
    for m in metadata:
        for kind in ("ge", "gt", "le", "lt"):
            if isinstance(m, getattr(annotated_types, kind.capitalize())):
                found[kind] = getattr(m, kind)
    if "ge" in found and "le" in found:
        return f"{found['ge']} to {found['le']}"
    words = {"ge": "at least", "gt": "above", "le": "at most", "lt": "below"}
    return ", ".join(f"{words[k]} {v}" for k, v in found.items())


class _MappingSource(EnvSettingsSource):
    """pydantic-settings' environment source reading a given mapping, not os.environ."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # Read by _load_env_vars, which the base __init__ calls. Only upper-case names:
        # pydantic-settings matches names in any case, so a stray `qm_x` would override
        # (or break) the `QM_X` a deployment set, as it never did before.
        self._environ = {k: v for k, v in environ.items() if k == k.upper()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(
            self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str
        )


class Settings(BaseSettings):
    """Base for every process's settings: immutable, `QM_` variables, others ignored."""

    model_config = SettingsConfigDict(
        env_prefix="QM_",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        validate_default=True,
        # pydantic's own error text (a Settings built with arguments, not from_env)
        # would quote the value, a password in QM_DATABASE_URL with it.
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    removed: ClassVar[Mapping[str, str]] = {}
    """Variables no longer read → what replaced them (setting one is an error)."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Read `environ` (default: the process's environment); SettingsError names
        every wrong variable."""
        environ = os.environ if environ is None else environ
        # A variable a release renamed stops the process: ignored, it would leave the
        # deployment running on defaults it never chose.
        removed = [f"{var}: {why}" for var, why in cls.removed.items() if environ.get(var)]
        try:
            settings = cls.model_validate(_MappingSource(cls, environ)())
        except ValidationError as exc:
            raise SettingsError(
                removed + [p for e in exc.errors() for p in cls._problems(e)]
            ) from None
        if removed:
            raise SettingsError(removed)
        return settings

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable a field is read from."""
        alias = cls.model_fields[field_name].validation_alias
        if isinstance(alias, str):
            return alias
        return f"{cls.model_config.get('env_prefix', '')}{field_name}".upper()

    @classmethod
    def documented(cls) -> list[Documented]:
        """Each setting's variable, default, meaning and bounds, for docs and the example
        file."""
        return [
            Documented(
                cls.env_name(name),
                f.default,
                " ".join((f.description or "").split()),
                _bounds(f.metadata),
            )
            for name, f in cls.model_fields.items()
        ]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # A settings object in a log line or a traceback shows no password.
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if isinstance(value, str) else value

    @classmethod
    def _problems(cls, error: ErrorDetails) -> list[str]:
        """ "VAR: why" for one pydantic error; a validator of several variables raises
        SettingsError with its own such lines. URLs in them are shown without their
        passwords (QM_DATABASE_URL's included)."""
        by_key = {name: cls.env_name(name) for name in cls.model_fields}
        by_key |= {env: env for env in by_key.values()}
        where = str(error["loc"][0]) if error["loc"] else ""
        variable = by_key.get(where, where or cls.__name__)
        cause = error.get("ctx", {}).get("error", error["msg"])
        if isinstance(cause, SettingsError):
            return [mask_urls(p) for p in cause.problems]
        if error["type"] == "value_error":
            return [mask_urls(f"{variable}: {cause}")]
        why = _PARSE_ERRORS.get(error["type"], error["msg"])
        return [mask_urls(f"{variable}: {why}, got {error['input']!r}")]


def host_port(value: str) -> tuple[str, int] | None:
    """Parse "host:port"; None when it is not one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def _host_port(value: str) -> str:
    if host_port(value) is None:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def _host_ports(value: str) -> str:
    for server in value.split(","):
        _host_port(server.strip())
    return value


def _host_port_or_empty(value: str) -> str:
    if value.strip().lower() == "off":
        return ""
    if value and host_port(value) is None:
        raise ValueError(f"expected host:port, or off (none), got {value!r}")
    return value


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
"""An address "host:port"."""
HostPorts = Annotated[str, AfterValidator(_host_ports)]
"""Addresses "host:port[,host:port...]" (Kafka bootstrap servers)."""
HostPortOrEmpty = Annotated[str, AfterValidator(_host_port_or_empty)]
"""An address "host:port", or "" for none. `off` is none too, and the only way to say
it where the default is an address: an empty variable means the default."""
ExistingFile = Annotated[Path, AfterValidator(_existing_file)]
"""A path to a file that exists when the settings are read."""
NonBlank = Annotated[str, AfterValidator(_not_blank)]
"""A string with something besides white space in it."""


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
