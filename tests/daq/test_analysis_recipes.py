"""The pandas recipe of docs/hdf5-format.md, run as written on real spill files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from daq.batch import EventBatch
from daq.files import EVENT_COLUMNS, channel_names
from tests.daq.test_files import batch, write

DOC = Path(__file__).resolve().parents[2] / "docs" / "hdf5-format.md"


def recipe(marker: str) -> str:
    """The python block of the doc that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    (block,) = [b for b in blocks if marker in b]
    return block


def test_the_pandas_recipe_runs_as_documented(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pd = pytest.importorskip("pandas")
    data = tmp_path / "na64-data"
    data.mkdir()
    first, second = [batch(30, 0, 1)], [batch(12, 30, 2)]
    write(data, first, run=3, spill=1)
    write(data, second, run=3, spill=2)
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(recipe("import pandas as pd"), str(DOC), "exec"), scope)
    events = scope["events"]
    assert isinstance(events, pd.DataFrame) and len(events) == 42
    assert set(EVENT_COLUMNS) | {"run", "spill", "e_ecal_only"} == set(events.columns)
    whole = EventBatch.concat(first + second)
    np.testing.assert_array_equal(events["event_id"], whole.event_id)
    np.testing.assert_array_equal(events["e_ecal"], whole.sums[1])
    np.testing.assert_array_equal(events["spill"], [1] * 30 + [2] * 12)
    np.testing.assert_allclose(events["e_ecal_only"], whole.sums[1] - whole.sums[0])
    physics = scope["physics"]
    assert isinstance(physics, pd.DataFrame) and len(physics) == int(((whole.trigger_mask & 1) != 0).sum())
    energy = scope["energy"]
    assert isinstance(energy, pd.DataFrame) and list(energy.columns) == channel_names()
    np.testing.assert_array_equal(energy.to_numpy(), second[0].energy)  # the last file of the loop


def test_the_root_recipe_is_marked_untested() -> None:
    """ROOT is not installable here (no Debian package, no wheel for this Python): the doc says so."""
    text = DOC.read_text()
    assert "RDF.FromNumpy" in recipe("import ROOT") and "**Not tested here**" in text
