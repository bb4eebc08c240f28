from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quartermaster.config import CommonSettings
from quartermaster.devstack import DevSettings
from quartermaster.settings import SettingsError
from quartermaster.settings_doc import EXAMPLE, GROUPS, env_file, rows
from services.metering.settings import MeteringSettings
from services.policy.settings import PolicySettings

ROOT = Path(__file__).resolve().parent.parent


def load_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_defaults_are_valid() -> None:
    for _, cls in GROUPS:
        cls.from_env({})


def test_the_example_file_is_current_and_loads_into_every_service() -> None:
    assert EXAMPLE.read_text() == env_file(), "run: make settings-doc"
    env = load_env_file(EXAMPLE)
    assert set(env) == {env for _, env, _, _ in rows()}
    for _, cls in GROUPS:
        cls.from_env(env)


def test_the_docs_document_every_setting() -> None:
    docs = (ROOT / "docs" / "settings.md").read_text()
    missing = [env for _, env, _, _ in rows() if f"`{env}`" not in docs]
    assert not missing, f"docs/settings.md lacks {missing}: paste `make settings-doc` output"


@pytest.mark.parametrize("raw", ["false", "False", "0", "no", "off"])
def test_false_means_false(raw: str) -> None:
    assert DevSettings.from_env({"QM_DEMO_TRAFFIC": raw}).demo_traffic is False


def test_every_bad_variable_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as info:
        PolicySettings.from_env(
            {
                "QM_DEMO_TRAFFIC": "maybe",  # not policy's: ignored
                "QM_POLICY_WARN_PERCENT": "lots",
                "QM_POLICY_REFRESH_SECONDS": "1.0",
                "QM_TOPIC_PARTITIONS": "three",
            }
        )
    assert [p.split(":")[0] for p in info.value.problems] == [
        "QM_TOPIC_PARTITIONS",
        "QM_POLICY_WARN_PERCENT",
    ]


def test_values_that_parse_but_make_no_sense_are_refused() -> None:
    with pytest.raises(SettingsError) as info:
        MeteringSettings.from_env(
            {
                "QM_KAFKA_BOOTSTRAP": "localhost",
                "QM_WORKSPACE_TIMEZONE": "Mars/Olympus",
                "QM_METERING_PRICES": "/nowhere.yaml",
            }
        )
    text = str(info.value)
    assert "QM_KAFKA_BOOTSTRAP: expected host:port, got 'localhost'" in text
    assert "QM_WORKSPACE_TIMEZONE: unknown time zone 'Mars/Olympus'" in text
    assert "QM_METERING_PRICES: no such file: /nowhere.yaml" in text


def test_a_bool_is_not_truthy_by_accident() -> None:
    with pytest.raises(SettingsError, match="QM_DEMO_TRAFFIC: expected true or false"):
        DevSettings.from_env({"QM_DEMO_TRAFFIC": "nope"})


@pytest.mark.parametrize("module", ["services.metering", "services.policy"])
def test_a_service_with_a_wrong_setting_stops_naming_the_variable(module: str) -> None:
    env = {**os.environ, "QM_LOG_LEVEL": "CHATTY"}
    res = subprocess.run(
        [sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "QM_LOG_LEVEL: unknown level 'CHATTY'" in res.stderr


def test_common_settings_share_one_workspace_time_zone() -> None:
    s = CommonSettings.from_env({"QM_WORKSPACE_TIMEZONE": "Europe/Berlin"})
    assert s.timezone.key == "Europe/Berlin"
