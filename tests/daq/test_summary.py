"""The typed summary and status documents (daq.summary) and their JSON schemas in docs/schemas/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from daq.contract import LOSS_REASONS, DaqState, SpillStatus
from daq.summary import (
    DaqStatus,
    DocumentError,
    FrontEndStatus,
    Histogram,
    SpillSummary,
    Triggers,
)
from tests.golden.make_schemas import SCHEMA_DIR, SCHEMAS, render


def full_summary() -> SpillSummary:
    return SpillSummary(
        run=12,
        spill=3,
        status=SpillStatus.INCOMPLETE,
        file="run000012_spill00003.h5",
        n_beam=9_460_000,
        n_particles=9_600_000,
        triggers=Triggers(physics=19_500, beam=4_630, random=467),
        n_accepted=24_597,
        n_events_written=24_597,
        dead_time_lost=12,
        dead_time_fraction=0.0256,
        losses={**dict.fromkeys(LOSS_REASONS, 0), "fragment_timeout": 2, "decode_error.checksum": 1},
        frontend={"n_slices": 240, "n_particles": 9_600_000},
        t_start_ns=1_780_000_000_000_000_000,
        t_end_ns=1_780_000_004_800_000_000,
        spill_length_s=4.8,
        write_seconds=0.21,
        write_mb=120.4,
        free_disk_bytes=500_000_000_000,
        calibration_id="cal-7",
        ended_by="SPILL_END",
        counters={"n_beam": 9_460_000, "n_slices": 240},
        histograms={"arrival_time": Histogram(edges=(0.0, 0.5, 1.0), counts=(3, 4))},
    )


def full_status() -> DaqStatus:
    return DaqStatus(
        state=DaqState.IN_SPILL,
        run=12,
        spill=3,
        uptime_s=12.5,
        frontends={"00a1b2": FrontEndStatus(last_seen_s=0.2, state="running", name="na64 simulate")},
        run_frontends=("00a1b2",),
        losses_run=dict.fromkeys(LOSS_REASONS, 0),
        eot_run=1000,
        events_run=20,
        spills_run=2,
        free_disk_bytes=10**12,
        data_dir="/data",
        alarms={"disk": "only 10 MB free"},
        writer_queue=3,
        pending_requests=1,
        calibration_id="cal-7",
    )


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_committed_schemas_are_the_classes(name: str) -> None:
    committed = (SCHEMA_DIR / name).read_text()
    assert committed == render(SCHEMAS[name]), "run: python tests/golden/make_schemas.py"
    jsonschema.Draft202012Validator.check_schema(json.loads(committed))


@pytest.mark.parametrize(
    ("doc", "schema"),
    [(full_summary, "spill-summary.schema.json"), (full_status, "daq-status.schema.json")],
)
def test_documents_round_trip_and_satisfy_their_schema(doc: Any, schema: str) -> None:
    d = doc()
    plain = json.loads(d.to_json())
    jsonschema.validate(plain, json.loads((SCHEMA_DIR / schema).read_text()))
    assert type(d).from_json(d.to_json()) == d


def test_a_versioned_document_must_be_complete_and_well_typed() -> None:
    good = full_summary().to_dict()
    missing = {k: v for k, v in good.items() if k != "n_beam"}
    with pytest.raises(DocumentError, match="n_beam: missing"):
        SpillSummary.from_dict(missing)
    with pytest.raises(DocumentError, match="n_beam: expected integer, got string"):
        SpillSummary.from_dict({**good, "n_beam": "12"})
    with pytest.raises(DocumentError, match=r"triggers\.physics: expected integer, got number 1\.5"):
        SpillSummary.from_dict({**good, "triggers": {"physics": 1.5, "beam": 0, "random": 0}})
    with pytest.raises(DocumentError, match="status: 'fine' is not one of ok, incomplete, recovered, failed"):
        SpillSummary.from_dict({**good, "status": "fine"})
    with pytest.raises(DocumentError, match="summary_version 2 is not supported"):
        SpillSummary.from_dict({**good, "summary_version": 2})
    with pytest.raises(DocumentError, match=r"frontends\.x\.last_seen_s: expected number, got null"):
        DaqStatus.from_dict({**full_status().to_dict(), "frontends": {"x": {"last_seen_s": None}}})
    with pytest.raises(DocumentError, match="not a JSON object"):
        SpillSummary.from_json("[1, 2]")
    # JSON has numbers: an integral float is an integer (5e11 bytes free), unknown keys are ignored
    s = SpillSummary.from_dict({**good, "free_disk_bytes": 5e11, "added_later": 1})
    assert s.free_disk_bytes == 500_000_000_000 and type(s.free_disk_bytes) is int


def test_a_field_added_in_a_later_version_is_required_from_that_version_on() -> None:
    """status_version 2 added run_frontends, 3 losses_outside_spills and gaps, 4 rejected: an older
    document is read without them, a newer one must have them."""
    v4 = full_status().to_dict()
    assert v4["status_version"] == 4 and v4["rejected"] == {}
    with pytest.raises(DocumentError, match="rejected: missing"):
        DaqStatus.from_dict({k: v for k, v in v4.items() if k != "rejected"})
    v3 = {k: v for k, v in v4.items() if k != "rejected"} | {"status_version": 3}
    assert DaqStatus.from_dict(v3).rejected == {}
    assert "gaps" in v3 and "losses_outside_spills" in v3
    with pytest.raises(DocumentError, match="gaps: missing"):
        DaqStatus.from_dict({k: v for k, v in v3.items() if k != "gaps"})
    v2 = {k: v for k, v in v3.items() if k not in ("gaps", "losses_outside_spills")} | {"status_version": 2}
    assert DaqStatus.from_dict(v2).gaps == {}
    assert v2["run_frontends"] == ["00a1b2"]
    v1 = {k: v for k, v in v2.items() if k != "run_frontends"} | {"status_version": 1}
    assert DaqStatus.from_dict(v1).run_frontends == ()
    with pytest.raises(DocumentError, match="run_frontends: missing"):
        DaqStatus.from_dict({k: v for k, v in v2.items() if k != "run_frontends"})
    with pytest.raises(DocumentError, match="losses_run: missing"):  # version-1 fields stay required
        DaqStatus.from_dict({k: v for k, v in v1.items() if k != "losses_run"})


def test_a_document_older_than_the_versions_is_read_with_defaults() -> None:
    s = SpillSummary.from_dict({"run": 1, "spill": 2, "n_beam": 5, "triggers": {"physics": 4}})
    assert (s.n_beam, s.triggers, s.status, s.free_disk_bytes) == (5, Triggers(physics=4), "ok", None)
    with pytest.raises(DocumentError, match="spill: missing"):
        SpillSummary.from_dict({"run": 1})
    st = DaqStatus.from_dict({"state": "running", "frontends": {"0": {"last_seen_s": 0.2}}})
    assert st.running and st.frontends["0"].state == "unknown" and st.run is None


def test_the_schema_directory_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "daq.md").read_text()
    for name in SCHEMAS:
        assert f"schemas/{name}" in docs
