"""Compile (or load from numba's on-disk cache) every kernel of the DAQ, before it acknowledges a run.

A cold numba cache (the first start after an install, a cache directory that is not writable) costs
5-90 s of compilation. Paid inside the first RUN_START, it stopped the DAQ from reading its socket while
the front-end streamed (issue 16, finding 4); paid here, before the sockets are bound and before any
RUN_ACK, it only delays the start. Each kernel module exposes ``warm_up()``; a new kernel joins
:data:`KERNEL_MODULES` (one line).
"""

from __future__ import annotations

import importlib
import logging
import time

log = logging.getLogger(__name__)

#: the modules whose ``warm_up()`` the DAQ calls before it can acknowledge a run
KERNEL_MODULES: tuple[str, ...] = ("daq.trigger_kernel", "daq.pulse_fit")


def warm_up() -> float:
    """Compile or load every kernel now; returns the seconds it took (logged when slow: a cold cache)."""
    t0 = time.perf_counter()
    for name in KERNEL_MODULES:
        importlib.import_module(name).warm_up()
    seconds = time.perf_counter() - t0
    if seconds > 2.0:
        log.warning("compiling the DAQ's kernels took %.1f s (numba's cache was cold)", seconds)
    return seconds
