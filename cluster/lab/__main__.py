"""Entry point: `python -m cluster.lab COMMAND` (see cluster/lab/cli.py)."""

from __future__ import annotations

import sys

from cluster.lab.cli import main

sys.exit(main())
