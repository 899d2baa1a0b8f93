"""Faults of run folders: checkpoints that are damaged inside or carry code, leftover temporary files, damaged
records (results.json, identity.json, curve.jsonl), and the re-adopt command. Each test damages real files the
way a kill, a disk or a person would, then relaunches. The lock on run folders is tested in test_run_lock.py."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import torch

from downstream.training.adopt import AdoptError, adopt_run
from downstream.training.checkpoint import (
    CheckpointUnreadableError,
    capture_rng_state,
    find_checkpoint,
    read_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from downstream.training.identity import RunConfigMismatchError
from downstream.training.run_log import read_curve
from downstream.training.runner import run_experiment
from tests.helpers import TINY_UPSTREAM, assert_same_run, compose_config

# PR on the mini corpus: 6 updates, evaluated and checkpointed at steps 2, 4 and 6.
SIX_STEPS = [
    "trainer.max_steps=6",
    "trainer.eval_every=2",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=2",
    "trainer.log_every=1",
    *TINY_UPSTREAM,
]
STOP_AT_4 = [*SIX_STEPS, "trainer.stop_after_steps=4"]


def run(overrides: list[str], run_dir: Path) -> dict | None:
    return run_experiment(compose_config(overrides, run_dir=run_dir), run_dir)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted six-step run every resumed run must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    run(SIX_STEPS, run_dir)
    return run_dir


@pytest.fixture
def stopped(tmp_path) -> Path:
    """A run stopped at step 4: last.pt at step 4, last.pt.previous at step 2, no results.json."""
    run_dir = tmp_path / "run"
    assert run(STOP_AT_4, run_dir) is None
    assert read_checkpoint(run_dir / "last.pt")["progress"]["step"] == 4
    return run_dir


def overwrite_middle(path: Path, size: int = 4096) -> None:
    """Overwrite ``size`` bytes in the middle of ``path`` with other bytes (the file stays a valid archive)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + size] = bytes((b + 1) % 256 for b in data[start : start + size])
    path.write_bytes(bytes(data))


# -- checkpoints hold data only ----------------------------------------------------------------------------


@pytest.mark.slow
def test_every_file_of_a_run_folder_loads_as_data_only(stopped):
    for path in [*stopped.glob("*.pt"), *stopped.glob("*.pt.previous")]:
        payload = torch.load(path, weights_only=True)  # raises if any object needs pickle
        assert isinstance(payload, dict), path
    checkpoint = torch.load(stopped / "last.pt", weights_only=True)
    assert isinstance(checkpoint["global_rng"]["numpy"]["key"], torch.Tensor)


