"""Process-wide resources of the long-running services (DAQ, replay, DQM): memory allocator and garbage
collector tuning (once at start-up, after the big imports and kernel loads), and the orderly end of a
front-end's ZeroMQ context."""

from __future__ import annotations

import ctypes
import gc
import sys
import time
from typing import Any

#: first-generation threshold of the cyclic garbage collector while a service runs (Python's default: 700)
GC_GEN0_THRESHOLD = 20_000


def tune_malloc() -> None:
    """Keep freed large numpy buffers in the heap instead of returning them to the OS after every slice
    (glibc would otherwise mmap/munmap each >128 kB temporary: page faults cost ~30% of the trigger)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 512 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def tune_gc() -> None:
    """Move everything allocated so far (modules, numba's type registries, tables: ~10^6 objects) out of
    the collector's reach and collect the young generation less often.

    A service allocates a few dozen short-lived objects per message; with the default thresholds every
    full collection walked the whole start-up heap again (~5-8% of the DAQ's CPU under load).
    Reference cycles made later are still collected.
    """
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, g1, g2)


def term_context(ctx: Any, linger_s: float) -> bool:
    """Terminate a front-end's ZeroMQ context (its sockets closed with ``LINGER`` = ``linger_s``): returns
    once every queued message is sent, or after ``linger_s`` with the rest dropped (then True).

    A process must not simply exit with messages queued: pyzmq's exit handler drops its references to
    zero-copy buffers that ZeroMQ may still be sending (freed memory on the wire), and a context never
    terminated does not honour ``LINGER`` at all."""
    t = time.monotonic()
    ctx.term()
    return time.monotonic() - t >= 0.95 * linger_s
