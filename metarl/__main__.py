"""``python -m metarl``: the ``metarl`` command (see :mod:`metarl.cli`)."""

import sys

from metarl.cli import main

sys.exit(main())
