"""Blosc chunks compressed outside the GIL read back through HDF5's own blosc filter."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from daq.chunk_codec import BloscChunks, ParallelBloscChunks
from daq.writer import codec_options


@pytest.mark.parametrize("codec", ["blosc-lz4", "blosc-zstd"])
def test_direct_chunks_read_back_through_the_hdf5_filter(tmp_path: Path, codec: str) -> None:
    rng = np.random.default_rng(1)
    smooth = (200 + rng.normal(0, 2, (64, 110, 32))).astype(np.uint16)  # compressible
    noise = rng.integers(0, 65536, (64, 110, 32), dtype=np.uint16)  # incompressible: blosc stores it raw
    edge = smooth.copy()
    edge[10:] = 0  # a last, partial chunk is written whole (zero padded)
    packer = BloscChunks("lz4" if codec == "blosc-lz4" else "zstd", 5, 1)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(
            "w",
            shape=(138, 110, 32),
            maxshape=(None, 110, 32),
            dtype="<u2",
            chunks=(64, 110, 32),
            **codec_options(codec),
        )
        for i, chunk in enumerate((smooth, noise, edge)):
            ds.id.write_direct_chunk((64 * i, 0, 0), packer.compress(chunk))
    with h5py.File(path) as f:
        back = f["w"][:]
    assert np.array_equal(back[:64], smooth) and np.array_equal(back[64:128], noise)
    assert np.array_equal(back[128:], edge[:10])


def ticks_of_another_thread_during(call: Callable[[], object]) -> int:
    """How often another Python thread advanced while ``call`` ran. With a long switch interval the
    interpreter never takes the GIL from this thread by force: the counting thread only advances while
    this thread is outside Python, i.e. inside a GIL-free call."""
    ticks = [0]
    done = threading.Event()

    def count() -> None:
        while not done.is_set():
            ticks[0] += 1
            time.sleep(0)  # gives the GIL back at once when the main thread wants it

    interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    t = threading.Thread(target=count)
    try:
        t.start()
        time.sleep(0.05)
        start = ticks[0]
        call()
        return ticks[0] - start
    finally:
        done.set()
        t.join()
        sys.setswitchinterval(interval)


def test_compression_releases_the_gil() -> None:
    """Another Python thread runs during a compression call (the DAQ's receiver, while the writer packs)."""
    rng = np.random.default_rng(2)
    chunk = (200 + rng.normal(0, 3, (256, 110, 32))).astype(np.uint16)
    packer = BloscChunks("zstd", 9, 1)  # slow on purpose: the call takes tens of milliseconds
    moved = ticks_of_another_thread_during(lambda: packer.compress(chunk))
    assert moved > 10, f"the other thread advanced {moved} times during the call"


def test_rejects_non_contiguous_chunks() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        BloscChunks("lz4", 5, 1).compress(np.zeros((64, 110, 32), np.uint16)[:, ::2])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parallel_chunks_come_back_in_order(tmp_path: Path, workers: int) -> None:
    rng = np.random.default_rng(3)
    chunks = [(100 * i + rng.normal(0, 2, (64, 110, 32))).astype(np.uint16) for i in range(7)]
    packer = ParallelBloscChunks("lz4", 5, 1, workers)
    path = tmp_path / "p.h5"
    try:
        with h5py.File(path, "w") as f:
            ds = f.create_dataset(
                "w", shape=(7 * 64, 110, 32), dtype="<u2", chunks=(64, 110, 32), **codec_options("blosc-lz4")
            )
            for i, data in enumerate(packer.compress_each(chunks)):
                ds.id.write_direct_chunk((64 * i, 0, 0), data)
    finally:
        packer.close()
    with h5py.File(path) as f:
        assert np.array_equal(f["w"][:], np.concatenate(chunks))
