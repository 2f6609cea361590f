"""Reference histogram sets: promote a good run to a reference file, load it back as a baseline.

A reference is a JSON document (human-readable, diff-able)::

    {"format": "na64-dqm-reference", "format_version": 2, "created": ..., "software_version": ...,
     "provenance": {"files": [...], "runs": [...], "n_spills": ..., "n_events": ...},
     "spec": {"beam_energy_gev": ..., "hit_threshold_gev": [...], "spectrum_max_gev": [...], ...},
     "spills": [{"run", "spill", "n_beam", "physics", "beam", "random", "spill_length_s"}, ...],
     "book": {...all histogram counts...}}

Promotion fills a monitor from spill files through the same path as ``na64 dqm FILES`` and stores
the whole-run book: ``na64 dqm-reference FILES... --out REF``.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daq import __version__
from daq.contract import SpillStatus
from daq.summary import SpillSummary
from dqm.baseline import Baseline, SpillNumbers
from dqm.book import Book, BookSpec
from dqm.config import DqmConfig
from dqm.errors import DqmUserError
from dqm.monitor import Monitor, SpillClosed
from dqm.sources import OFFLINE_MESSAGE_EVENTS, file_messages

FORMAT = "na64-dqm-reference"
#: 2 added the per-waveform pre-sample distributions (wf_mean, wf_rms) and the magnified signal region
FORMAT_VERSION = 2
#: versions this DQM reads, and the book entries each may lack (they stay empty: checks that need them
#: are not judged against such a reference, e.g. pedestals, or the signal region's expected background)
READABLE = {1: ("wf_mean", "wf_rms", "h2.ecal_hcal_zoom"), 2: ()}


def _spec_dict(spec: BookSpec) -> dict[str, Any]:
    return {
        "beam_energy_gev": spec.beam_energy_gev,
        "hit_threshold_gev": spec.hit_threshold_gev.tolist(),
        "spectrum_max_gev": spec.spectrum_max_gev.tolist(),
        "presamples": spec.presamples,
        "veto_mip_gev": spec.veto_mip_gev,
    }


def promote(
    paths: Sequence[str | Path], out: str | Path, config: DqmConfig | None = None, min_spills: int = 1
) -> dict[str, Any]:
    """Fill from spill files and write a reference file; returns its provenance. Bad spills are skipped."""
    config = config or DqmConfig()
    mon = Monitor(config, live=False, spill_checks=[], live_checks=[])
    total = Book(mon.spec)
    summaries: list[SpillSummary] = []
    files: list[str] = []
    skipped: list[str] = []
    for msg in file_messages(paths, config.beam_energy_gev, events_per_message=OFFLINE_MESSAGE_EVENTS):
        for notice in mon.handle(msg, time.time()):
            if not isinstance(notice, SpillClosed):
                continue
            s = notice.summary
            good = s.status == SpillStatus.OK and s.n_beam > 0
            if good and mon.last_closed is not None:
                total.add(mon.last_closed)
                summaries.append(s)
                files.append(s.file or "")
            else:
                skipped.append(f"run {s.run} spill {s.spill} ({s.status})")
    if len(summaries) < min_spills:
        raise DqmUserError(
            f"only {len(summaries)} good spill(s) in {', '.join(map(str, paths))} (need {min_spills}); "
            f"skipped: {', '.join(skipped) or 'none'}"
        )
    provenance = {
        "files": files,
        "runs": sorted({s.run for s in summaries}),
        "n_spills": len(summaries),
        "n_events": total.n_events,
        "skipped": skipped,
    }
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "software_version": __version__,
        "provenance": provenance,
        "spec": _spec_dict(mon.spec),
        "spills": [SpillNumbers.of(s).to_dict() for s in summaries],
        "book": total.to_dict(),
    }
    write_json_atomic(Path(out), doc)
    return provenance


def write_json_atomic(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | Path, config: DqmConfig | None = None) -> Baseline:
    """Read a reference file as a :class:`Baseline`; every problem is a DqmUserError naming the file."""
    config = config or DqmConfig()
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DqmUserError(f"reference file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DqmUserError(f"reference file {p} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise DqmUserError(f"reference file {p} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise DqmUserError(f"{p} is not a DQM reference file (format is not {FORMAT!r})")
    version = doc.get("format_version")
    if version not in READABLE:
        raise DqmUserError(
            f"{p}: reference format_version {version!r} is not supported "
            f"(this DQM reads {', '.join(map(str, READABLE))})"
        )
    spec = BookSpec.from_config(config)
    want = _spec_dict(spec)
    got = doc.get("spec") or {}
    for key, value in want.items():
        other = got.get(key)
        if other is None or not np.allclose(np.asarray(other, float), np.asarray(value, float)):
            raise DqmUserError(
                f"{p}: reference was made with {key}={other!r}, this DQM uses {value!r} "
                "(promote a new reference with the same settings)"
            )
    try:
        book = Book.from_dict(spec, doc["book"], optional=READABLE[version])
        spills = [SpillNumbers.from_dict(s) for s in doc.get("spills", [])]
    except (KeyError, TypeError, ValueError) as e:
        raise DqmUserError(f"{p}: reference histograms are damaged ({e})") from None
    prov = doc.get("provenance") or {}
    runs = prov.get("runs") or []
    source = f"reference {p.name} (runs {', '.join(map(str, runs))}, {len(spills)} spills)"
    if book.missing:
        source += f"; format {version}: no {', '.join(book.missing)}"
    return Baseline.build(book, spills, source, config.checks.electron_peak.min_events)
