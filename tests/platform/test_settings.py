from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.discovery import migration_dirs, settings_classes
from devtools.run import DevSettings
from devtools.settings_doc import EXAMPLE, REFERENCE, generated, groups, rows
from quartermaster.config import CommonSettings
from quartermaster.settings import SettingsError
from services.metering.settings import MeteringSettings
from services.policy.settings import PolicySettings

ROOT = Path(__file__).resolve().parents[2]


def load_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_defaults_are_valid() -> None:
    for _, cls in groups():
        cls.from_env({})


def test_the_reference_and_the_example_file_are_current() -> None:
    for path, text in generated().items():
        assert path.read_text() == text, f"{path.relative_to(ROOT)} is stale: make settings-doc"


def test_the_example_file_loads_into_every_service() -> None:
    env = load_env_file(EXAMPLE)
    assert set(env) == {row.variable for row in rows()}
    for _, cls in groups():
        cls.from_env(env)


def test_every_setting_says_what_it_means() -> None:
    assert [row.variable for row in rows() if not row.meaning] == []
    reference = REFERENCE.read_text()
    assert all(f"`{row.variable}`" in reference for row in rows())


def test_services_and_their_settings_are_discovered() -> None:
    assert {"metering", "policy"} <= set(migration_dirs())
    found = dict(settings_classes())
    assert (found["metering"], found["policy"]) == (MeteringSettings, PolicySettings)


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


def test_the_metering_data_dir_gone_with_faust_is_refused_saying_so() -> None:
    # An upgrade that still sets it is told it can go, not left wondering what it does;
    # the old token variables are still refused alongside.
    with pytest.raises(SettingsError) as info:
        MeteringSettings.from_env(
            {
                "QM_METERING_DATA_DIR": "/var/lib/quartermaster/faust",
                "QM_METERING_ADMIN_TOKENS": "x",
            }
        )
    first, second = info.value.problems
    assert first.startswith("QM_METERING_ADMIN_TOKENS: replaced by QM_TOKENS"), first
    assert second.startswith("QM_METERING_DATA_DIR: no longer used"), second
    assert "remove it" in second
    assert MeteringSettings.from_env({"QM_METERING_DATA_DIR": ""}).app_id == "qm-metering"


def test_a_bool_is_not_truthy_by_accident() -> None:
    with pytest.raises(SettingsError, match="QM_DEMO_TRAFFIC: expected true or false"):
        DevSettings.from_env({"QM_DEMO_TRAFFIC": "nope"})


def test_each_process_with_a_wrong_setting_stops_naming_the_variable() -> None:
    env = {**os.environ, "QM_LOG_LEVEL": "CHATTY"}
    modules = ["services.metering", "services.policy", "devtools.run"]
    # All at once: each spends seconds importing before it reads its settings.
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", m],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        for m in modules
    ]
    for module, proc in zip(modules, procs, strict=True):
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 2, (module, stderr)
        assert "QM_LOG_LEVEL: unknown level 'CHATTY'" in stderr, module


def test_common_settings_share_one_workspace_time_zone() -> None:
    s = CommonSettings.from_env({"QM_WORKSPACE_TIMEZONE": "Europe/Berlin"})
    assert s.timezone.key == "Europe/Berlin"


def test_only_upper_case_names_are_read() -> None:
    # pydantic-settings matches names in any case; a stray lower-case variable must not
    # override or break the upper-case one a deployment set.
    got = PolicySettings.from_env({"QM_POLICY_WARN_PERCENT": "70", "qm_policy_warn_percent": "x"})
    assert got.warn_percent == 70


def test_off_turns_off_an_address_whose_default_is_one() -> None:
    """An empty variable means the default (env_ignore_empty), so QM_METERING_METRICS_ADDR=""
    still served 127.0.0.1:9464, and a second worker on the host exited: `off` is none."""
    from services.metering.settings import MeteringSettings

    assert MeteringSettings.from_env({}).metrics_addr == "127.0.0.1:9464"
    assert (
        MeteringSettings.from_env({"QM_METERING_METRICS_ADDR": ""}).metrics_addr == "127.0.0.1:9464"
    )
    assert MeteringSettings.from_env({"QM_METERING_METRICS_ADDR": "off"}).metrics_addr == ""
    with pytest.raises(SettingsError, match="expected host:port, or off"):
        MeteringSettings.from_env({"QM_METERING_METRICS_ADDR": "nowhere"})
