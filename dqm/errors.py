"""Errors of the DQM.

Na64Error
├── UserError
│   └── DqmUserError          bad DQM input from a person: reference file, endpoint, option
└── DqmError                  a run-time failure of the DQM service
"""

from __future__ import annotations

from daq.errors import Na64Error, UserError


class DqmError(Na64Error):
    """A run-time failure of the DQM (server, source, publisher)."""


class DqmUserError(UserError):
    """A user mistake given to the DQM: bad reference file, endpoint, MQTT URL, cell name, ..."""
