"""The results record of a run (results.json): one schema for the runner that writes it, the table code
that reads it back, and the tests.

A run directory is a Hydra job directory (it holds ``.hydra/``). The runner writes ``results.json`` into it
only when the run completed, so a job directory without one is an incomplete run (still running, stopped,
or crashed). :class:`RunResults` is the record; :func:`load_run` and :func:`scan_runs` find and read them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
HYDRA_DIR = ".hydra"
REQUIRED_KEYS = ("task", "metric", "higher_is_better", "interface", "upstream", "trainable_params", "test")
TRAINABLE_PARTS = ("interface", "head", "upstream")


class ResultsFileError(ValueError):
    """A results.json that is missing, unreadable or lacks what a finished run must record."""


@dataclass(frozen=True)
class RunResults:
    """What one finished run records in results.json. Error rates and accuracies are in percent.

    ``trainable_params`` maps interface/head/upstream to trainable parameter counts (upstream 0 when frozen);
    ``dev``/``test`` map metric names to values (``test`` always holds ``metric``: the test score of the best
    dev checkpoint); ``test_selected`` is SUPERB's test-selected figure where the run recorded one
    (trainer.test_every: the best test metrics over the evaluated steps, with their ``step``; SV's published
    EERs are of this kind), else None; ``layer_weights`` is a
    list over layers, a list per group, or None for interfaces that do not weigh layers; ``layer_ids`` are the
    upstream's hidden states the interface saw (``upstream.layers``; 0 = the encoder input), so
    ``layer_weights[i]`` belongs to hidden state ``layer_ids[i]``; ``frame_rate`` is the upstream's output frames
    per second (Hz); ``members`` is None for one upstream, and for a fused one (``upstream=fusion``) a list
    over its members of {name, upstream, num_layers, total_layers, layer_ids, hidden_size, frame_rate,
    downsample_rate, frame_grid} (``FusedUpstream.member_records``); ``too_long`` is
    {max_seconds, policy, <split>: count} or None without a length limit. ``lr`` is the head's learning
    rate (trainer.lr, after the schedule). ``stopped_early`` is None for a run trained to the end, or
    {step, rank, of} when successive halving stopped it (downstream/training/halving.py): it ranked ``rank``
    of ``of`` in its pool at that step. ``data_policy`` is what the pre-training data check
    (``downstream.training.data_check``) changed or left out, per split and kind ({split: {too_short,
    too_long, ctc_infeasible, empty_transcript, oov, utterances}}; None in records written before it
    existed). ``trainer`` holds every trainer setting as the run used it (lr, batch_size, grad_accum,
    max_steps, eval_every, ...), ``environment`` where it ran ({packages: {torch, torchaudio, transformers,
    s3prl, ...: version}, python, torch_threads, device, device_name, cuda}), ``config_hash`` the 8 hex
    digits of its result-affecting settings that name its folder (``downstream.training.identity``); the
    three are None in records written before they were added. Keys this schema does not know (written by a
    newer runner) are kept in ``extra`` and written back unchanged.
    """

    task: str
    metric: str
    higher_is_better: bool
    interface: str
    upstream: str
    trainable_params: dict[str, int]
    test: dict[str, float]
    dev: dict[str, float] = field(default_factory=dict)
    test_selected: dict[str, float] | None = None
    upstream_config: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    layer_ids: list[int] | None = None
    frame_rate: float | None = None
    members: list[dict[str, Any]] | None = None
    seed: int | None = None
    fold: int | None = None
    schedule: str | None = None
    protocol: str | None = None
    steps: int | None = None
    lr: float | None = None
    limit_eval_batches: int | None = None
    best_step: int | None = None
    skipped_updates: int | None = None
    too_long: dict[str, Any] | None = None
    data_policy: dict[str, dict[str, Any]] | None = None
    layer_weights: list[float] | list[list[float]] | None = None
    overrides: tuple[str, ...] = ()
    stopped_early: dict[str, int] | None = None
    trainer: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    config_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    # the order results.json has always had (the runner's), then anything in extra
    KEY_ORDER = (
        "task",
        "metric",
        "higher_is_better",
        "interface",
        "upstream",
        "upstream_config",
        "num_layers",
        "hidden_size",
        "layer_ids",
        "frame_rate",
        "members",
        "seed",
        "fold",
        "schedule",
        "protocol",
        "trainable_params",
        "steps",
        "lr",
        "limit_eval_batches",
        "best_step",
        "skipped_updates",
        "too_long",
        "data_policy",
        "dev",
        "test",
        "test_selected",
        "layer_weights",
        "overrides",
        "stopped_early",
        "trainer",
        "environment",
        "config_hash",
    )

    def __post_init__(self) -> None:
        clash = set(self.extra) & set(self.KEY_ORDER)
        if clash:
            raise ValueError(f"extra must not repeat a schema key, got {sorted(clash)}")

    def score(self, split: str = "test") -> float:
        """The run's task metric on ``split`` ('test' or 'dev'); ValueError if that split lacks it."""
        scores = {"test": self.test, "dev": self.dev}.get(split)
        if scores is None:
            raise ValueError(f"split must be 'test' or 'dev', got {split!r}")
        if self.metric not in scores:
            raise ResultsFileError(f"'{split}' has no '{self.metric}' entry (it has {sorted(scores)})")
        return float(scores[self.metric])

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of results.json: schema keys in their usual order, then ``extra``'s keys."""
        payload = {key: getattr(self, key) for key in self.KEY_ORDER}
        payload["overrides"] = list(self.overrides)
        return {**payload, **self.extra}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, payload: Any, source: str | Path = "results") -> RunResults:
        """Validate a results.json object; ResultsFileError names ``source`` and what is wrong.

        Only REQUIRED_KEYS must be present (records written before a key was added still read)."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ResultsFileError(f"{source}: {message}")

        require(isinstance(payload, dict), f"expected a JSON object, got {type(payload).__name__}")
        missing = [key for key in REQUIRED_KEYS if key not in payload]
        require(not missing, f"missing keys {missing}; a finished run records {list(REQUIRED_KEYS)}")
        params = payload["trainable_params"]
        require(
            isinstance(params, dict),
            f"'trainable_params' must map {'/'.join(TRAINABLE_PARTS)} to counts, got {params!r}",
        )
        for split in ("test", "dev"):
            scores = payload.get(split) or {}
            require(isinstance(scores, dict), f"'{split}' must map metric names to numbers, got {scores!r}")
        require(
            payload["metric"] in payload["test"],
            f"'test' has no '{payload['metric']}' entry (the run's metric); it has {sorted(payload['test'])}",
        )
        known = {key: payload[key] for key in cls.KEY_ORDER if key in payload}
        known.update(
            task=str(payload["task"]),
            metric=str(payload["metric"]),
            higher_is_better=bool(payload["higher_is_better"]),
            interface=str(payload["interface"]),
            upstream=str(payload["upstream"]),
            trainable_params={key: int(value) for key, value in params.items()},
            dev=dict(payload.get("dev") or {}),
            test=dict(payload["test"]),
            overrides=tuple(payload.get("overrides") or ()),
        )
        extra = {key: value for key, value in payload.items() if key not in cls.KEY_ORDER}
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, text: str, source: str | Path = "results") -> RunResults:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise ResultsFileError(f"{source}: not valid JSON ({error})") from error
        return cls.from_dict(payload, source)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunResults:
        """Read ``<run_dir>/results.json``; ResultsFileError naming the file if it is missing, unreadable (bad
        encoding, truncated, not JSON) or invalid."""
        path = Path(run_dir) / RESULTS_FILE
        if not path.is_file():
            raise ResultsFileError(
                f"{path}: no such file (the run did not finish, or this is not a run directory)"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ResultsFileError(f"{path}: not UTF-8 text ({error}); the file is damaged") from error
        except OSError as error:
            raise ResultsFileError(f"{path}: cannot be read ({error})") from error
        return cls.from_json(text, path)


def too_long_record(
    max_seconds: float | None, policy: str, counts: Mapping[str, int] | None
) -> dict[str, Any] | None:
    """results.json's ``too_long``: the limit, the policy and the count per split (None without a limit)."""
    if max_seconds is None or counts is None:
        return None
    return {"max_seconds": max_seconds, "policy": policy, **counts}


