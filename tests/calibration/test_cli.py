"""``na64 calibrate``: real spill files (written by daq.writer with synthetic content of known truth),
the CLI steps, show/compare, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from calibration import constants as cc
from daq import detector, waveform
from daq.batch import EventBatch
from daq.cli import main
from daq.protocol import NO_PARTICLE
from daq.writer import SpillWriter, WriterConfig
from daq.writer_commands import SpillFinal, SpillHeader
from tests.calibration import synth
from tests.conftest import na64_command

N_RANDOM = 800
N_BEAM = 1200


def _batch(waveforms: np.ndarray, mask: int, gain: np.ndarray, first_id: int) -> EventBatch:
    n = waveforms.shape[0]
    reco = waveform.reconstruct(waveforms, gain)
    n_prim = len(detector.default_primitive_channels())
    return EventBatch(
        event_id=np.arange(first_id, first_id + n, dtype=np.uint64),
        slice=np.zeros(n, np.uint32),
        index=np.full(n, NO_PARTICLE if mask == 4 else 0, np.uint32),
        t_ns=np.arange(n, dtype=np.int64) * 1000,
        trigger_mask=np.full(n, mask, np.uint32),
        missing_groups=np.zeros(n, np.uint8),
        sums=waveform.event_sums(reco.energy),
        energy=reco.energy,
        amplitude=reco.amplitude,
        peak_time=reco.peak_time,
        pileup=reco.pileup,
        waveforms=waveforms,
        prim_amp=np.zeros((n_prim, n), np.uint16),
        **EventBatch.without_fit(n, n_prim),
    )


def _beam_windows(rng: np.random.Generator, truth: synth.Truth, n: int) -> np.ndarray:
    """Electron showers on the beam cell as waveforms (EM pulses peaking at sample 10), plus counters."""
    amp, _ = synth.electron_showers(rng, truth, n, radiative_fraction=0.02)
    full = np.zeros((n, detector.N_CHANNELS))
    full[:, synth.CALO_IDS] = np.clip(amp, 0, None)
    cnt = detector.COUNTER_IDS[:3]
    full[:, cnt] = synth.sample_moyal(rng, 0.3, 0.036, (n, 3)) * truth.gain[cnt]
    full[:, detector.SRD_IDS] = rng.gamma(3.0, 10.0, (n, 3)) * truth.gain[detector.SRD_IDS]
    return waveform.synthesize(full, 125.0, truth.pedestal_even, truth.pedestal_odd, 0.0, rng=rng).astype(
        np.uint16
    )


@pytest.fixture(scope="module")
def spills(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.Truth]:
    truth = synth.make_truth(12)
    rng = np.random.default_rng(12)
    data = tmp_path_factory.mktemp("data")
    for spill in (1, 2):
        header = SpillHeader(run=42, spill=spill, config={"reco": {"zero_suppress_sigma": 5.0}})
        w = SpillWriter(data, header, WriterConfig(fsync=False))
        w.append(_batch(synth.random_windows(rng, truth, N_RANDOM // 2), 4, detector.nominal_gains(), 0))
        w.append(_batch(_beam_windows(rng, truth, N_BEAM // 2), 2 | 256, detector.nominal_gains(), 10**4))
        w.close(SpillFinal(status="ok"))
    return data, truth


def test_pedestal_step_writes_a_versioned_file(spills: tuple[Path, synth.Truth], tmp_path: Path) -> None:
    data, truth = spills
    out = tmp_path / "peds.json"
    assert (
        main(
            [
                "calibrate",
                "pedestals",
                str(data),
                "--out",
                str(out),
                "--version",
                "p1",
                "--run-range",
                "40:45",
            ]
        )
        == 0
    )
    c = cc.load(out)
    assert (c.version, c.run_min, c.run_max) == ("p1", 40, 45)
    d = np.concatenate([c.pedestal_even - truth.pedestal_even, c.pedestal_odd - truth.pedestal_odd])
    assert np.max(np.abs(d)) < 0.15  # 800 random windows with 2 MHz pile-up
    step = c.provenance["steps"][0]
    assert step["step"] == "pedestals" and step["runs"] == [42] and step["results"]["n_windows"] == N_RANDOM
    assert [Path(p).name for p in step["inputs"]] == ["run000042_spill00001.h5", "run000042_spill00002.h5"]
    assert np.isfinite(c.errors["pedestal_even"]).all() and np.isnan(c.errors["gain"]).all()


def test_gain_step_determines_the_beam_cell_srd_and_counters(
    spills: tuple[Path, synth.Truth], tmp_path: Path
) -> None:
    data, truth = spills
    peds, gains = tmp_path / "peds.json", tmp_path / "gains.json"
    assert main(["calibrate", "pedestals", str(data), "--out", str(peds)]) == 0
    containment = synth.containment(detector.BEAM_CELL)
    assert (
        main(
            [
                "calibrate",
                "gains",
                str(data),
                "--base",
                str(peds),
                "--out",
                str(gains),
                "--containment",
                f"{containment:.5f}",
            ]
        )
        == 0
    )
    c = cc.load(gains)
    centre = detector.ecal_id(*detector.BEAM_CELL)
    assert np.isfinite(c.errors["gain"][centre])
    # daq.waveform's maximum sample on a pulse peaking exactly on a sample: no phase loss here
    assert c.gain[centre] == pytest.approx(truth.gain[centre], rel=0.03)
    cnt = detector.COUNTER_IDS[:3]
    np.testing.assert_allclose(c.gain[cnt], truth.gain[cnt], rtol=0.03)
    np.testing.assert_allclose(c.gain[detector.SRD_IDS], truth.gain[detector.SRD_IDS], rtol=0.05)
    # the pedestals of the base are kept, the far cells keep their nominal gains
    np.testing.assert_array_equal(c.pedestal_even, cc.load(peds).pedestal_even)
    assert c.gain[detector.ecal_id(0, 0)] == detector.NOMINAL_GAIN[detector.Detector.ECAL]
    steps = [s["step"] for s in c.provenance["steps"]]
    assert steps == ["pedestals", "gains"]


def test_show_and_compare(
    spills: tuple[Path, synth.Truth], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = spills
    peds = tmp_path / "peds.json"
    cc.save(cc.nominal(), tmp_path / "nominal.json")
    assert main(["calibrate", "pedestals", str(data), "--out", str(peds), "--version", "p2"]) == 0
    capsys.readouterr()
    assert main(["calibrate", "show", str(peds), "--channels", "SRD"]) == 0
    out = capsys.readouterr().out
    assert "calibration p2, valid for runs 42.." in out and "SRD2" in out and "ECAL00 " not in out
    assert "step pedestals" in out
    assert main(["calibrate", "show", str(peds), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["detectors"]["HCAL"]["channels"] == 36 and doc["version"] == "p2"
    assert main(["calibrate", "compare", str(tmp_path / "nominal.json"), str(peds), "--json"]) == 0
    cmp = json.loads(capsys.readouterr().out)
    assert cmp["new"] == "p2" and cmp["detectors"]["ECAL"]["pedestal_diff_rms"] > 5  # truth spread 25


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["calibrate", "pedestals", "{data}", "--out", "{tmp}/x.json", "--run-range", "9:3"],
            "empty or negative",
        ),
        (["calibrate", "pedestals", "{data}", "--out", "{tmp}/x.json", "--run-range", "a:b"], "expected A:B"),
        (
            ["calibrate", "gains", "{data}", "--out", "{tmp}/x.json", "--base", "{tmp}/none.json"],
            "does not exist",
        ),
        (
            ["calibrate", "gains", "{data}", "--out", "{tmp}/x.json", "--set", "gains.window=-1"],
            "at gains: window",
        ),
        (["calibrate", "gains", "{tmp}/empty", "--out", "{tmp}/x.json"], "no spill files"),
        (["calibrate", "pedestals", "{tmp}/missing", "--out", "{tmp}/x.json"], "no such file"),
        (
            ["calibrate", "gains", "{data}", "--out", "{tmp}/x.json", "--beam-energy", "50"],
            "x the expected energy (more than 30% off)",
        ),
        (
            ["calibrate", "timing", "{data}", "--out", "{tmp}/x.json", "--recorded-with", "{tmp}/other.json"],
            "recorded with nominal-v1",
        ),
        (["calibrate", "show", "{tmp}/none.json"], "does not exist"),
    ],
)
def test_user_mistakes_end_with_one_line_and_exit_2(
    spills: tuple[Path, synth.Truth],
    tmp_path: Path,
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, _ = spills
    (tmp_path / "empty").mkdir()
    cc.save(cc.nominal().replace(version="other"), tmp_path / "other.json")
    args = [a.format(data=data, tmp=tmp_path) for a in argv]
    assert main(args) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("na64 calibrate: error:")]
    assert len(lines) == 1 and message in lines[0], lines


def test_a_bad_constants_file_is_one_line_from_the_real_command(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "na64-calibration", "format_version": 1, "version": "x"}')
    proc = subprocess.run(
        na64_command("calibrate", "show", str(bad)), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        == f"na64 calibrate: error: {bad}: 'valid_runs' must be [first_run, last_run or null]"
    )


def test_help_lists_the_steps() -> None:
    proc = subprocess.run(na64_command("calibrate", "--help"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for step in ("pedestals", "gains", "mip", "timing", "show", "compare"):
        assert step in proc.stdout
    proc = subprocess.run(
        na64_command("calibrate", "gains", "--help"), capture_output=True, text=True, timeout=60
    )
    assert "--containment" in proc.stdout and "--run-range" in proc.stdout and "--base" in proc.stdout
