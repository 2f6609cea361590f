"""The golden spill files of every format version (tests/golden/spill_v1/, spill_v2/, made by
tests/golden/make_spill_files.py): today's reader must read each, value for value, forever."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from daq.files import SUPPORTED_VERSIONS, SpillFile, dataset_info
from tests.conftest import require_program
from tests.daq.test_files import datasets_of, h5dump_values

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
VERSIONS = (1, 2)


@pytest.fixture(params=VERSIONS, ids=lambda v: f"v{v}")
def golden(request: pytest.FixtureRequest) -> tuple[int, Path, dict]:
    """(format version, the golden file, what a reader must find in it)."""
    directory = GOLDEN / f"spill_v{request.param}"
    expected = json.loads((directory / "expected.json").read_text())
    return request.param, directory / expected["file"], expected


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def test_every_version_is_still_supported(golden: tuple[int, Path, dict]) -> None:
    version, _, expected = golden
    assert version in SUPPORTED_VERSIONS and expected["attrs"]["format_version"] == version


def test_todays_version_has_a_golden_file() -> None:
    assert max(SUPPORTED_VERSIONS) in VERSIONS


def test_the_reader_reads_every_value_of_the_golden_file(golden: tuple[int, Path, dict]) -> None:
    version, PATH, EXPECTED = golden
    ds = EXPECTED["datasets"]
    with SpillFile(PATH) as f:
        assert (f.run, f.spill, f.status, f.n_events) == (42, 7, "incomplete", 20)
        attrs = f.attrs
        for k, v in EXPECTED["attrs"].items():
            assert attrs[k] == v, k
        assert (f.counters, f.losses, f.frontend) == (
            EXPECTED["counters"],
            EXPECTED["losses"],
            EXPECTED["frontend"],
        )
        assert f.config["writer"] == {"compression": "blosc-lz4"} and f.frontend_info["name"] == "golden"
        assert f.trigger_config["beam_prescale"] == 2000
        ev = f.events()
        for name, values in ev.items():
            assert digest(values) == ds[f"events/{name}"]["sha256"], name
        np.testing.assert_array_equal(ev["e_ecal"], np.float32(EXPECTED["events_e_ecal"]))
        assert digest(f.energy()) == ds["reco/energy"]["sha256"]
        assert digest(f.amplitude()) == ds["reco/amplitude"]["sha256"]
        assert digest(f.peak_time()) == ds["reco/peak_time"]["sha256"]
        assert digest(f.pileup().astype(np.uint8)) == ds["reco/pileup"]["sha256"]
        assert digest(f.waveforms()) == ds["waveforms"]["sha256"]
        out = np.empty((20, 110, f.n_samples), np.uint16)
        f.read_waveforms_into(out)  # the replay's direct chunk path
        assert digest(out) == ds["waveforms"]["sha256"]
        prim = f.primitives()
        for key in ("channels", "t_ns", "amp"):
            assert digest(prim[key]) == ds[f"primitives/{key}"]["sha256"], key
        assert digest(f.channels) == ds["channels"]["sha256"]
        for name, (counts, edges) in f.histograms().items():
            assert digest(counts) == ds[f"histograms/{name}/counts"]["sha256"]
            assert digest(edges) == ds[f"histograms/{name}/edges"]["sha256"]
        summary = f.summary()
        assert sorted(set(summary) - {"histograms", "losses", "frontend"}) <= EXPECTED["summary_keys"]
        assert summary["histograms"]["ecal_block_gev"]["counts"] == [0, 3, 6, 9, 12, 15]
        if version == 1:  # no fit quality, no neighbours
            assert f.chi2() is None and f.n_pulses() is None and f.neighbours() is None
        else:
            assert digest(f.chi2()) == ds["reco/chi2"]["sha256"]
            assert digest(f.n_pulses()) == ds["reco/n_pulses"]["sha256"]
            nb = f.neighbours()
            assert nb is not None
            for key in ("count", "dt_ns", "amp"):
                assert digest(nb[key]) == ds[f"neighbours/{key}"]["sha256"], key


def test_every_golden_dataset_has_the_units_of_todays_table(golden: tuple[int, Path, dict]) -> None:
    _, PATH, EXPECTED = golden
    found = datasets_of(PATH)
    assert set(found) == set(EXPECTED["datasets"])
    for name, (units, description) in found.items():
        unit = (
            "GeV" if name.startswith("histograms/ecal") else "s" if name.startswith("histograms/arr") else ""
        )
        assert units == dataset_info(name, unit)[0] == EXPECTED["datasets"][name]["units"], name
        assert description == EXPECTED["datasets"][name]["description"], name


def test_h5dump_prints_the_golden_event_columns_without_a_plugin(golden: tuple[int, Path, dict]) -> None:
    _, PATH, EXPECTED = golden
    h5dump = require_program("h5dump")
    env = {k: v for k, v in os.environ.items() if k != "HDF5_PLUGIN_PATH"}
    values = h5dump_values(h5dump, PATH, "/events/e_ecal", env)
    np.testing.assert_allclose(values, EXPECTED["events_e_ecal"], rtol=1e-7)


@pytest.mark.parametrize("dataset", ["events/e_ecal", "reco/energy", "primitives/amp"])
def test_the_golden_tables_use_only_filters_built_into_hdf5(
    dataset: str, golden: tuple[int, Path, dict]
) -> None:
    import h5py

    PATH = golden[1]
    with h5py.File(PATH, "r") as f:
        plist = f[dataset].id.get_create_plist()
        assert {plist.get_filter(i)[0] for i in range(plist.get_nfilters())} <= {1, 2}  # shuffle, deflate
