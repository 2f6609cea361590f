"""Compression (and blosc decompression) of whole HDF5 chunks outside the GIL, for ``write_direct_chunk``
(and the replay's direct chunk reads): blosc for the waveforms, HDF5's own shuffle + deflate
(:class:`ShuffleDeflateChunks`) or no filter at all (:class:`RawChunks`) for the datasets every HDF5
build must read.

h5py holds the GIL while HDF5 runs its filters, so a writer thread compressing through h5py stops the
DAQ's receiving thread for as long as the compression takes (~0.2 s per full-intensity spill). This
module calls the blosc library that ``hdf5plugin`` ships (the same library the HDF5 blosc filter uses to
read the chunks back) through ctypes, which releases the GIL during the call. A chunk compressed here is
a standard blosc buffer: readers decode it with the dataset's blosc filter like any other chunk.

:func:`decompress_into` is the other way: a stored blosc chunk decoded by the same library straight
into the caller's buffer (no HDF5 chunk buffer in between), validated first so that a damaged chunk
raises ``ValueError`` instead of being read past its end.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: bytes blosc may add to an incompressible buffer (BLOSC_MAX_OVERHEAD)
MAX_OVERHEAD = 16


class BloscUnavailable(RuntimeError):
    """The blosc library of hdf5plugin cannot be loaded (the writer then compresses through h5py)."""


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        try:
            from daq import h5filters

            hdf5plugin = h5filters.load()

            lib = ctypes.CDLL(str(Path(hdf5plugin.PLUGIN_PATH) / "libh5blosc.so"))
            fn = lib.blosc_compress_ctx
        except (ImportError, OSError, AttributeError) as e:
            raise BloscUnavailable(f"blosc library of hdf5plugin not usable: {e}") from None
        fn.restype = ctypes.c_int
        fn.argtypes = [
            ctypes.c_int,  # clevel
            ctypes.c_int,  # doshuffle
            ctypes.c_size_t,  # typesize
            ctypes.c_size_t,  # nbytes
            ctypes.c_void_p,  # src
            ctypes.c_void_p,  # dest
            ctypes.c_size_t,  # destsize
            ctypes.c_char_p,  # compressor
            ctypes.c_size_t,  # blocksize (0: automatic)
            ctypes.c_int,  # numinternalthreads
        ]
        dec = lib.blosc_decompress_ctx
        dec.restype = ctypes.c_int
        dec.argtypes = [
            ctypes.c_void_p,  # src
            ctypes.c_void_p,  # dest
            ctypes.c_size_t,  # destsize
            ctypes.c_int,  # numinternalthreads
        ]
        val = lib.blosc_cbuffer_validate
        val.restype = ctypes.c_int
        val.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
        _LIB = lib
    return _LIB


def blosc_available() -> bool:
    """Whether the blosc library of hdf5plugin can be used here."""
    try:
        _lib()
    except BloscUnavailable:
        return False
    return True


def decompress_into(src: np.ndarray, dest: np.ndarray) -> None:
    """Decode the blosc buffer ``src`` (1-D uint8, exactly one stored chunk) into ``dest`` (C-contiguous,
    exactly the chunk's decoded size), outside the GIL.

    Raises ``ValueError`` if ``src`` is not a valid blosc buffer of its length, decodes to another size
    than ``dest``, or fails to decode (a damaged chunk).
    """
    if not dest.flags.c_contiguous or not dest.flags.writeable:
        raise ValueError("dest must be a writeable C-contiguous array")
    if not src.flags.c_contiguous:
        raise ValueError("src must be C-contiguous")
    lib = _lib()
    nbytes = ctypes.c_size_t(0)
    cbytes = src.nbytes
    # header sane and claiming exactly cbytes: blosc then checks every block offset against cbytes
    if cbytes < MAX_OVERHEAD or lib.blosc_cbuffer_validate(src.ctypes.data, cbytes, ctypes.byref(nbytes)) < 0:
        raise ValueError(f"not a valid blosc chunk of {cbytes} bytes")
    if nbytes.value != dest.nbytes:
        raise ValueError(f"blosc chunk decodes to {nbytes.value} bytes, expected {dest.nbytes}")
    n = lib.blosc_decompress_ctx(src.ctypes.data, dest.ctypes.data, dest.nbytes, 1)
    if n != dest.nbytes:
        raise ValueError(f"blosc chunk of {cbytes} bytes does not decode ({n})")


class BloscChunks:
    """Compresses C-contiguous chunk arrays into blosc buffers (one reused output buffer)."""

    def __init__(self, cname: str, clevel: int, shuffle: int) -> None:
        self._fn = _lib().blosc_compress_ctx
        self.cname = cname.encode()
        self.clevel = clevel
        self.shuffle = shuffle
        self._out = np.empty(0, np.uint8)

    def compress(self, chunk: np.ndarray) -> memoryview:
        """The blosc buffer of ``chunk`` (valid until the next call)."""
        if not chunk.flags.c_contiguous:
            raise ValueError("chunk must be C-contiguous")
        nbytes = chunk.nbytes
        if self._out.size < nbytes + MAX_OVERHEAD:
            self._out = np.empty(nbytes + MAX_OVERHEAD, np.uint8)
        n = self._fn(
            self.clevel,
            self.shuffle,
            chunk.dtype.itemsize,
            nbytes,
            chunk.ctypes.data,
            self._out.ctypes.data,
            self._out.size,
            self.cname,
            0,
            1,
        )
        if n <= 0:
            raise RuntimeError(f"blosc_compress_ctx failed ({n}) on a chunk of {nbytes} bytes")
        return self._out.data[:n]


class ShuffleDeflateChunks:
    """Chunks as HDF5's shuffle filter (id 2) followed by its deflate filter (id 1) store them: the bytes
    of each element regrouped by significance, then a zlib stream. Deflate is compiled into every HDF5
    library, so no plugin is needed to read them. Compressed by ISA-L (``isal``, already the CRC-32 of the
    wire protocol), which releases the GIL and is ~5x faster than zlib at the same ratio."""

    def __init__(self, level: int = 1) -> None:
        from isal import isal_zlib

        if not 0 <= level <= 3:
            raise ValueError(f"ISA-L deflate levels are 0..3 (got {level})")
        self._compress = isal_zlib.compress
        self.level = level
        self._shuffled = np.empty(0, np.uint8)

    def compress(self, chunk: np.ndarray) -> bytes:
        if not chunk.flags.c_contiguous:
            raise ValueError("chunk must be C-contiguous")
        size = chunk.dtype.itemsize
        raw = chunk.reshape(-1).view(np.uint8)
        if size > 1:
            if self._shuffled.size < raw.size:
                self._shuffled = np.empty(raw.size, np.uint8)
            out = self._shuffled[: raw.size]
            out.reshape(size, -1)[...] = raw.reshape(-1, size).T
            raw = out
        return bytes(self._compress(raw, self.level))


class RawChunks:
    """Chunks of a dataset without filters: stored as they are."""

    def compress(self, chunk: np.ndarray) -> memoryview:
        if not chunk.flags.c_contiguous:
            raise ValueError("chunk must be C-contiguous")
        return chunk.reshape(-1).view(np.uint8).data


class ParallelChunks:
    """Compresses a sequence of chunks on ``workers`` threads (this one and ``workers - 1`` helpers),
    a group of ``workers`` chunks at a time, and hands them back in order.

    The compressors run without the GIL, so the chunks of a group are compressed at the same time: the
    writer thread's wall time per block shrinks while its CPU stays the same. ``make`` builds one
    compressor per thread (an object with ``compress(chunk)``).
    """

    def __init__(self, make: Callable[[], Any], workers: int = 2) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1 (got {workers})")
        self._packers = [make() for _ in range(workers)]
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=workers - 1, thread_name_prefix="na64-blosc")
            if workers > 1
            else None
        )

    def compress_each(self, chunks: Sequence[np.ndarray]) -> Iterator[memoryview | bytes]:
        """The compressed buffers of ``chunks`` in order; each is valid until the next group is compressed
        (write it before taking the item after the group's last)."""
        w = len(self._packers)
        for i in range(0, len(chunks), w):
            group = chunks[i : i + w]
            pending = []
            if self._pool is not None:
                pending = [
                    self._pool.submit(p.compress, c)
                    for p, c in zip(self._packers[1:], group[1:], strict=False)
                ]
            yield self._packers[0].compress(group[0])
            for f in pending:
                yield f.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)


class ParallelBloscChunks(ParallelChunks):
    """:class:`ParallelChunks` of :class:`BloscChunks`."""

    def __init__(self, cname: str, clevel: int, shuffle: int, workers: int = 2) -> None:
        _lib()  # BloscUnavailable now, not in a helper thread
        super().__init__(lambda: BloscChunks(cname, clevel, shuffle), workers)