@dataclass(frozen=True)
class RunRecord:
    """A finished run found on disk: its directory and its results."""

    run_dir: Path
    results: RunResults


def load_run(run_dir: str | Path) -> RunRecord:
    """Read ``<run_dir>/results.json``; raise ResultsFileError naming the file and the problem."""
    return RunRecord(Path(run_dir), RunResults.load(run_dir))


@dataclass(frozen=True)
class SweepScan:
    """What a search of sweep directories found: finished runs and job directories without results."""

    complete: list[RunRecord]
    incomplete: list[Path]


#: The prefix of the last line a failed launch appends to its run folder's log (``record_failure``).
FAILURE_MARK = "FAILED: "
#: What a launch that failed before training leaves in a folder it may remove (``removable_failed_run``):
#: Hydra's record, identity.json, and the run-folder lock's file, which stays after release
#: (``downstream/training/run_lock.py``: a held lock also has ``.lock.json``, which is not in this list).
_LAUNCH_ONLY_FILES = (HYDRA_DIR, "identity.json", ".lock")


def removable_failed_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds only what a launch writes before training (Hydra's ``.hydra/`` and job
    log, identity.json, a released lock): nothing trained, nothing to resume, no holder, so a failed launch
    may remove it."""
    if not run_dir.is_dir():
        return False
    return all(entry.name in _LAUNCH_ONLY_FILES or entry.suffix == ".log" for entry in run_dir.iterdir())


def record_failure(run_dir: Path, message: str, log_name: str) -> None:
    """Append ``FAILED: <message>`` (its lines joined by `` | ``) to ``<run_dir>/<log_name>``, so that the
    folder's log ends with the error and ``failure_message`` (make_table) reports it."""
    line = FAILURE_MARK + " | ".join(part.strip() for part in message.splitlines() if part.strip())
    with open(run_dir / log_name, "a", encoding="utf-8") as stream:
        stream.write(line + "\n")


def failure_message(run_dir: Path) -> str | None:
    """The error a failed launch recorded as the last line of a ``*.log`` in ``run_dir``
    (``record_failure``), or None when the folder's logs do not end with one."""
    for log_file in sorted(run_dir.glob("*.log")):
        lines = log_file.read_text(encoding="utf-8", errors="replace").rstrip("\n").splitlines()
        if lines and lines[-1].startswith(FAILURE_MARK):
            return lines[-1][len(FAILURE_MARK) :]
    return None


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
