"""DQM configuration from TOML: defaults, overrides, validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daq.errors import ConfigError
from dqm.config import DqmConfig, load_config


def test_defaults_and_override(tmp_path: Path) -> None:
    assert load_config() == DqmConfig()
    p = tmp_path / "dqm.toml"
    p.write_text("beam_energy_gev = 80\n[checks.electron_peak]\nwarn = 0.01\nerror = 0.03\n")
    cfg = load_config(p, beam_energy_gev=None)
    assert cfg.beam_energy_gev == 80 and cfg.checks.electron_peak.warn == 0.01
    assert load_config(p, beam_energy_gev=150.0).beam_energy_gev == 150.0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("beam_energy_gev = -1\n", "beam_energy_gev"),
        ("[checks.electron_peak]\nwarn = 0.1\nerror = 0.05\n", "checks.electron_peak"),
        ("[checks.reference]\nmethod = 'x2'\n", "checks.reference.method"),
        ("[checks.pedestals]\nnonsense = 1\n", "checks.pedestals.nonsense"),
        ("[mqtt]\ntopic_prefix = 'na64/#'\n", "mqtt"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, where: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_config(p)