def test_random_states_restored_from_a_data_only_checkpoint_continue_the_same_streams(tmp_path):
    import random

    import numpy as np

    path = tmp_path / "rng.pt"
    save_checkpoint({"rng": capture_rng_state()}, path)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(torch.load(path, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class Payload:
    """What a crafted checkpoint carries: unpickling it would create ``marker`` (code that must never run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.slow
def test_a_checkpoint_carrying_code_is_refused_and_its_code_never_runs(stopped, caplog):
    marker = stopped.parent / "payload-ran"
    crafted = torch.load(stopped / "last.pt", weights_only=True)
    crafted["progress"]["payload"] = Payload(marker)
    for name in ("last.pt", "last.pt.previous"):
        torch.save(crafted, stopped / name)  # a valid archive with valid checksums, but it needs pickle
    with pytest.raises(CheckpointUnreadableError, match=r"last\.pt needs pickle to load, which can run code"):
        read_checkpoint(stopped / "last.pt")
    caplog.set_level(logging.INFO)
    results = run(SIX_STEPS, stopped)
    assert not marker.exists(), "the payload ran"
    assert results is not None and (stopped / "results.json").exists()
    assert f"{stopped / 'last.pt'} needs pickle to load" in caplog.text
    assert f"{stopped / 'last.pt.previous'} needs pickle to load" in caplog.text
    assert f"no usable checkpoint in {stopped} (last.pt and last.pt.previous unusable)" in caplog.text
    assert "starts over from step 0" in caplog.text and "resumed at step" not in caplog.text


def test_a_crafted_checkpoint_is_refused_without_running_its_code_and_the_previous_one_is_used(
    tmp_path, caplog
):
    marker, path = tmp_path / "payload-ran", tmp_path / "last.pt"
    save_checkpoint({"progress": {"step": 3}, "weights": torch.ones(4)}, path)
    save_checkpoint(
        {"progress": {"step": 9}, "weights": Payload(marker)}, path
    )  # valid checksums; needs pickle
    caplog.set_level(logging.INFO)
    found = find_checkpoint(path, "cpu")
    assert not marker.exists(), "the payload ran"
    assert found.path == tmp_path / "last.pt.previous" and found.payload["progress"]["step"] == 3
    assert f"{path} needs pickle to load, which can run code; refused" in caplog.text


# -- checkpoints are verified ----------------------------------------------------------------------------


@pytest.mark.slow
def test_4_kib_overwritten_inside_a_checkpoint_is_detected_and_the_previous_one_used(
    stopped, reference, caplog
):
    overwrite_middle(stopped / "last.pt")
    with pytest.raises(CheckpointUnreadableError, match="do not match the checksum written with it"):
        read_checkpoint(stopped / "last.pt")
    caplog.set_level(logging.INFO)
    run(SIX_STEPS, stopped)
    assert f"{stopped / 'last.pt'} is damaged" in caplog.text
    assert f"using the older checkpoint {stopped / 'last.pt.previous'} instead of last.pt" in caplog.text
    assert f"resumed at step 2 from {stopped / 'last.pt.previous'}" in caplog.text
    assert_same_run(stopped, reference)


@pytest.mark.slow
def test_both_checkpoints_damaged_starts_over_from_step_0_and_says_so(stopped, reference, caplog):
    overwrite_middle(stopped / "last.pt")
    (stopped / "last.pt.previous").write_bytes((stopped / "last.pt.previous").read_bytes()[:1000])  # torn
    found = find_checkpoint(stopped / "last.pt", "cpu")
    assert found is None
    caplog.set_level(logging.INFO)
    run(SIX_STEPS, stopped)
    assert "this run starts over from step 0" in caplog.text
    assert_same_run(stopped, reference)


@pytest.mark.slow
def test_temporary_files_left_by_a_kill_mid_write_are_removed_by_the_next_launch(stopped, caplog):
    leftovers = [stopped / ".last.pt.k2j4h1.tmp", stopped / ".best.pt.x8a0qz.tmp"]
    for leftover in leftovers:
        leftover.write_bytes((stopped / "last.pt").read_bytes())  # up to full size
    caplog.set_level(logging.INFO)
    run(SIX_STEPS, stopped)
    for leftover in leftovers:
        assert not leftover.exists()
        assert f"removed {leftover}" in caplog.text


def test_any_overwritten_4_kib_block_of_a_checkpoint_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"progress": {"step": 1}, "head": {"weight": torch.randn(64, 256)}}, path)
    size = path.stat().st_size
    for start in range(0, size - 4096, 4096):  # every 4 KiB block: header, pickle, tensor bytes, directory
        damaged = tmp_path / f"damaged-{start}.pt"
        data = bytearray(path.read_bytes())
        data[start : start + 4096] = bytes((b + 1) % 256 for b in data[start : start + 4096])
        damaged.write_bytes(bytes(data))
        with pytest.raises(CheckpointUnreadableError, match=str(damaged)):
            read_checkpoint(damaged)


# -- damaged records never block or destroy a folder -------------------------------------------------------

DAMAGE = {
    "bad JSON": lambda text: text.replace('"', "", 1),
    "bad encoding": lambda text: text[:40] + "\udcff\udcfe" + text[40:],
    "truncated": lambda text: text[: len(text) // 2],
}


def damage(path: Path, kind: str) -> None:
    path.write_bytes(DAMAGE[kind](path.read_text()).encode("utf-8", "surrogateescape"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_results_json_is_named_and_the_run_continues_from_its_checkpoint(tmp_path, kind, caplog):
    run_dir = tmp_path / "run"
    expected = run(SIX_STEPS, run_dir)
    damage(run_dir / "results.json", kind)
    caplog.set_level(logging.INFO)
    results = run(SIX_STEPS, run_dir)
    assert f"{run_dir / 'results.json'}: " in caplog.text
    assert "the run is not taken as finished: it continues from its checkpoint" in caplog.text
    assert f"resumed at step 6 from {run_dir / 'last.pt'}" in caplog.text
    assert results["test"] == expected["test"]
    assert json.loads((run_dir / "results.json").read_text())["test"] == expected["test"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_finished_run_with_a_damaged_identity_is_refused_then_re_adopted(tmp_path, kind):
    run_dir = tmp_path / "run"
    expected = run(SIX_STEPS, run_dir)
    damage(run_dir / "identity.json", kind)
    damaged_bytes = (run_dir / "identity.json").read_bytes()
    with pytest.raises(RunConfigMismatchError, match=r"identity\.json is unreadable .*adopt=true"):
        run(SIX_STEPS, run_dir)
    # other settings are not adopted: results.json's config_hash is checked
    with pytest.raises(AdoptError, match=r"trainer\.lr: 0\.01 recorded, 0\.5 now"):
        adopt_run(compose_config([*SIX_STEPS, "trainer.lr=0.5"], run_dir=run_dir), run_dir)
    adopt_run(compose_config([*SIX_STEPS, "adopt=true"], run_dir=run_dir), run_dir)
    assert (run_dir / "identity.json.damaged").read_bytes() == damaged_bytes
    skipped = run(SIX_STEPS, run_dir)
    assert skipped == expected  # the finished run is skipped, nothing retrained or deleted


@pytest.mark.slow
def test_a_run_without_results_is_not_adopted(stopped):
    (stopped / "identity.json").write_text("{")
    with pytest.raises(AdoptError, match=r"results\.json: no such file.*overwrite=true"):
        adopt_run(compose_config(SIX_STEPS, run_dir=stopped), stopped)


@pytest.mark.slow
def test_a_finished_run_with_a_damaged_best_model_is_not_adopted(tmp_path):
    run_dir = tmp_path / "run"
    run(SIX_STEPS, run_dir)
    (run_dir / "identity.json").write_text("{")
    overwrite_middle(run_dir / "best.pt", 1024)
    with pytest.raises(AdoptError, match=r"finished model is unusable .*best\.pt is damaged"):
        adopt_run(compose_config(SIX_STEPS, run_dir=run_dir), run_dir)


def test_the_curve_reader_drops_a_torn_last_line_and_skips_a_damaged_middle_line(tmp_path, caplog):
    curve = tmp_path / "curve.jsonl"
    good = [json.dumps({"step": step, "split": "train", "loss": 1.0}) for step in range(1, 5)]
    curve.write_bytes(("\n".join([good[0], '{"step": 2, "sp', good[2], good[3][:9]])).encode())
    caplog.set_level(logging.WARNING)
    assert [record["step"] for record in read_curve(curve)] == [1, 3]
    assert f"{curve}: line 2 is damaged" in caplog.text
    assert f"{curve}: dropped its torn last line 4" in caplog.text


# -- side files never end a run ------------------------------------------------------------------------------

CURVE_DAMAGE = {
    # a launch killed while appending: the last line is cut short, with no newline at its end
    "torn last line": (
        lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
        "dropped its torn last line",
    ),
    "damaged middle line": (lambda lines: lines[:2] + ['{"step": 1, "spl'] + lines[3:], "line 3 is damaged"),
    "bad encoding in the middle": (
        lambda lines: lines[:1] + ['{"step": \udcff}'] + lines[2:],
        "line 2 is damaged",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(CURVE_DAMAGE))
def test_a_damaged_curve_is_read_tolerantly_after_a_resume_and_results_are_written(
    stopped, reference, kind, caplog
):
    curve = stopped / "curve.jsonl"
    change, message = CURVE_DAMAGE[kind]
    lines = change(curve.read_text().splitlines())
    text = "\n".join(lines) + ("" if kind == "torn last line" else "\n")
    curve.write_bytes(text.encode("utf-8", "surrogateescape"))
    caplog.set_level(logging.INFO)
    results = run(SIX_STEPS, stopped)
    assert results is not None and (stopped / "results.json").exists()
    assert f"{curve}: {message}" in caplog.text
    expected = json.loads((reference / "results.json").read_text())
    assert results["test"] == pytest.approx(expected["test"])
    records = [json.loads(line) for line in curve.read_text().splitlines()]  # every line valid again
    assert [r["step"] for r in records if r["split"] == "dev"][-2:] == [
        4,
        6,
    ]  # those trained after the resume
