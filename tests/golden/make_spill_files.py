"""Write the golden spill file of today's format version (tests/golden/spill_v<N>/, N = 2 since 2026-12-06).

Run from the repository root, only on purpose: ``python tests/golden/make_spill_files.py``. It writes
``run000042_spill00007.h5`` through the DAQ's own writer (:class:`daq.writer.SpillWriter`) from
deterministic events, and ``expected.json``: the values a reader must get back (root attributes,
counters, losses, histograms, every dataset's shape, dtype, units and the SHA-256 of its data).

The files are committed and read by ``tests/daq/test_golden_spill.py`` forever: every later reader must
still read every earlier version (as boost-histogram keeps its pickles). A new format version gets its
own directory and the earlier ones are left alone (``spill_v1/`` was written by this script's version
of 2026-12-05, without the fit's chi2, pulse counts and neighbours). The tables are written with
``table_compression = "gzip"`` to keep the file small (the default ``none`` stores whole zero-padded
chunks: ~1.2 MB for 20 events); both are version 1 and read the same way.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from daq import detector
from daq.batch import EventBatch
from daq.files import FORMAT_VERSION
from daq.protocol import NO_PARTICLE
from daq.waveform import MAX_NEIGHBOURS

OUT = Path(__file__).resolve().parent / f"spill_v{FORMAT_VERSION}"
NAME = "run000042_spill00007.h5"
N_EVENTS = 20
T_START_NS = 1_780_000_000_000_000_000  # fixed wall-clock times so the values are reproducible


def events() -> EventBatch:
    """20 deterministic events: a beam-like shower in the ECAL/PRS, pedestals and noise elsewhere."""
    rng = np.random.default_rng(20261206)
    n, n_ch = N_EVENTS, detector.N_CHANNELS
    index = np.arange(n, dtype=np.uint32) * 7
    index[[4, 13]] = NO_PARTICLE  # two random triggers
    mask = np.full(n, 0x701, np.uint32)  # PHYSICS + S_TRIG + S_PRS + S_EC
    mask[[4, 13]] = 0x4
    mask[[9]] = 0x702  # BEAM
    energy = np.zeros((n, n_ch), np.float32)
    bx, by = detector.BEAM_CELL
    energy[:, detector.ecal_id(bx, by)] = rng.uniform(20, 90, n).astype(np.float32)
    energy[:, detector.prs_id(bx, by)] = rng.uniform(0.3, 2, n).astype(np.float32)
    energy[:, detector.hcal_id(0, 1, 1)] = rng.uniform(0, 10, n).astype(np.float32)
    amplitude = (energy * 1000 * detector.nominal_gains()).astype(np.float32) + rng.normal(
        0, 1.5, (n, n_ch)
    ).astype(np.float32)
    peak_time = rng.normal(125, 3, (n, n_ch)).astype(np.float32)
    ecal = energy[:, detector.ECAL_IDS].sum(1) + energy[:, detector.PRS_IDS].sum(1)
    sums = np.stack(
        [
            energy[:, detector.PRS_IDS].sum(1),
            ecal,
            energy[:, detector.HCAL_IDS].sum(1),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
            100.0 - ecal,
        ]
    ).astype(np.float32)
    samples = np.arange(detector.N_SAMPLES)
    pulse = np.exp(-0.5 * ((samples * detector.SAMPLE_PERIOD_NS - 125.0) / 17.0) ** 2)
    wf = 200 + rng.normal(0, 1.5, (n, n_ch, detector.N_SAMPLES)) + amplitude[:, :, None] * pulse
    prim = detector.default_primitive_channels()
    nb_count = rng.integers(0, 4, n).astype(np.uint8)
    nb_count[[4, 13]] = 0
    filled = np.arange(MAX_NEIGHBOURS)[None, :] < nb_count[:, None]
    nb_dt = np.where(filled, rng.integers(-600, 500, (n, MAX_NEIGHBOURS)), 0).astype(np.int32)
    nb_amp = np.where(filled[:, :, None], rng.integers(0, 3000, (n, MAX_NEIGHBOURS, prim.size)), 0).astype(
        np.uint16
    )
    return EventBatch(
        event_id=np.arange(1000, 1000 + n, dtype=np.uint64),
        slice=(np.arange(n) // 5).astype(np.uint32),
        index=index,
        t_ns=np.sort(rng.integers(0, 4_800_000_000, n)).astype(np.int64),
        trigger_mask=mask,
        missing_groups=np.where(np.arange(n) == 17, 1 << 4, 0).astype(np.uint8),  # one event without SRD
        sums=sums,
        energy=energy,
        amplitude=amplitude,
        peak_time=peak_time,
        pileup=rng.random((n, n_ch)) > 0.97,
        chi2=rng.chisquare(28, (n, n_ch)).astype(np.float32) / 28,
        n_pulses=(energy > 0).astype(np.uint8) + (rng.random((n, n_ch)) > 0.95),
        waveforms=np.clip(np.rint(wf), 0, 4095).astype(np.uint16),
        prim_amp=np.where(index[None, :] == NO_PARTICLE, 0, np.clip(amplitude[:, prim].T, 0, 4095)).astype(
            np.uint16
        ),
        nb_count=nb_count,
        nb_dt_ns=nb_dt,
        nb_amp=nb_amp,
    )


def write(directory: Path) -> Path:
    from daq.writer import SpillFinal, SpillHeader, SpillWriter, WriterConfig

    header = SpillHeader(
        run=42,
        spill=7,
        t_start_ns=T_START_NS,
        config={"trigger": {"ecal_max_gev": 80.0}, "writer": {"compression": "blosc-lz4"}},
        trigger={
            "prs_min_gev": 0.3,
            "ecal_max_gev": 80.0,
            "beam_prescale": 2000,
            "dead_time_ns": 5000,
            "random_period_ns": 10_000_000,
        },
        calibration_id=f"golden-v{FORMAT_VERSION}",
        frontend_info='{"name": "golden", "seed": 20261206}',
    )
    w = SpillWriter(directory, header, WriterConfig(fsync=False, table_compression="gzip"))
    w.append(events())
    res = w.close(
        SpillFinal(
            status="incomplete",
            t_end_ns=T_START_NS + 4_800_000_000,
            counters={
                "n_beam": 96_000,
                "n_particles": 97_500,
                "n_accepted": N_EVENTS,
                "triggers_physics": 17,
                "triggers_beam": 1,
                "triggers_random": 2,
                "dead_time_lost": 3,
                "n_events_incomplete": 1,
            },
            losses={"dead_time": 3, "fragment_timeout": 1},
            frontend={"n_slices": 4, "n_requests": 4, "n_fragments": 23, "n_events_read": 20},
            histograms={
                "ecal_block_gev": (np.arange(6) * 3, np.linspace(0, 120, 7), "GeV"),
                "arrival_time": (np.array([5, 7, 8]), np.array([0.0, 1.6, 3.2, 4.8]), "s"),
            },
            summary={
                "run": 42,
                "spill": 7,
                "n_beam": 96_000,
                "triggers": {"physics": 17, "beam": 1, "random": 2},
            },
        )
    )
    assert res.path is not None
    return res.path


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def expected(path: Path) -> dict[str, Any]:
    """What a reader must find in the golden file (read back with h5py + hdf5plugin)."""
    import h5py
    import hdf5plugin  # noqa: F401  (the waveforms' blosc filter)

    out: dict[str, Any] = {"file": path.name, "datasets": {}}
    with h5py.File(path, "r") as f:
        volatile = {"created", "git_hash", "git_dirty", "software_source", "software_version", "summary"}
        out["attrs"] = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items() if k not in volatile
        }
        out["summary_keys"] = sorted(json.loads(f.attrs["summary"]))
        for group in ("counters", "losses", "frontend"):
            out[group] = {k: int(v) for k, v in f[group].attrs.items()}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                out["datasets"][name] = {
                    "shape": list(obj.shape),
                    "dtype": obj.dtype.str if obj.dtype.names is None else "compound",
                    "units": obj.attrs["units"],
                    "description": obj.attrs["description"],
                    "sha256": digest(obj[()]),
                }

        f.visititems(visit)
    e_ecal = events().sums[1]
    out["events_e_ecal"] = [float(x) for x in e_ecal]
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp))
        doc = expected(path)
        (OUT / NAME).write_bytes(path.read_bytes())
    (OUT / "expected.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT / NAME} ({(OUT / NAME).stat().st_size} bytes) and expected.json")


if __name__ == "__main__":
    main()
