"""na64daq readout: detector model, wire protocol, trigger, event building and HDF5 spill files.

The bottom layer (imported by every package): :mod:`daq.detector`, :mod:`daq.protocol`,
:mod:`daq.errors`, :mod:`daq.config_loader`. Keep this ``__init__`` free of imports so that importing the
detector model stays cheap.
"""

__version__ = "0.1.0"
