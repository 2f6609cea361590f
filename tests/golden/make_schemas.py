"""Write the JSON schemas of the DAQ's documents into docs/schemas/ (generated from daq.summary).

Run it after changing a document class, on purpose: ``python tests/golden/make_schemas.py``.
``tests/daq/test_summary.py`` fails while the committed schemas differ from the classes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from daq.summary import DaqStatus, SpillSummary, json_schema  # noqa: E402

SCHEMA_DIR = ROOT / "docs" / "schemas"
SCHEMAS = {"spill-summary.schema.json": SpillSummary, "daq-status.schema.json": DaqStatus}


def render(cls: type[SpillSummary] | type[DaqStatus]) -> str:
    return json.dumps(json_schema(cls), indent=2) + "\n"


def main() -> None:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for name, cls in SCHEMAS.items():
        (SCHEMA_DIR / name).write_text(render(cls))
        print(f"wrote {SCHEMA_DIR / name}")


if __name__ == "__main__":
    main()
