"""Histogram book: filling by hand-built batches, adding, serialization (pure)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daq import detector
from daq.contract import BEAM, PHYSICS, RANDOM
from dqm.batch import BatchError, MonitoredEvents, make_events
from dqm.book import Book, BookSpec

N = detector.N_CHANNELS


def batch(
    energy: np.ndarray,
    mask: list[int],
    t_ns: list[int] | None = None,
    waveform: np.ndarray | None = None,
    spill: int = 1,
) -> MonitoredEvents:
    n = len(mask)
    return MonitoredEvents.from_events(
        make_events(
            run=1,
            spill=spill,
            t_ns=np.asarray(t_ns or [0] * n),
            mask=np.asarray(mask),
            energy=energy,
            waveform=waveform,
        )
    )


def test_fill_sorts_events_by_trigger_type() -> None:
    e = np.zeros((3, N), np.float32)
    cell = detector.ecal_id(2, 3)
    e[0, cell] = 100.0  # beam electron, all in one cell
    e[1, cell] = 30.0  # physics: 30 GeV in ECAL ...
    e[1, detector.hcal_id(0, 1, 1)] = 60.0  # ... 60 GeV in the HCAL
    book = Book(BookSpec())
    book.fill(batch(e, [BEAM, PHYSICS, RANDOM]))
    assert book.n_events == 3
    assert list(book.arrays["n_type"]) == [1, 1, 1]
    # E_miss = E_beam - E_ECAL = 70 for the physics event only
    h = book.h1["e_miss"]
    assert h.values().sum() == 1
    assert h.axes[0].index(70.0) == int(np.argmax(h.values()))
    assert book.h1["ecal_sum_beam"].values().sum() == 1
    assert book.h1["ecal_sum_beam"].axes[0].index(100.0) == int(np.argmax(book.h1["ecal_sum_beam"].values()))
    ecal_hcal = book.h2["ecal_hcal"].values()
    ix, iy = book.h2["ecal_hcal"].axes[0].index(30.0), book.h2["ecal_hcal"].axes[1].index(60.0)
    assert ecal_hcal[ix, iy] == 1 and ecal_hcal.sum() == 1
    # hits: the beam cell in both the beam and the physics event
    assert book.arrays["hits"][0, cell] == 1 and book.arrays["hits"][1, cell] == 1
    assert book.arrays["hits"].sum() == 3  # plus the HCAL cell of the physics event


def test_pedestals_from_presamples_even_and_odd() -> None:
    wf = np.zeros((N, detector.N_SAMPLES), np.uint16)
    wf[:, 0::2] = 200
    wf[:, 1::2] = 204
    wf[5, 10:14] = 3000  # a pulse after the pre-samples does not matter
    book = Book(BookSpec())
    book.fill(batch(np.zeros((1, N), np.float32), [RANDOM], waveform=wf))
    from dqm.metrics import pedestals

    ped = pedestals(book)
    assert np.allclose(ped.mean_even, 200) and np.allclose(ped.mean_odd, 204)
    assert np.allclose(ped.mean, 202)
    assert np.allclose(ped.noise, 0.0)  # even/odd offsets are not noise


def test_all_zero_waveform_group_counts_as_missing_source() -> None:
    wf = np.full((N, detector.N_SAMPLES), 200, np.uint16)
    wf[detector.HCAL_IDS] = 0
    book = Book(BookSpec())
    book.fill(batch(np.zeros((1, N), np.float32), [PHYSICS], waveform=wf))
    assert book.arrays["wf_n"][0] == 1
    assert book.arrays["wf_zero_group"][detector.Detector.HCAL] == 1
    assert book.arrays["wf_zero_group"].sum() == 1
    assert book.arrays["ped_n"][:, detector.HCAL_IDS].sum() == 0  # absent channels give no pedestal


def test_wrong_channel_count_is_a_batch_error() -> None:
    from daq import protocol

    msg = protocol.Events(
        run=1,
        spill=1,
        n_events=2,
        event_id=np.arange(2, dtype=np.uint64),
        t_ns=np.zeros(2, np.int64),
        trigger_mask=np.ones(2, np.uint32),
        sums=np.zeros((6, 2), np.float32),
        energy=np.zeros((2, 50), np.float32),
        peak_time=np.zeros((2, 50), np.float32),
        waveforms=np.zeros((0, 50, 32), np.uint16),
    )
    try:
        MonitoredEvents.from_events(msg)
    except BatchError as e:
        assert "energy has shape (2, 50)" in str(e)
    else:
        raise AssertionError("no BatchError")


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**31))
def test_fill_is_additive(n1: int, n2: int, seed: int) -> None:
    """fill(a); fill(b) == fill(a) + fill(b) in separate books: the basis of the spill/last N/run views."""
    rng = np.random.default_rng(seed)

    def rand(n: int) -> MonitoredEvents:
        e = rng.exponential(2.0, (n, N)).astype(np.float32)
        mask = rng.choice([PHYSICS, BEAM, RANDOM, PHYSICS | BEAM], n).tolist()
        wf = rng.integers(190, 210, (N, detector.N_SAMPLES))
        return batch(e, mask, rng.integers(0, 4_800_000_000, n).tolist(), wf)

    a, b = rand(n1), rand(n2)
    both, one, two = Book(BookSpec()), Book(BookSpec()), Book(BookSpec())
    both.fill(a)
    both.fill(b)
    one.fill(a)
    two.fill(b)
    summed = one.copy().add(two)
    for name in both.h1:
        assert np.allclose(both.h1[name].values(flow=True), summed.h1[name].values(flow=True))
    assert np.allclose(both.spectra.values(), summed.spectra.values())
    for name in both.arrays:
        assert np.allclose(both.arrays[name], summed.arrays[name]), name
    assert both.n_events == n1 + n2


def test_to_dict_round_trip() -> None:
    rng = np.random.default_rng(1)
    book = Book(BookSpec())
    book.fill(batch(rng.exponential(1.0, (20, N)).astype(np.float32), [PHYSICS] * 10 + [BEAM] * 10))
    again = Book.from_dict(BookSpec(), book.to_dict())
    assert np.array_equal(again.h2["ecal_hcal"].values(flow=True), book.h2["ecal_hcal"].values(flow=True))
    assert np.array_equal(again.arrays["hits"], book.arrays["hits"])


def test_books_of_different_specs_do_not_add() -> None:
    try:
        Book(BookSpec()).add(Book(BookSpec(beam_energy_gev=50.0)))
    except ValueError:
        return
    raise AssertionError("added books with different axes")


def test_per_waveform_presample_distributions_are_robust_to_pileup() -> None:
    """Each waveform's pre-sample mean and RMS (around the even and odd means) per channel: a pulse in
    the pre-samples of one waveform in ten moves neither median."""
    from dqm.metrics import waveform_means, waveform_rms

    rng = np.random.default_rng(2)
    wf = np.empty((10, N, detector.N_SAMPLES), np.uint16)
    wf[:] = np.round(200 + rng.normal(0, 2.0, wf.shape)).astype(np.uint16)
    wf[:, :, 1::2] += 4  # the odd samples' offset is not noise
    wf[3, :, 2:6] += np.array([600, 300, 150, 75], np.uint16)  # the tail of an earlier pulse
    book = Book(BookSpec())
    b = batch(np.zeros((1, N), np.float32), [RANDOM])
    book.fill(MonitoredEvents(**{**b.__dict__, "waveforms": wf}))
    means, rms = waveform_means(book), waveform_rms(book)
    assert np.all(means.n == 10) and np.all(rms.n == 10)
    assert np.allclose(means.median() + detector.NOMINAL_PEDESTAL, 202.0, atol=1.2)
    assert np.all((rms.median() > 1.0) & (rms.median() < 2.5))  # ~0.87 sigma for 4 degrees of freedom
    assert np.all(rms.at_least(np.full(N, 20.0)) == 1)  # the piled-up waveform, one per channel


def test_an_older_reference_without_the_new_histograms_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from dqm import reference

    rng = np.random.default_rng(1)
    book = Book(BookSpec())
    book.fill(batch(rng.exponential(1.0, (20, N)).astype(np.float32), [PHYSICS] * 10 + [BEAM] * 10))
    data = book.to_dict()
    for key in ("wf_mean", "wf_rms"):
        del data[key]
    del data["h2"]["ecal_hcal_zoom"]
    doc = {
        "format": reference.FORMAT,
        "format_version": 1,
        "provenance": {"runs": [4]},
        "spec": reference._spec_dict(BookSpec()),
        "spills": [
            {
                "run": 4,
                "spill": 1,
                "n_beam": 1000,
                "physics": 10,
                "beam": 10,
                "random": 0,
                "spill_length_s": 1.0,
            }
        ],
        "book": data,
    }
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(doc))
    base = reference.load(path)
    assert "format 1: no h2.ecal_hcal_zoom, wf_mean, wf_rms" in base.source
    assert np.array_equal(base.book.arrays["hits"], book.arrays["hits"])
    doc["format_version"] = 2  # the current format must have them
    path.write_text(json.dumps(doc))
    try:
        reference.load(path)
    except reference.DqmUserError as e:
        assert "damaged" in str(e)
    else:
        raise AssertionError("a version-2 reference without wf_mean loaded")
