"""``SpillFile.read_waveforms_into`` against h5py's own read, byte for byte, on real spill files.

Files with the DAQ's blosc codecs take the direct chunk path (stored chunks read and decoded by blosc
straight into the caller's rows); the other codecs, and anything unusual, go through h5py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (the blosc/lz4 filters for the reference reads)
import numpy as np
import pytest

from daq import detector
from daq.batch import EventBatch
from daq.chunk_codec import BloscChunks, decompress_into
from daq.files import SpillFile, spill_filename
from daq.writer import SpillWriter, WriterConfig
from daq.writer_commands import SpillFinal, SpillHeader
from tests.daq.test_chunk_codec import ticks_of_another_thread_during

N_EVENTS = 1000  # 15 whole chunks of 64 events and a last one of 40
CHUNK = 64
BLOSC = ("blosc-lz4", "blosc-zstd")


def _waveforms(n: int, seed: int = 0) -> np.ndarray:
    """Pedestal-like (compressible) events with a stretch of random (incompressible) ones."""
    rng = np.random.default_rng(seed)
    wf = (200 + rng.normal(0, 3, (n, detector.N_CHANNELS, detector.N_SAMPLES))).astype(np.uint16)
    noisy = wf[100:300]
    noisy[...] = rng.integers(0, 65536, noisy.shape, dtype=np.uint16)
    wf += np.arange(n, dtype=np.uint16)[:, None, None]  # every event distinct
    return wf


def write_spill(data_dir: Path, codec: str, n: int = N_EVENTS, seed: int = 0) -> tuple[Path, np.ndarray]:
    """A spill file of ``n`` events written by the DAQ's writer with ``codec``; its waveforms."""
    wf = _waveforms(n, seed)
    e = n
    zeros = np.zeros((e, detector.N_CHANNELS), np.float32)
    prim = detector.default_primitive_channels()
    batch = EventBatch(
        event_id=np.arange(e, dtype=np.uint64),
        slice=np.zeros(e, np.uint32),
        index=np.arange(e, dtype=np.uint32),
        t_ns=np.arange(e, dtype=np.int64),
        trigger_mask=np.ones(e, np.uint32),
        missing_groups=np.zeros(e, np.uint8),
        sums=np.zeros((6, e), np.float32),
        energy=zeros,
        amplitude=zeros,
        peak_time=zeros,
        pileup=np.zeros(zeros.shape, bool),
        waveforms=wf,
        prim_amp=np.zeros((len(prim), e), np.uint16),
        **EventBatch.without_fit(e, len(prim)),
    )
    header = SpillHeader(
        run=1,
        spill=1,
        t_start_ns=0,
        config={},
        trigger={},
        frontend_info=json.dumps({"name": "test"}),
        prim_channels=prim,
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    w = SpillWriter(data_dir, header, WriterConfig(compression=codec, chunk_events=CHUNK, fsync=False))
    w.append(batch)
    w.close(SpillFinal(counters={"n_slices": 1}))
    return data_dir / spill_filename(1, 1), wf


def _h5py_read(path: Path, a: int, b: int) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return np.asarray(f["waveforms"][a:b])


RANGES = [
    (5, 30),  # inside one chunk
    (0, CHUNK),  # one whole chunk
    (CHUNK, 3 * CHUNK),  # whole chunks
    (50, 200),  # across chunks, starting and ending mid-chunk
    (63, 65),  # two rows, two chunks
    (N_EVENTS - 50, N_EVENTS),  # the dataset's last, partial chunk
    (N_EVENTS - 1, N_EVENTS),
    (15 * CHUNK, N_EVENTS),  # exactly the last chunk
    (0, N_EVENTS),  # the whole dataset
    (7, 7),  # nothing
]


@pytest.mark.parametrize("codec", [*BLOSC, "none", "gzip", "lz4"])
def test_read_waveforms_into_equals_h5py(tmp_path: Path, codec: str) -> None:
    path, wf = write_spill(tmp_path, codec)
    with SpillFile(path) as f:
        for a, b in RANGES:
            out = np.full((b - a, detector.N_CHANNELS, detector.N_SAMPLES), 0xABCD, np.uint16)
            f.read_waveforms_into(out, a)
            ref = _h5py_read(path, a, b)
            assert out.tobytes() == ref.tobytes(), (codec, a, b)
            assert np.array_equal(out, wf[a:b])
        assert (f._wf_direct is not None) == (codec in BLOSC)  # the path under test is the one taken


def test_reused_buffer_read_in_walking_blocks(tmp_path: Path) -> None:
    """Blocks of 128 events walked in order through one reused buffer, like the replay's read-ahead."""
    path, wf = write_spill(tmp_path, "blosc-lz4")
    buf = np.empty((128, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
    with SpillFile(path) as f:
        for a in range(0, N_EVENTS, 128):
            k = min(128, N_EVENTS - a)
            f.read_waveforms_into(buf[:k], a)
            assert np.array_equal(buf[:k], wf[a : a + k])


def test_unfiltered_and_unallocated_chunks(tmp_path: Path) -> None:
    """A chunk stored without its filter (filter mask set) is read as is; chunks never written read as
    the fill value (0), as with h5py."""
    path, wf = write_spill(tmp_path, "blosc-lz4")
    raw = np.ascontiguousarray(wf[2 * CHUNK : 3 * CHUNK] ^ 0x5A5A)
    with h5py.File(path, "r+") as h:
        ds = h["waveforms"]
        ds.id.write_direct_chunk((2 * CHUNK, 0, 0), raw.tobytes(), filter_mask=1)
        # rows 1000..1191 (every dataset, so that the file stays consistent): chunk 15's tail and 2
        # unallocated chunks of waveforms
        n = N_EVENTS + 3 * CHUNK
        for name in (
            "waveforms",
            "primitives/t_ns",
            *(f"events/{c}" for c in h["events"]),
            *(f"reco/{r}" for r in h["reco"]),
            *(f"neighbours/{r}" for r in h["neighbours"]),
        ):
            h[name].resize(n, axis=0)
        h["primitives/amp"].resize(n, axis=1)
    with SpillFile(path) as f:
        for a, b in [(2 * CHUNK, 3 * CHUNK), (100, 300), (0, N_EVENTS), (900, N_EVENTS + 3 * CHUNK)]:
            out = np.empty((b - a, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
            f.read_waveforms_into(out, a)
            assert out.tobytes() == _h5py_read(path, a, b).tobytes(), (a, b)
        out = np.empty((CHUNK, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        f.read_waveforms_into(out, 2 * CHUNK)
        assert np.array_equal(out, raw)
        f.read_waveforms_into(out, N_EVENTS + 2 * CHUNK)
        assert not out.any()


def _chunk_offset(path: Path, index: int) -> tuple[int, int]:
    with h5py.File(path, "r") as h:
        info = h["waveforms"].id.get_chunk_info(index)
    return int(info.byte_offset), int(info.size)


@pytest.mark.parametrize(
    "where",
    [
        4,  # the header's decoded size
        12,  # the header's stored size
        16,  # the first block's start offset
        17,
    ],
)
def test_damaged_chunk_raises(tmp_path: Path, where: int) -> None:
    path, wf = write_spill(tmp_path / "good", "blosc-zstd")
    bad = tmp_path / "bad" / path.name
    bad.parent.mkdir()
    shutil.copy(path, bad)
    offset, _ = _chunk_offset(bad, 8)  # events 512..575, compressed (not stored raw by blosc)
    with open(bad, "r+b") as fh:
        fh.seek(offset + where)
        byte = fh.read(1)[0]
        fh.seek(offset + where)
        fh.write(bytes([byte ^ 0xFF]))
    with SpillFile(bad) as f:
        out = np.empty((100, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        with pytest.raises((OSError, ValueError)):
            f.read_waveforms_into(out, 500)  # across the damaged chunk
        with pytest.raises((OSError, ValueError)):
            f.read_waveforms_into(out[:CHUNK], 8 * CHUNK)  # exactly it, decoded in place
        f.read_waveforms_into(out, 0)  # the chunks before it are fine
        assert np.array_equal(out, wf[:100])


def test_truncated_file_raises(tmp_path: Path) -> None:
    path, _ = write_spill(tmp_path / "good", "blosc-lz4")
    bad = tmp_path / "bad" / path.name
    bad.parent.mkdir()
    shutil.copy(path, bad)
    offset, size = _chunk_offset(bad, 5)
    with SpillFile(bad) as f:
        with open(bad, "r+b") as fh:  # cut the file inside chunk 5 after it was opened
            fh.truncate(offset + size // 2)
        out = np.empty((CHUNK, detector.N_CHANNELS, detector.N_SAMPLES), np.uint16)
        with pytest.raises((OSError, ValueError)):
            f.read_waveforms_into(out, 5 * CHUNK)


def test_decompress_into_checks_sizes() -> None:
    chunk = _waveforms(CHUNK)
    packed = np.frombuffer(bytes(BloscChunks("lz4", 5, 1).compress(chunk)), np.uint8)
    out = np.empty_like(chunk)
    decompress_into(packed, out)
    assert np.array_equal(out, chunk)
    with pytest.raises(ValueError, match="expected"):
        decompress_into(packed, out[:-1])  # decodes to more than the destination
    with pytest.raises(ValueError, match="valid"):
        decompress_into(packed[:-1], out)  # not the whole stored chunk
    with pytest.raises(ValueError, match="valid"):
        decompress_into(packed[:8], out)
    with pytest.raises(ValueError, match="contiguous"):
        decompress_into(packed, out[:, ::2])


def test_decompression_releases_the_gil() -> None:
    """Another Python thread runs during the decompression calls (see the compression's GIL test)."""
    chunk = (200 + np.random.default_rng(2).normal(0, 3, (512, 110, 32))).astype(np.uint16)
    packed = np.frombuffer(bytes(BloscChunks("zstd", 5, 1).compress(chunk)), np.uint8)
    out = np.empty_like(chunk)

    def decode() -> None:
        for _ in range(20):
            decompress_into(packed, out)

    moved = ticks_of_another_thread_during(decode)
    assert np.array_equal(out, chunk)
    assert moved > 10, f"the other thread advanced {moved} times during the calls"
