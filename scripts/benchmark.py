"""Benchmarks: measured speeds go to docs/benchmarks.md (with device and date), never into tests.

python scripts/benchmark.py interfaces [--device cpu]   # forward+backward time of every interface
python scripts/benchmark.py data                        # decoding + batching speed on the mini corpus
python scripts/benchmark.py step [overrides ...]        # upstream forward vs full training step
python scripts/benchmark.py upstream --archs ...        # real-sized encoders, random weights: forward time
python scripts/benchmark.py lr_search [overrides ...]   # K-lr x M-interface search: one group vs separate runs
python scripts/benchmark.py fusion_memory               # Whisper Small + WavLM Base+ fused vs alone: memory per batch
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.bench import data as data_bench  # noqa: E402
from scripts.bench import fusion_memory as fusion_memory_bench  # noqa: E402
from scripts.bench import interfaces as interfaces_bench  # noqa: E402
from scripts.bench import lr_search as lr_search_bench  # noqa: E402
from scripts.bench import train_step as step_bench  # noqa: E402
from scripts.bench import upstream_forward as upstream_bench  # noqa: E402

SUBCOMMANDS = {
    "interfaces": interfaces_bench,
    "data": data_bench,
    "step": step_bench,
    "upstream": upstream_bench,
    "lr_search": lr_search_bench,
    "fusion_memory": fusion_memory_bench,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name, module in SUBCOMMANDS.items():
        module.add_arguments(subparsers.add_parser(name, help=module.__doc__.strip().splitlines()[0]))
    args = parser.parse_args(argv)
    SUBCOMMANDS[args.command].run(args)


if __name__ == "__main__":
    main()
