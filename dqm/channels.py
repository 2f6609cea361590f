"""Per-channel tests behind ``dead_channels``, ``hot_channels`` and ``pedestals`` (pure).

Every test compares two counts and asks how probable the difference is if nothing changed, with the
exact conditional binomial test of two Poisson rates (:func:`dqm.stats.binom_sf`): k of this spill in
exposure n against K of a comparison sample in exposure N; given k + K, k is binomial(k + K, n / (n + N))
when the rates are equal. The comparison's own statistical error is part of the test.

- **hits vs the baseline**, beam and physics triggers separately: hits above threshold per channel;
- **hits vs the symmetry peers** (:mod:`dqm.model`), beam triggers (calorimeters) or all triggers
  (VETO, SRD, counters): against the median peer, so one bad peer does not matter; no reference needed,
  so a channel dead from the start of the run is found;
- **noise**: waveforms whose pre-sample RMS is at least ``noise_factor`` x the baseline's (or the median
  peer's) median; noisy when half the spill's waveforms are, significantly more often than in the
  comparison. Medians and tail counts are robust against pile-up pulses in the pre-samples, which made
  the old RMS of all pre-samples flap on the cells next to the beam;
- **flat**: every waveform's pre-sample RMS <= ``dead_noise_adc`` (no noise: dead electronics);
- **pedestals**: waveforms whose pre-sample mean is ``warn``/``error`` counts or more from the baseline's
  median, the same way.

A test only counts ("judges") where it could be significant; the number of tests judged in a spill is
the look-elsewhere factor: a finding alarms when p < alarm_probability / tests, and its effect is large
enough (the config's fractions and factors), see :func:`significant`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from daq import detector
from dqm import metrics, model, stats
from dqm.book import Book
from dqm.config import ChannelCheckConfig, PedestalCheckConfig

ROWS = ("physics", "beam")  # rows of Book.arrays["hits"]
BEAM_ROW = 1
#: waveforms per channel needed to compare a channel's noise with another channel's (not its own history)
PEER_MIN_WAVEFORMS = 15
#: physics triggers are compared with the baseline's only while their share (per beam trigger) is within
#: this of the baseline's
PHYSICS_SHARE_TOLERANCE = 0.3


@dataclass(frozen=True)
class Finding:
    """A channel that failed one test: ``kind`` dead / hot / noisy / flat / shift."""

    channel: int
    kind: str
    test: str
    p: float
    observed: float
    expected: float

    @property
    def name(self) -> str:
        return detector.channel_name(self.channel)


@dataclass
class Family:
    """The tests of one alarm in one spill: how many were judged, and the candidates' p-values."""

    tests: int = 0
    findings: list[Finding] = field(default_factory=list)
    judged: set[int] = field(default_factory=set)

    def judge(self, channel: int) -> None:
        self.tests += 1
        self.judged.add(channel)


def significant(family: Family, alpha: float) -> list[Finding]:
    """Findings significant at family-wise false-alarm probability ``alpha`` (Bonferroni)."""
    if family.tests == 0:
        return []
    limit = stats.per_test_alpha(alpha, family.tests)
    return [f for f in family.findings if f.p < limit]


def _peers(groups: model.PeerGroups) -> dict[int, tuple[tuple[int, ...], bool]]:
    out: dict[int, tuple[tuple[int, ...], bool]] = {}
    for g, beam_only in zip(groups.groups, groups.beam_only, strict=True):
        for c in g:
            out[c] = (tuple(p for p in g if p != c), beam_only)
    return out


