"""Load the HDF5 compression filters the spill files use (``hdf5plugin``), whatever ``HDF5_PLUGIN_PATH`` says.

With ``HDF5_PLUGIN_PATH`` pointing at hdf5plugin's directory (as docs/hdf5-format.md suggests for
h5dump), importing hdf5plugin made HDF5 dlopen the plugin libraries from that path first, linked to
another copy of the HDF5 library: every dataset created with blosc then failed ("error during user
callback") and every spill was lost (issue 16, finding 5). :func:`load` imports hdf5plugin with HDF5's
plugin search path emptied (so its own filters are the ones registered) and restores the path after,
for other plugins.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_module: Any = None


def load() -> Any:
    """The ``hdf5plugin`` module, its filters registered with the HDF5 library h5py uses."""
    global _module
    with _lock:
        if _module is None:
            from h5py import h5pl

            saved = [h5pl.get(i) for i in range(h5pl.size())]
            for _ in saved:
                h5pl.remove(0)
            try:
                import hdf5plugin

                _module = hdf5plugin
            finally:
                for path in saved:
                    h5pl.append(path)
        return _module
