"""The optional parts of na64daq (pip extras) and the one line that says which to install.

A DAQ node installs ``na64daq`` alone: the readout, simulator, replay, calibration and ``inspect``.
``na64daq[dqm]`` adds the monitoring page (Bokeh), its histograms and MQTT alarms; ``na64daq[offline]``
adds dask for ``na64 retrigger`` and parallel offline runs; ``na64daq[all]`` both.
"""

from __future__ import annotations

import importlib.util
import sys

from daq.errors import UserError

#: extra -> the top-level modules it brings
EXTRAS: dict[str, tuple[str, ...]] = {
    "dqm": ("bokeh", "boost_histogram", "aiomqtt"),
    "offline": ("dask", "distributed", "bokeh"),
}


def missing(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of ``extra`` (or just ``modules`` of it) that cannot be imported here (not imported)."""
    out = []
    for name in modules or EXTRAS[extra]:
        if name in sys.modules:
            if sys.modules[name] is None:
                out.append(name)
            continue
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(name)
    return out


def require(extra: str, what: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`UserError` (one line, exit 2) if ``extra`` is not installed; ``what`` names the
    command or option that needs it."""
    gone = missing(extra, modules)
    if gone:
        raise UserError(
            f"{what} needs the '{extra}' extra ({', '.join(gone)} not installed): "
            f"pip install 'na64daq[{extra}]'"
        )
