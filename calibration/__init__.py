"""Calibration of na64daq: versioned per-channel constants, their derivation from spill files, monitoring.

Pure core (numpy, ``daq.detector``, ``daq.errors``; no I/O but the constants file): :mod:`.constants`,
:mod:`.config`, :mod:`.fitting`, :mod:`.pedestals`, :mod:`.gains`, :mod:`.spectra`, :mod:`.timing`,
:mod:`.monitoring`. Shell: :mod:`.calibrate_cli` (``na64 calibrate``, reads spill files via ``daq.files``).
See docs/calibration.md.
"""
