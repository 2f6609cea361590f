"""Blosc compression of whole HDF5 chunks outside the GIL, for ``write_direct_chunk``.

h5py holds the GIL while HDF5 runs its filters, so a writer thread compressing through h5py stops the
DAQ's receiving thread for as long as the compression takes (~0.2 s per full-intensity spill). This
module calls the blosc library that ``hdf5plugin`` ships (the same library the HDF5 blosc filter uses to
read the chunks back) through ctypes, which releases the GIL during the call. A chunk compressed here is
a standard blosc buffer: readers decode it with the dataset's blosc filter like any other chunk.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

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
            import hdf5plugin

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
        _LIB = lib
    return _LIB


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
