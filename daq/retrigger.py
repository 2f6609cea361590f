"""Trigger emulation on recorded spills ("what if"): re-evaluate the live trigger with other settings.

The recorded primitives of every read-out particle go through the same pure functions as the live DAQ
(:meth:`daq.trigger.Trigger.conditions`), once with the settings the spill was recorded with (a
self-check: the recorded condition bits must come back) and once with the new settings. Per spill and
in total it reports how many recorded events would still be accepted, by trigger type, and the
missing-energy spectrum of the physics triggers before and after.

What a recorded spill can and cannot tell (also in ``docs/replay.md``):

- physics: exact for the recorded events (kept / lost). Particles that a looser trigger would add were
  mostly never recorded; the prescaled beam triggers are an unbiased sample of all S_trig particles,
  so the recorded beam triggers that pass the new physics trigger (``physics_gained``) x prescale
  estimates how many the looser trigger would gain in the full beam (``physics_gained_estimate``).
- beam: a recorded beam trigger stays one if it still passes S_trig (counter thresholds); the prescale
  selection itself cannot be redone (the prescaler counted unrecorded particles).
- random: unchanged (they do not depend on thresholds); another random period cannot be emulated.
- dead time: not re-applied (fewer triggers would free dead time for particles that were not recorded).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daq import protocol
from daq.config_loader import from_dict, parse_assignment
from daq.contract import BEAM, PHYSICS, RANDOM, S_EC, S_PRS, S_TRIG, ChannelConstants
from daq.errors import ConfigError
from daq.protocol import NO_PARTICLE
from daq.trigger import COUNT_NAMES, Decisions, PrimitiveBatch, Trigger, TriggerConfig

log = logging.getLogger(__name__)

#: condition bits re-evaluated on the primitives (BEAM and RANDOM come from the recording)
CONDITION_BITS = PHYSICS | S_TRIG | S_PRS | S_EC
TYPES = ("physics", "beam", "random", "accepted")
#: E_miss histogram binning (GeV), the DQM's: 140 bins from -0.2 to 1.2 x E_beam
E_MISS_BINS = 140


def e_miss_edges(beam_energy_gev: float = 100.0) -> np.ndarray:
    return np.linspace(-0.2 * beam_energy_gev, 1.2 * beam_energy_gev, E_MISS_BINS + 1)


# ---------------------------------------------------------------- settings
def parse_overrides(assignments: Sequence[str]) -> dict[str, Any]:
    """``["ecal_max_gev=70", "trigger.prs_min_gev=0.5"]`` -> ``{"ecal_max_gev": 70, "prs_min_gev": 0.5}``."""
    known = {f.name for f in dataclasses.fields(TriggerConfig)}
    out: dict[str, Any] = {}
    for text in assignments:
        key, value = parse_assignment(text)
        key = key.removeprefix("trigger.")
        if key not in known:
            raise ConfigError(f"--set {key}: not a trigger setting (known: {', '.join(sorted(known))})")
        out[key] = value
    return out


def trigger_config(recorded: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> TriggerConfig:
    """The recorded trigger settings of a spill with ``overrides`` applied, validated."""
    data = dict(recorded)
    data.update(overrides or {})
    return from_dict(TriggerConfig, data, "trigger")


# ---------------------------------------------------------------- the pure core
def retrigger_arrays(
    *,
    amp: np.ndarray,
    prim_channels: np.ndarray,
    index: np.ndarray,
    trigger_mask: np.ndarray,
    e_miss: np.ndarray,
    recorded: TriggerConfig,
    new: TriggerConfig,
    constants: ChannelConstants | None = None,
    beam_energy_gev: float = 100.0,
) -> dict[str, Any]:
    """Re-evaluate the trigger on the recorded events of one spill (pure).

    ``amp`` (C, E) primitives of the recorded events (zeros for random triggers), ``index`` (E,) with
    NO_PARTICLE for random triggers, ``trigger_mask`` the recorded masks, ``e_miss`` the reconstructed
    missing energy (GeV). Returns counts (``recorded``/``new`` by type, physics kept/lost/gained,
    ``mismatch``: recorded condition bits not reproduced with the recorded settings) and the E_miss
    histograms of the physics triggers as ``(counts, edges)``.
    """
    particle = np.asarray(index) != NO_PARTICLE
    tmask = np.asarray(trigger_mask, dtype=np.uint32)
    old_cond, _, _ = Trigger(recorded, constants, prim_channels).conditions(amp)
    new_cond, _, _ = Trigger(new, constants, prim_channels).conditions(amp)
    mismatch = int(np.count_nonzero(particle & (((old_cond ^ tmask) & CONDITION_BITS) != 0)))
    was_phys = (tmask & PHYSICS) != 0
    was_beam = (tmask & BEAM) != 0
    was_rand = (tmask & RANDOM) != 0
    is_phys = particle & ((new_cond & PHYSICS) != 0)
    is_beam = was_beam & ((new_cond & S_TRIG) != 0)
    gained = int(np.count_nonzero(is_phys & ~was_phys))  # recorded events not physics before: beam triggers
    edges = e_miss_edges(beam_energy_gev)
    e = np.asarray(e_miss, dtype=np.float64)
    recorded_counts = {
        "physics": int(np.count_nonzero(was_phys)),
        "beam": int(np.count_nonzero(was_beam)),
        "random": int(np.count_nonzero(was_rand)),
        "accepted": int(tmask.shape[0]),
    }
    new_counts = {
        "physics": int(np.count_nonzero(is_phys)),
        "beam": int(np.count_nonzero(is_beam)),
        "random": recorded_counts["random"],
        "accepted": int(np.count_nonzero(is_phys | is_beam | was_rand)),
    }
    prescale = recorded.beam_prescale
    return {
        "n_spills": 1,
        "n_events": int(tmask.shape[0]),
        "recorded": recorded_counts,
        "new": new_counts,
        "physics_kept": int(np.count_nonzero(was_phys & is_phys)),
        "physics_lost": int(np.count_nonzero(was_phys & ~is_phys)),
        "physics_gained": gained,
        "physics_gained_estimate": gained * prescale,
        "mismatch": mismatch,
        "hist": {
            "e_miss_recorded": (_histogram(e[was_phys], edges), edges),
            "e_miss_new": (_histogram(e[is_phys], edges), edges),
        },
    }


def _histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts with under- and overflow folded into the first and last bins (int64)."""
    v = np.clip(values[np.isfinite(values)], edges[0], edges[-1])
    return np.histogram(v, bins=edges)[0].astype(np.int64)


