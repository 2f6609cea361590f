"""``python -m daq`` is the same as the ``na64`` command."""

import sys

from daq.cli import main

sys.exit(main())
