"""Result tables and plots from sweep directories: the command line of downstream/reporting.

    python scripts/make_table.py multirun/table2 --format markdown --plots multirun/table2/plots

``python scripts/make_table.py --help`` describes the table; ``python -m downstream.reporting`` is the same.
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parent.parent)
)  # run as a file: find the repository's packages

from downstream.reporting.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
