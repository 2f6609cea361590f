"""Logging set-up of the ``na64`` commands (only the CLI configures logging; modules just log).

Every line carries an ISO 8601 timestamp with the date and the UTC offset of the machine's zone
(``2026-12-06T13:05:02.117+01:00``), the level, the logger and the message. ``json`` writes one JSON
object per line instead (``time``, ``level``, ``logger``, ``message``, ``process``, and ``exception``
with the traceback when there is one) for journald/Loki/Elasticsearch. Tornado's per-request access
lines (the DQM page's HTTP requests) are shown only at DEBUG.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")


def iso_time(created: float) -> str:
    """``created`` (a log record's time) as local ISO 8601 with milliseconds and UTC offset."""
    return dt.datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return iso_time(record.created)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": iso_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.processName if record.processName != "MainProcess" else None,
            "pid": record.process,
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in doc.items() if v is not None}, ensure_ascii=False)


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Send every logger's records at ``level`` and above to stderr as ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level))
    # one line per HTTP request of the DQM page (every Bokeh websocket and resource): debugging only
    logging.getLogger("tornado.access").setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
