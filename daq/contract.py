"""The names shared by the DAQ, the DQM and the calibration, defined once (bottom layer: no project imports).

- trigger mask bits (``docs/architecture.md``): what a recorded event's ``trigger_mask`` means;
- loss reasons (``docs/daq.md``, "Losses"): the keys of ``/losses`` in a spill file, of ``losses`` in the
  spill summary and of ``losses_run`` in the status;
- the spill status and the DAQ state written into the summary and status documents (:mod:`daq.summary`);
- :class:`ChannelConstants`: what the DAQ needs of a calibration set (``calibration.constants.Constants``
  has it).

A copy of any of these in another package is a bug waiting for a rename: import them from here.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Final, Protocol

import numpy as np

# ---------------------------------------------------------------- trigger mask bits
#: S_phys = S_trig x S_PRS x S_EC accepted this particle
PHYSICS: Final = 1 << 0
#: prescaled S_trig (every Nth S_trig particle)
BEAM: Final = 1 << 1
#: periodic random trigger (pedestals)
RANDOM: Final = 1 << 2
#: condition S0 x S2 x S3 x not V1 x not V2 true
S_TRIG: Final = 1 << 8
#: condition E_PRS(block) > threshold true
S_PRS: Final = 1 << 9
#: condition E_ECAL(block) < threshold true
S_EC: Final = 1 << 10
#: bit -> name, for display
BIT_NAMES: Final[dict[int, str]] = {
    PHYSICS: "PHYSICS",
    BEAM: "BEAM",
    RANDOM: "RANDOM",
    S_TRIG: "S_TRIG",
    S_PRS: "S_PRS",
    S_EC: "S_EC",
}


def mask_names(mask: int) -> list[str]:
    """Names of the bits set in a trigger mask, e.g. ``['PHYSICS', 'S_TRIG', 'S_PRS', 'S_EC']``."""
    return [name for bit, name in BIT_NAMES.items() if mask & bit]


# ---------------------------------------------------------------- losses
class LossReason(StrEnum):
    """Why something was lost (the table in docs/daq.md says what each one counts).

    ``decode_error.<kind>`` keys (:func:`decode_error_kind`) break ``decode_error`` down by ProtocolError
    kind; they are not separate losses.
    """

    SEQUENCE_GAP = "sequence_gap"
    DUPLICATE = "duplicate"
    DECODE_ERROR = "decode_error"
    UNEXPECTED_MESSAGE = "unexpected_message"
    RUN_REJECTED = "run_rejected"
    FRAGMENT_TIMEOUT = "fragment_timeout"
    EMPTY_FRAGMENT = "empty_fragment"
    TRUNCATED_FRAGMENT = "truncated_fragment"
    UNEXPECTED_FRAGMENT = "unexpected_fragment"
    REQUEST_FAILED = "request_failed"
    SPILL_COUNTER_MISMATCH = "spill_counter_mismatch"
    SPILL_END_MISSING = "spill_end_missing"
    FRONTEND_RESTART = "frontend_restart"
    INTERNAL_ERROR = "internal_error"
    DEAD_TIME = "dead_time"
    WRITE_ERROR = "write_error"
    MONITOR_SKIPPED = "monitor_skipped"
    RUN_UNKNOWN = "run_unknown"
    SPILL_CUT_SHORT = "spill_cut_short"
    DAQ_CRASH = "daq_crash"


#: every loss reason, in the order of the docs
LOSS_REASONS: Final[tuple[str, ...]] = tuple(r.value for r in LossReason)
#: reasons that do not mean recorded data is missing (the spill stays "ok")
NOT_DATA_LOSS: Final = frozenset(
    {LossReason.DEAD_TIME, LossReason.MONITOR_SKIPPED, LossReason.FRONTEND_RESTART}
)


def decode_error_kind(kind: str) -> str:
    """The sub-key of ``decode_error`` for one kind of malformed message, e.g. ``decode_error.checksum``."""
    return f"{LossReason.DECODE_ERROR.value}.{kind}"


def is_breakdown(key: str) -> bool:
    """Whether a loss key breaks a reason down (``decode_error.<kind>``) rather than being a loss itself."""
    return "." in key


class Losses(Counter[str]):
    """Counts by loss reason; ``as_dict()`` lists every known reason (zeros included), plain ``str`` keys."""

    def as_dict(self) -> dict[str, int]:
        out = {r: int(self.get(r, 0)) for r in LOSS_REASONS}
        out.update({str(k): int(v) for k, v in self.items() if k not in out})
        return dict(sorted(out.items()))

    def data_lost(self) -> bool:
        """Whether any count means recorded data is missing."""
        return any(v for k, v in self.items() if k not in NOT_DATA_LOSS and not is_breakdown(k))


# ---------------------------------------------------------------- documents' enumerations
class SpillStatus(StrEnum):
    """``status`` of a spill file and its summary (docs/daq.md)."""

    OK = "ok"  # nothing recorded was lost
    INCOMPLETE = "incomplete"  # data lost, or the spill was cut short
    RECOVERED = "recovered"  # the DAQ stopped without closing the file (crash): what was on disk is saved
    FAILED = "failed"  # no file (not recorded, or the file could not be written)


class DaqState(StrEnum):
    """``state`` of the DAQ's status document."""

    IDLE = "idle"
    RUNNING = "running"  # a run, between spills
    IN_SPILL = "in_spill"


#: the counters a front-end reports in SPILL_END that the DAQ compares with its own
FRONTEND_COUNTERS: Final = ("n_slices", "n_requests", "n_fragments", "n_events_read", "n_particles")


# ---------------------------------------------------------------- calibration, as the DAQ sees it
class ChannelConstants(Protocol):
    """The per-channel constants the trigger and the event builder use (arrays indexed by channel id).

    ``calibration.constants.Constants`` is one; tests may pass anything with these attributes.
    """

    @property
    def version(self) -> str: ...
    @property
    def gain(self) -> np.ndarray: ...  # ADC counts per MeV
    @property
    def noise(self) -> np.ndarray: ...  # ADC counts
    @property
    def time_offset_ns(self) -> np.ndarray: ...
    @property
    def status(self) -> np.ndarray: ...  # 0 good, 1 dead, 2 hot, 3 noisy
    @property
    def ecal_scale(self) -> float: ...
