"""The results record (downstream/results.py): one schema that reads what the runner writes and writes it back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from downstream.results import ResultsFileError, RunResults, load_run, too_long_record

RECORD = {
    "task": "er",
    "metric": "acc",
    "higher_is_better": True,
    "interface": "weighted_sum",
    "upstream": "tiny (random)",
    "upstream_config": "tiny",
    "num_layers": 3,
    "hidden_size": 32,
    "layer_ids": [0, 1, 2],
    "frame_rate": 50.0,
    "members": None,
    "seed": 0,
    "fold": 1,
    "schedule": "demo",
    "protocol": "superb",
    "trainable_params": {"interface": 3, "head": 9000, "upstream": 0},
    "steps": 2,
    "lr": 0.001,
    "limit_eval_batches": 2,
    "best_step": 2,
    "skipped_updates": 0,
    "too_long": {"max_seconds": 15.0, "policy": "crop", "train": 1, "dev": 0, "test": 0},
    "data_policy": {
        split: {"too_short": {"count": 0, "min_samples": 400, "policy": "padded", "examples": []}}
        for split in ("train", "dev", "test")
    },
    "dev": {"acc": 25.0},
    "test": {"acc": 30.0},
    "test_selected": {"step": 2, "acc": 30.0},
    "layer_weights": [0.2, 0.3, 0.5],
    "overrides": ["task=er", "task.fold=1"],
    "stopped_early": {"step": 2, "rank": 2, "of": 2},
    "trainer": {"max_steps": 2, "eval_every": 2, "lr": 0.001, "batch_size": 2, "grad_accum": 1},
    "environment": {"packages": {"torch": "2.11.0"}, "python": "3.11.7", "torch_threads": 1, "device": "cpu"},
    "config_hash": "0123abcd",
}


def test_a_full_record_round_trips_key_for_key_in_the_runners_order():
    results = RunResults.from_dict(RECORD)
    assert results.extra == {}  # the schema covers every key the runner writes
    assert list(results.to_dict().items()) == list(RECORD.items())
    assert RunResults.from_json(results.to_json()) == results
    assert results.score("test") == 30.0 and results.score("dev") == 25.0


def test_unknown_keys_are_kept_and_older_records_still_read(tmp_path):
    newer = RunResults.from_dict({**RECORD, "wall_seconds": 12.5})
    assert newer.extra == {"wall_seconds": 12.5}
    assert newer.to_dict()["wall_seconds"] == 12.5
    older = {
        key: RECORD[key]
        for key in RECORD
        if key not in ("too_long", "skipped_updates", "steps", "trainer", "environment", "config_hash")
    }
    (tmp_path / "results.json").write_text(json.dumps(older))
    record = load_run(tmp_path)
    assert record.run_dir == tmp_path and record.results.too_long is None
    assert record.results.test == {"acc": 30.0}
    with pytest.raises(ValueError, match="must not repeat a schema key"):
        dataclasses.replace(newer, extra={"task": "pr"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"metric": "per"}, r"'test' has no 'per' entry \(the run's metric\); it has \['acc'\]"),
        ({"trainable_params": 5}, "'trainable_params' must map interface/head/upstream to counts"),
        ({"dev": [1.0]}, "'dev' must map metric names to numbers"),
    ],
)
def test_bad_records_are_named_with_what_is_wrong(tmp_path, change, message):
    (tmp_path / "results.json").write_text(json.dumps({**RECORD, **change}))
    with pytest.raises(ResultsFileError, match=f"results.json: {message}"):
        load_run(tmp_path)
    with pytest.raises(ResultsFileError, match="no such file"):
        load_run(tmp_path / "elsewhere")
    with pytest.raises(ResultsFileError, match="'dev' has no 'acc' entry"):
        RunResults.from_dict({**RECORD, "dev": {}}).score("dev")


def test_too_long_record_is_null_without_a_limit():
    assert too_long_record(None, "crop", {"train": 3}) is None
    assert too_long_record(15.0, "drop", {"train": 3, "dev": 0}) == {
        "max_seconds": 15.0,
        "policy": "drop",
        "train": 3,
        "dev": 0,
    }
