"""Exception tree of na64daq. Every package's errors derive from :class:`Na64Error`.

    Na64Error
    ├── UserError                 bad input from a person: config, CLI value, file (one clear line, exit 2)
    │   └── ConfigError           a config key is missing, unknown or out of range (names the key path)
    ├── ProtocolError             a wire message is malformed (daq.protocol defines the subclasses)
    └── DaqError                  a runtime failure of the readout (I/O, disk full, ...)
        └── WriteError            a spill file could not be written

Other packages add their own bases (``SimulatorError``, ``DqmError``, ``CalibrationError``) under
``Na64Error``; user mistakes among them derive from :class:`UserError` too.
"""

from __future__ import annotations


class Na64Error(Exception):
    """Base of all na64daq errors."""


class UserError(Na64Error):
    """A user mistake (bad config, argument or input file): reported as one line, no traceback."""


class ConfigError(UserError):
    """A configuration value is missing, unknown or invalid; the message names the key path."""


class ProtocolError(Na64Error):
    """A wire message is malformed; subclasses in :mod:`daq.protocol` say how."""


class DaqError(Na64Error):
    """A failure of the readout at run time."""


class WriteError(DaqError):
    """A spill file could not be written (disk full, I/O error)."""