# ---------------------------------------------------------------- a whole stream through the live trigger
@dataclass(frozen=True, eq=False)
class TriggerRun:
    """The live trigger run over a sequence of batches (a spill): per-particle and per-readout results.

    ``mask``/``accept``/``e_ecal``/``e_prs`` are per particle, concatenated over the batches;
    ``readout_t_ns``/``readout_mask``/``readout_index``/``readout_batch`` per readout entry (random
    triggers included); ``counts`` summed over the batches (keys of ``daq.trigger.COUNT_NAMES``).
    """

    mask: np.ndarray
    accept: np.ndarray
    e_ecal: np.ndarray
    e_prs: np.ndarray
    readout_t_ns: np.ndarray
    readout_mask: np.ndarray
    readout_index: np.ndarray
    readout_batch: np.ndarray
    counts: dict[str, int]

    @property
    def physics(self) -> np.ndarray:
        """Per particle: the physics trigger fired (before dead time)."""
        return (self.mask & PHYSICS) != 0

    def n(self, kind: str) -> int:
        """Accepted triggers of a kind: ``physics``, ``beam``, ``random`` or ``accepted``."""
        return int(self.counts["n_accepted" if kind == "accepted" else f"triggers_{kind}"])


def run_trigger(
    batches: Iterable[PrimitiveBatch | protocol.Slice],
    config: TriggerConfig | None = None,
    constants: ChannelConstants | None = None,
    prim_channels: np.ndarray | Sequence[int] | None = None,
) -> TriggerRun:
    """Run the live trigger (:class:`daq.trigger.Trigger`, state carried across batches, one spill) over
    ``batches``: :class:`daq.trigger.PrimitiveBatch` objects or decoded ``protocol.Slice`` messages."""
    trig = Trigger(config, constants, prim_channels)
    trig.new_spill()
    parts: list[Decisions] = []
    for b in batches:
        parts.append(trig.evaluate(b if isinstance(b, PrimitiveBatch) else PrimitiveBatch.from_slice(b)))
    counts = {k: sum(d.counts[k] for d in parts) for k in COUNT_NAMES}

    def cat(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([getattr(d, name) for d in parts]) if parts else np.zeros(0, dtype)

    return TriggerRun(
        mask=cat("mask", np.uint32),
        accept=cat("accept", bool),
        e_ecal=cat("e_ecal", np.float32),
        e_prs=cat("e_prs", np.float32),
        readout_t_ns=cat("t_ns", np.int64),
        readout_mask=cat("trigger_mask", np.uint32),
        readout_index=cat("index", np.uint32),
        readout_batch=np.concatenate([np.full(d.n_readout, i, np.int64) for i, d in enumerate(parts)])
        if parts
        else np.zeros(0, np.int64),
        counts=counts,
    )


# ---------------------------------------------------------------- recorded spills
@dataclass(frozen=True, eq=False)
class RecordedPrimitives:
    """What a spill file holds for trigger studies: the recorded events' primitives and decisions."""

    path: Path
    run: int
    spill: int
    prim_channels: np.ndarray  # (C,)
    amp: np.ndarray  # (C, E), zeros for random triggers
    t_ns: np.ndarray  # (E,)
    index: np.ndarray  # (E,), NO_PARTICLE for random triggers
    trigger_mask: np.ndarray  # (E,) recorded
    e_miss: np.ndarray  # (E,) GeV, reconstructed
    trigger: dict[str, Any]  # recorded trigger settings
    calibration_id: str

    @property
    def particles(self) -> np.ndarray:
        """Per event: a particle trigger (not a random window)."""
        return self.index != NO_PARTICLE

    @property
    def config(self) -> TriggerConfig:
        return trigger_config(self.trigger)

    def batch(self) -> PrimitiveBatch:
        """The recorded particles as one trigger batch (random windows left out), in time order."""
        sel = np.flatnonzero(self.particles)
        sel = sel[np.argsort(self.t_ns[sel], kind="stable")]
        return PrimitiveBatch(t_ns=self.t_ns[sel], amp=np.ascontiguousarray(self.amp[:, sel]))

    def retrigger(
        self, constants: ChannelConstants | None = None, beam_energy_gev: float = 100.0, **overrides: Any
    ) -> dict[str, Any]:
        """:func:`retrigger_arrays` of this spill with trigger ``overrides`` (e.g. ``ecal_max_gev=70``)."""
        return retrigger_arrays(
            amp=self.amp,
            prim_channels=self.prim_channels,
            index=self.index,
            trigger_mask=self.trigger_mask,
            e_miss=self.e_miss,
            recorded=self.config,
            new=trigger_config(self.trigger, overrides),
            constants=constants,
            beam_energy_gev=beam_energy_gev,
        )


def load_recorded(path: str | Path) -> RecordedPrimitives:
    """Read the trigger-relevant content of a spill file (through :mod:`daq.files`)."""
    from daq.files import SpillFile

    p = Path(path)
    with SpillFile(p) as f:
        ev = f.events(["index", "trigger_mask", "e_miss"])
        prim = f.primitives()
        return RecordedPrimitives(
            path=p,
            run=f.run,
            spill=f.spill,
            prim_channels=np.asarray(prim["channels"]),
            amp=prim["amp"],
            t_ns=prim["t_ns"],
            index=ev["index"],
            trigger_mask=ev["trigger_mask"],
            e_miss=ev["e_miss"],
            trigger=f.trigger_config,
            calibration_id=str(f.attrs.get("calibration_id", "")),
        )


# ---------------------------------------------------------------- one file (runs in a worker)
def retrigger_file(
    path: Path,
    overrides: Mapping[str, Any] | None = None,
    calibration: Sequence[str] = (),
    beam_energy_gev: float = 100.0,
) -> dict[str, Any]:
    """Re-evaluate one spill file with ``overrides`` (trigger keys); a row for the per-spill table."""
    rec = load_recorded(path)
    constants = _constants(calibration, rec.run)
    version = getattr(constants, "version", "nominal-v1")
    if rec.calibration_id and rec.calibration_id != version:
        log.warning(
            "%s was recorded with calibration %r, the trigger is re-evaluated with %r (give --calibration)",
            path.name,
            rec.calibration_id,
            version,
        )
    try:
        recorded = trigger_config(rec.trigger)
        new = trigger_config(rec.trigger, overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    out = retrigger_arrays(
        amp=rec.amp,
        prim_channels=rec.prim_channels,
        index=rec.index,
        trigger_mask=rec.trigger_mask,
        e_miss=rec.e_miss,
        recorded=recorded,
        new=new,
        constants=constants,
        beam_energy_gev=beam_energy_gev,
    )
    row = {
        k: out[k] for k in ("recorded", "new", "physics_kept", "physics_lost", "physics_gained", "mismatch")
    }
    out["spills"] = [{"file": path.name, "run": rec.run, "spill": rec.spill, **row}]
    return out


def _constants(paths: Sequence[str], run: int) -> Any:
    from calibration.constants import nominal, select

    return select(list(paths), run) if paths else nominal()


# ---------------------------------------------------------------- report
def format_table(total: Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """Per-spill and total table of a merged retrigger result."""
    settings = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(none: recorded settings)"
    head = (
        f"{'run':>6} {'spill':>5} {'events':>7} | {'physics':>7} {'->':>2} {'new':>6} {'lost':>5} "
        f"{'gained':>6} | {'beam':>6} {'->':>2} {'new':>6} | {'random':>6} | {'accepted':>8} {'->':>2} {'new':>8}"
    )
    lines = [f"trigger emulation with {settings}", head, "-" * len(head)]

    def row(label_run: str, label_spill: str, r: Mapping[str, Any]) -> str:
        o, n = r["recorded"], r["new"]
        return (
            f"{label_run:>6} {label_spill:>5} {o['accepted']:>7} | {o['physics']:>7} {'':>2} {n['physics']:>6} "
            f"{r['physics_lost']:>5} {r['physics_gained']:>6} | {o['beam']:>6} {'':>2} {n['beam']:>6} | "
            f"{o['random']:>6} | {o['accepted']:>8} {'':>2} {n['accepted']:>8}"
        )

    for r in sorted(total.get("spills", []), key=lambda r: (r["run"], r["spill"])):
        lines.append(row(str(r["run"]), str(r["spill"]), r))
    lines.append("-" * len(head))
    lines.append(row("total", "", total))
    o, n = total["recorded"], total["new"]
    frac = n["physics"] / o["physics"] if o["physics"] else float("nan")
    lines.append(
        f"physics triggers: {n['physics']} of {o['physics']} recorded kept or gained ({frac:.1%}); "
        f"{total['physics_lost']} lost, {total['physics_gained']} gained among recorded events; "
        f"~{total['physics_gained_estimate']} gained in the full beam (beam sample x prescale)"
    )
    h_old = total["hist"]["e_miss_recorded"][0]
    h_new = total["hist"]["e_miss_new"][0]
    edges = total["hist"]["e_miss_recorded"][1]
    lines.append("missing-energy spectrum of physics triggers (GeV): bin range, recorded -> new")
    step = max(1, len(h_old) // 14)
    for i in range(0, len(h_old), step):
        lo, hi = edges[i], edges[min(i + step, len(edges) - 1)]
        a, b = int(h_old[i : i + step].sum()), int(h_new[i : i + step].sum())
        if a or b:
            lines.append(f"  [{lo:7.1f}, {hi:7.1f})  {a:>8} -> {b:>8}")
    if total.get("mismatch"):
        lines.append(
            f"WARNING: {total['mismatch']} recorded events do not get their recorded condition bits back with the "
            "recorded settings (different calibration constants than at recording?)"
        )
    return "\n".join(lines)
