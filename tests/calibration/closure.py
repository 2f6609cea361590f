"""A calibration campaign calibrated through the documented CLI alone, and its comparison with the truth.

:func:`calibrate_cli_only` runs ``na64 calibrate pedestals``, ``gains``, ``mip``, ``timing`` exactly as
docs/calibration.md says, each as its own process with no option beyond the documented ones (no
containment table, no simulator internals); :func:`group_table` compares the derived gains with the
simulator's truth per group: RMS and max of the relative deviation, and the RMS of the pulls (deviation /
quoted error), which is ~1 when the quoted errors mean what they say. Used by the end-to-end test and by
``benchmarks/calibration_closure.py``.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration import constants as cc
from daq import detector
from tests.conftest import na64_command

COUNTER_IDS = np.array([detector.counter_id(n) for n in detector.COUNTER_NAMES], np.intp)
#: (group, channel ids) of the gains table
GAIN_GROUPS: tuple[tuple[str, np.ndarray], ...] = (
    ("ECAL", detector.ECAL_IDS),
    ("PRS", detector.PRS_IDS),
    ("HCAL", detector.HCAL_IDS),
    ("VETO", detector.VETO_IDS),
    ("counters", COUNTER_IDS),
    ("SRD", detector.SRD_IDS),
)


@dataclass(frozen=True)
class Calibrated:
    path: Path  # the final constants file
    constants: cc.Constants
    logs: dict[str, str]  # step -> its output (stdout and stderr)


def calibrate_cli_only(data_dirs: list[Path], out: Path, version: str = "closure-v1") -> Calibrated:
    """The four steps of docs/calibration.md ("Derivations"), each a ``na64 calibrate`` process."""
    out.mkdir(parents=True, exist_ok=True)
    dirs = [str(d) for d in data_dirs]
    steps = (
        ("pedestals", [*dirs, "--out", str(out / "peds.json")]),
        ("gains", [*dirs, "--base", str(out / "peds.json"), "--out", str(out / "gains.json")]),
        ("mip", [*dirs, "--base", str(out / "gains.json"), "--out", str(out / "mip.json")]),
        (
            "timing",
            [*dirs, "--base", str(out / "mip.json"), "--out", str(out / "cal.json"), "--version", version],
        ),
    )
    logs = {}
    for step, argv in steps:
        proc = subprocess.run(
            na64_command("calibrate", step, *argv), capture_output=True, text=True, timeout=900, check=False
        )
        logs[step] = proc.stdout + proc.stderr
        (out / f"{step}.log").write_text(logs[step])
        if proc.returncode != 0:
            raise AssertionError(f"na64 calibrate {step} exited {proc.returncode}:\n{logs[step][-2000:]}")
    return Calibrated(out / "cal.json", cc.load(out / "cal.json"), logs)


def group_table(c: cc.Constants, truth: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Per group, over the channels whose gain was determined (a quoted error): n, RMS, max and mean of
    derived / true gain - 1, and the RMS of the pulls (derived - true) / quoted error."""
    rows = []
    for name, ids in GAIN_GROUPS:
        err = c.errors["gain"][ids]
        det = ids[np.isfinite(err)]
        rel = c.gain[det] / truth["gain"][det] - 1.0
        pull = (c.gain[det] - truth["gain"][det]) / c.errors["gain"][det]
        rows.append(
            {
                "group": name,
                "quantity": "gain",
                "n": int(det.size),
                "not_determined": [detector.channel_name(int(i)) for i in ids[~np.isfinite(err)]],
                "rms": _rms(rel),
                "max": float(np.max(np.abs(rel))) if rel.size else math.nan,
                "mean": float(np.mean(rel)) if rel.size else math.nan,
                "pull_rms": _rms(pull),
                "median_quoted_error": float(np.median(err[np.isfinite(err)] / c.gain[det]))
                if det.size
                else math.nan,
                "worst": detector.channel_name(int(det[np.argmax(np.abs(rel))])) if det.size else "",
            }
        )
    return rows


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a)))) if a.size else math.nan