def _median_peer(values: NDArray[np.float64], peers: Sequence[int], upper: bool) -> int:
    """The peer with the median value (lower or upper median for an even number of peers)."""
    order = sorted(peers, key=lambda p: values[p])
    return order[len(order) // 2] if upper else order[(len(order) - 1) // 2]


@dataclass(frozen=True, eq=False)
class Comparison:
    """What a spill's channels are compared with: a baseline book (or none) and channels to leave out."""

    book: Book | None
    masked: frozenset[int] = frozenset()
    source: str = ""


def hits_tests(book: Book, ref: Comparison, cfg: ChannelCheckConfig) -> tuple[Family, Family]:
    """(dead, hot) families from the hits in beam and physics triggers.

    Against the baseline: dead from beam triggers (an unbiased sample of electrons whatever a fault does
    to the physics trigger), hot from both; physics triggers only while their share of the monitored
    triggers is within ``PHYSICS_SHARE_TOLERANCE`` of the baseline's: a fault that changes what fires the
    physics trigger (a dead cell in the trigger block) changes every channel's occupancy in them.
    """
    dead, hot = Family(), Family()
    hits = book.arrays["hits"]
    n_type = book.arrays["n_type"]
    if ref.book is not None:
        ref_hits, ref_n = ref.book.arrays["hits"], ref.book.arrays["n_type"]
        rows = [BEAM_ROW]
        if n_type[BEAM_ROW] > 0 and ref_n[BEAM_ROW] > 0 and ref_n[0] > 0:
            share, ref_share = n_type[0] / n_type[BEAM_ROW], ref_n[0] / ref_n[BEAM_ROW]
            if abs(share / ref_share - 1.0) <= PHYSICS_SHARE_TOLERANCE:
                rows.append(0)
        for row in rows:
            n, big_n = float(n_type[row]), float(ref_n[row])
            if n <= 0 or big_n <= 0:
                continue
            share = n / (n + big_n)
            for c in range(detector.N_CHANNELS):
                if c in ref.masked:
                    continue
                k, big_k = float(hits[row][c]), float(ref_hits[row][c])
                expected = big_k * n / big_n
                test = f"vs {ref.source or 'baseline'} ({ROWS[row]} triggers)"
                if row == BEAM_ROW and expected >= cfg.min_expected:
                    dead.judge(c)
                    if k < cfg.dead_fraction * expected:
                        p = stats.binom_cdf(k, k + big_k, share)
                        dead.findings.append(Finding(c, "dead", test, p, k, expected))
                if n * cfg.hot_min_excess >= 1:
                    hot.judge(c)
                    if k >= cfg.hot_factor * expected and (k - expected) >= cfg.hot_min_excess * n:
                        p = stats.binom_sf(k, k + big_k, share)
                        hot.findings.append(Finding(c, "hot", test, p, k, expected))
    _model_tests(book, cfg, dead, hot)
    return dead, hot


def _model_tests(book: Book, cfg: ChannelCheckConfig, dead: Family, hot: Family) -> None:
    """Hits against what the detector model expects (:mod:`dqm.model`), no reference needed.

    dead: fewer hits than ``dead_fraction`` x the lower-median symmetry peer (beam triggers for the
    calorimeters), or, for a cell without peers (the beam cell), x its median outward neighbour;
    hot: a calorimeter cell with ``hot_factor`` x the hits of its busiest inward neighbour (all
    triggers: the fall-off holds for physics triggers too), or a VETO/SRD/counter channel with
    ``hot_factor`` x its upper-median peer. A dead inward neighbour is looked through (its own inward
    neighbours count instead), and a hot peer is no measure of a dead one.
    """
    hits, n_type = book.arrays["hits"], book.arrays["n_type"]
    groups = model.peer_groups(book.arrays["esum"][BEAM_ROW])
    beam_hits, all_hits = hits[BEAM_ROW], hits.sum(axis=0)
    n_beam, n_all = float(n_type[BEAM_ROW]), float(n_type[0] + n_type[1])
    peers = _peers(groups)
    outward: dict[int, list[int]] = {}
    for c, closer in groups.inward.items():
        for i in closer:
            outward.setdefault(i, []).append(c)

    def too_many(k: float, expected: float, n: float) -> bool:
        return k >= cfg.hot_factor * expected and (k - expected) >= cfg.hot_min_excess * n

    def dead_reference(c: int, exclude: set[int]) -> tuple[int, str] | None:
        """The channel c's hits are compared with for the dead test, and how it was chosen."""
        mine, beam_only = peers.get(c, ((), True))
        values = beam_hits if beam_only else all_hits
        usable = [p for p in mine if p not in exclude]
        if usable:
            return _median_peer(values, usable, upper=False), "symmetry"
        outer = [o for o in outward.get(c, ()) if o not in exclude]
        if not mine and outer:
            return _median_peer(beam_hits, outer, upper=False), "outward neighbour"
        return None

    def is_dead_like(c: int, exclude: set[int]) -> bool:
        ref = dead_reference(c, exclude)
        if ref is None:
            return False
        values = beam_hits if peers.get(c, ((), True))[1] else all_hits
        return float(values[c]) < cfg.dead_fraction * float(values[ref[0]])

    # effect sizes first (no p-values): who looks dead, then who looks hot looking through the dead
    looks_dead = {c for c in range(detector.N_CHANNELS) if is_dead_like(c, set())}

    def inner_of(c: int, depth: int = 0) -> list[int]:
        out: list[int] = []
        for i in groups.inward.get(c, ()):
            out += inner_of(i, depth + 1) if i in looks_dead and depth < 8 else [i]
        return out

    looks_hot: set[int] = set()
    if n_all * cfg.hot_min_excess >= 1:
        for c in groups.inward:
            inner = inner_of(c)
            if not inner:
                continue
            k, expected = float(all_hits[c]), float(max(all_hits[i] for i in inner))
            hot.judge(c)
            if too_many(k, expected, n_all):
                looks_hot.add(c)
                near = detector.channel_name(max(inner, key=lambda i: all_hits[i]))
                hot.findings.append(
                    Finding(
                        c,
                        "hot",
                        f"vs inward neighbour {near} (all triggers)",
                        stats.binom_sf(k, k + expected, 0.5),
                        k,
                        expected,
                    )
                )
    for c in range(detector.N_CHANNELS):
        mine, beam_only = peers.get(c, ((), True))
        values, n = (beam_hits, n_beam) if beam_only else (all_hits, n_all)
        k = float(values[c])
        ref = dead_reference(c, looks_hot)
        if ref is not None and float(values[ref[0]]) >= cfg.min_expected:
            low, how = ref
            expected = float(values[low])
            dead.judge(c)
            if k < cfg.dead_fraction * expected:
                rows = "beam" if beam_only else "all"
                test = f"vs {detector.channel_name(low)} ({how}, {rows} triggers)"
                dead.findings.append(
                    Finding(c, "dead", test, stats.binom_cdf(k, k + expected, 0.5), k, expected)
                )
        # hot by symmetry where there is no inward neighbour: VETO, SRD, counters
        if not beam_only and len(mine) >= 2 and n * cfg.hot_min_excess >= 1:
            high = _median_peer(values, mine, upper=True)
            expected = float(values[high])
            hot.judge(c)
            if too_many(k, expected, n):
                test = f"vs {detector.channel_name(high)} (symmetry, all triggers)"
                hot.findings.append(
                    Finding(c, "hot", test, stats.binom_sf(k, k + expected, 0.5), k, expected)
                )


def _flat_probability(m: float, cfg: ChannelCheckConfig) -> float:
    """P(all m waveforms have a pre-sample RMS <= dead_noise_adc) for a live channel with >= 1 ADC of
    Gaussian noise: each RMS^2 is sigma^2 chi2(4) / 6 (6 pre-samples around 2 means)."""
    q = stats.gammainc(2.0, 3.0 * cfg.dead_noise_adc**2)  # sigma = 1 ADC: chi2(4) <= 6 d^2
    return float(q**m)


def noise_tests(book: Book, ref: Comparison, cfg: ChannelCheckConfig) -> tuple[Family, Family]:
    """(flat, noisy) families from the per-waveform pre-sample RMS."""
    flat, noisy = Family(), Family()
    rms = metrics.waveform_rms(book)
    m = rms.n
    low = rms.at_most(np.full(detector.N_CHANNELS, cfg.dead_noise_adc))
    for c in (int(i) for i in np.flatnonzero(m >= cfg.min_waveforms)):
        flat.judge(c)
        if low[c] >= m[c]:
            flat.findings.append(
                Finding(c, "flat", "pre-sample RMS (no noise)", _flat_probability(m[c], cfg), 0.0, 1.0)
            )
    # noisy: against the baseline's distribution, else against the median symmetry peer's
    if ref.book is not None:
        base = metrics.waveform_rms(ref.book)
        typical = base.median()
        for c in range(detector.N_CHANNELS):
            if c not in ref.masked:
                _noisy_test(noisy, rms, base, c, c, typical[c], cfg, f"vs {ref.source or 'baseline'}")
    # without a baseline for the channel: against the median channel of its detector (noise is a
    # property of the electronics); channels differ more than a channel from its own history (pile-up
    # in the pre-samples of the cells next to the beam), hence more waveforms needed
    medians = rms.median()
    for det_ids in detector.GROUP_IDS:
        ready = [int(c) for c in det_ids if m[c] >= PEER_MIN_WAVEFORMS]
        if len(ready) < 3:
            continue
        peer = _median_peer(np.nan_to_num(medians, nan=np.inf), ready, upper=True)
        for c in ready:
            if c == peer or (ref.book is not None and c not in ref.masked):
                continue  # judged against its own history above
            _noisy_test(noisy, rms, rms, c, peer, medians[peer], cfg, f"vs {detector.channel_name(peer)}")
    return flat, noisy


def _noisy_test(
    family: Family,
    rms: metrics.WaveformDist,
    ref: metrics.WaveformDist,
    c: int,
    ref_c: int,
    typical: float,
    cfg: ChannelCheckConfig,
    what: str,
) -> None:
    m, big_m = float(rms.n[c]), float(ref.n[ref_c])
    if m < cfg.min_waveforms or big_m < cfg.min_waveforms or not math.isfinite(typical) or typical <= 0:
        return
    family.judge(c)
    limit = np.full(detector.N_CHANNELS, cfg.noise_factor * typical)
    x = float(rms.at_least(limit)[c])
    big_x = float(ref.at_least(limit)[ref_c])
    if x >= math.ceil(m / 2):
        p = stats.binom_sf(x, x + big_x, m / (m + big_m))
        family.findings.append(
            Finding(c, "noisy", f"pre-sample RMS {what}", p, float(rms.median()[c]), typical)
        )


def pedestal_tests(
    book: Book, ref: Book, cfg: PedestalCheckConfig, channels: Iterable[int] | None = None
) -> tuple[Family, Family, NDArray[np.float64]]:
    """(warn, error) families of pedestal shifts, and each channel's median shift (ADC, NaN if not judged)."""
    spill, base = metrics.waveform_means(book), metrics.waveform_means(ref)
    m, big_m = spill.n, base.n
    base_median = base.median()
    shift = spill.median() - base_median
    judged = (m >= cfg.min_waveforms) & (big_m >= cfg.min_waveforms) & np.isfinite(base_median)
    if channels is not None:
        keep = np.zeros(detector.N_CHANNELS, bool)
        keep[list(channels)] = True
        judged &= keep
    shift = np.where(judged, shift, np.nan)
    families = []
    for step in (cfg.warn, cfg.error):
        fam = Family()
        for sign, count in ((+1, metrics.WaveformDist.at_least), (-1, metrics.WaveformDist.at_most)):
            limit = base_median + sign * step
            x, big_x = count(spill, limit), count(base, limit)
            for c in np.flatnonzero(judged):
                fam.judge(int(c))
                if x[c] >= math.ceil(m[c] / 2):
                    p = stats.binom_sf(x[c], x[c] + big_x[c], m[c] / (m[c] + big_m[c]))
                    fam.findings.append(Finding(int(c), "shift", f">= {step:g} ADC", p, float(shift[c]), 0.0))
        families.append(fam)
    return families[0], families[1], shift
