"""python -m downstream.reporting: the same command line as scripts/make_table.py."""

import sys

from downstream.reporting.cli import main

sys.exit(main())
