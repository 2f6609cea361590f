"""The NA64 front-end simulator: beam, detector response, electronics, and the front-end side of the
wire protocol (``na64 simulate``). Imports only the bottom layer (``daq.detector``, ``daq.protocol``,
``daq.config_loader``, ``daq.errors``).

Modules: :mod:`~simulator.config` (settings), :mod:`~simulator.physics` (the model: :mod:`~simulator.beam`,
:mod:`~simulator.rare` processes, :mod:`~simulator.response` of the detector, :mod:`~simulator.particles`),
:mod:`~simulator.showers` (lateral templates), :mod:`~simulator.zprime` (signal physics),
:mod:`~simulator.electronics` (gains, pedestals, pulses, digitisation), :mod:`~simulator.faults`,
:mod:`~simulator.frontend` (slices, latency buffer, readout), :mod:`~simulator.service` (ZeroMQ, pacing),
:mod:`~simulator.truth` (HDF5 truth file), :mod:`~simulator.simulate_cli` (``na64 simulate``).
"""

import daq

__version__ = daq.__version__
__all__ = ["__version__"]
