"""Reading finished runs back: one results.json per run directory, found under sweep directories.

A run directory is a Hydra job directory (it holds ``.hydra/``). The runner writes ``results.json`` into it
only when the run completed, so a job directory without one is an incomplete run (still running, stopped,
or crashed). This module only reads; the runner writes results.json with its own code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
HYDRA_DIR = ".hydra"
REQUIRED_KEYS = ("task", "metric", "higher_is_better", "interface", "upstream", "trainable_params", "test")


class ResultsFileError(ValueError):
    """A results.json that is missing, unreadable or lacks what a finished run must record."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as recorded in its results.json (metrics in percent for per/wer/cer/acc)."""

    run_dir: Path
    task: str
    metric: str
    higher_is_better: bool
    interface: str
    upstream: str
    upstream_config: str | None
    seed: int | None
    fold: int | None
    schedule: str | None
    trainable_params: dict[str, int]
    dev: dict[str, float]
    test: dict[str, float]
    layer_weights: list[float] | list[list[float]] | None
    overrides: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    def score(self, split: str = "test") -> float:
        """The run's task metric on ``split`` (test or dev)."""
        scores = {"test": self.test, "dev": self.dev}.get(split)
        if scores is None:
            raise ValueError(f"split must be 'test' or 'dev', got {split!r}")
        if self.metric not in scores:
            raise ResultsFileError(
                f"{self.run_dir / RESULTS_FILE}: '{split}' has no '{self.metric}' entry (it has {sorted(scores)})"
            )
        return float(scores[self.metric])


def _require(condition: bool, path: Path, message: str) -> None:
    if not condition:
        raise ResultsFileError(f"{path}: {message}")


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``<run_dir>/results.json``; raise ResultsFileError naming the file and the problem."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise ResultsFileError(
            f"{path}: no such file (the run did not finish, or this is not a run directory)"
        )
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultsFileError(f"{path}: not valid JSON ({error})") from error
    _require(isinstance(payload, dict), path, f"expected a JSON object, got {type(payload).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    _require(not missing, path, f"missing keys {missing}; a finished run records {list(REQUIRED_KEYS)}")
    _require(
        isinstance(payload["trainable_params"], dict),
        path,
        f"'trainable_params' must map interface/head/upstream to counts, got {payload['trainable_params']!r}",
    )
    for split in ("test", "dev"):
        scores = payload.get(split) or {}
        _require(
            isinstance(scores, dict), path, f"'{split}' must map metric names to numbers, got {scores!r}"
        )
    _require(
        payload["metric"] in payload["test"],
        path,
        f"'test' has no '{payload['metric']}' entry (the run's metric); it has {sorted(payload['test'])}",
    )
    return RunRecord(
        run_dir=run_dir,
        task=str(payload["task"]),
        metric=str(payload["metric"]),
        higher_is_better=bool(payload["higher_is_better"]),
        interface=str(payload["interface"]),
        upstream=str(payload["upstream"]),
        upstream_config=payload.get("upstream_config"),
        seed=payload.get("seed"),
        fold=payload.get("fold"),
        schedule=payload.get("schedule"),
        trainable_params={key: int(value) for key, value in payload["trainable_params"].items()},
        dev=dict(payload.get("dev") or {}),
        test=dict(payload["test"]),
        layer_weights=payload.get("layer_weights"),
        overrides=tuple(payload.get("overrides") or ()),
        raw=payload,
    )


@dataclass(frozen=True)
class SweepScan:
    """What a search of sweep directories found: finished runs and job directories without results."""

    complete: list[RunRecord]
    incomplete: list[Path]


def scan_runs(roots: Iterable[str | Path]) -> SweepScan:
    """Find every run directory under ``roots`` (each a sweep directory or a single run directory).

    A directory holding results.json is a finished run; one holding ``.hydra/`` but no results.json is
    incomplete. Hidden directories (.hydra, .submitit, ...) and the insides of run directories are not
    searched. A directory reached from two roots is counted once.
    """
    complete: dict[Path, RunRecord] = {}
    incomplete: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"sweep directory {str(root)!r} does not exist or is not a directory")
        for directory, subdirs, files in os.walk(root):
            here = Path(directory).resolve()
            if RESULTS_FILE in files:
                complete.setdefault(here, load_run(here))
            elif HYDRA_DIR in subdirs:
                incomplete.add(here)
            else:
                subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
                continue
            subdirs[:] = []  # a run directory holds checkpoints and logs, not further runs
    return SweepScan(complete=[complete[path] for path in sorted(complete)], incomplete=sorted(incomplete))
