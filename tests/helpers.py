"""Helpers shared by the test modules: paths, the tiny upstream, launching run_downstream.py, composing the
project's Hydra config, and writing results.json records. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import downstream.training.identity  # noqa: F401 - registers the config's resolvers (${schedule:...}, ...)
from downstream.data.voxceleb1 import read_trials
from downstream.results import RESULTS_FILE, RunResults

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
MINI_SUPERB = REPO_ROOT / "data" / "mini_superb"

os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("SSL_BENCH_OFFLINE", "1")  # the suite never downloads


# The random tiny upstream at its smallest: what every fast test trains on.
TINY_UPSTREAM = ["upstream=tiny", "upstream.num_transformer_layers=2", "upstream.hidden_size=32"]
# Two updates, one evaluation at step 2 on two batches: the shortest complete run.
TWO_STEP_RUN = [
    "trainer.max_steps=2",
    "trainer.eval_every=2",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=2",
    "trainer.log_every=1",
    *TINY_UPSTREAM,
]


# docs/fusion.md's offline pair: the tiny demo model fused with a 96-wide random twin (members 'pretrained' and
# 'random'), as a user types it.
TINY_PAIR_OVERRIDES = [
    "upstream=fusion",
    "+upstream@upstream.members.pretrained=tiny_pretrained",
    "+upstream@upstream.members.random=tiny",
    "upstream.members.random.hidden_size=96",
]


# Hang guards for launches in tests, never speed limits: what a launch costs on the shared 2-core machine at
# load 12 (about 6 times its unloaded time), with a margin several times that. Unloaded (2-core development
# machine, 2026-12-07): a 4-update run of the tiny upstream took 16 s from start to exit, its updates about
# 0.08 s each. SSL_BENCH_TEST_TIMEOUT_SCALE multiplies every guard (a slower machine).
LAUNCH_STARTUP_S = 400.0  # interpreter, torch import, corpus and model setup, test evaluation
UPDATE_S = 2.0  # one update of the small runs the tests launch, evaluations included


def launch_timeout_s(updates: int, launches: int = 1) -> float:
    """The hang guard of ``launches`` launches of ``updates`` updates in all (see ``LAUNCH_STARTUP_S``)."""
    scale = float(os.environ.get("SSL_BENCH_TEST_TIMEOUT_SCALE", "1"))
    return scale * (launches * LAUNCH_STARTUP_S + updates * UPDATE_S)


def run_downstream_cli(
    arguments: list[str], env: dict[str, str] | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """`python run_downstream.py ARGUMENTS` as a user types it, from the repository root; asserts it succeeded.

    ``env`` replaces the environment (default: this one with W&B disabled); ``timeout`` (a hang guard)
    defaults to that of a short launch, ``launch_timeout_s(updates=50)``."""
    timeout = launch_timeout_s(updates=50) if timeout is None else timeout
    env = dict(os.environ, WANDB_MODE="disabled") if env is None else env
    completed = subprocess.run(
        [sys.executable, "run_downstream.py", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def compose_config(overrides: list[str] | None = None, run_dir: Path | None = None) -> DictConfig:
    """The config run_downstream.py would see for these command-line overrides (Hydra fields included)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides or []), return_hydra_config=True)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def write_finished_run(run_dir: Path, config_yaml: str | None = None, **fields: Any) -> RunResults:
    """A finished job directory as the runner leaves it: ``.hydra/`` (with config.yaml if given) and
    results.json holding ``RunResults(**fields)``; returns the record."""
    results = RunResults(**fields)
    (run_dir / ".hydra").mkdir(parents=True)
    if config_yaml is not None:
        (run_dir / ".hydra" / "config.yaml").write_text(config_yaml)
    (run_dir / RESULTS_FILE).write_text(results.to_json())
    return results


def write_superb_run(
    run_dir: Path,
    task: str,
    metric: str,
    higher: bool,
    scores: dict,
    overrides: tuple[str, ...] = (),
    protocol: str | None = "superb",
    **fields: Any,
) -> RunResults:
    """A finished weighted-sum run of s3prl's HuBERT on ``task`` whose dev and test scores are ``scores``,
    under ``protocol`` (other RunResults ``fields`` as given)."""
    return write_finished_run(
        run_dir,
        task=task,
        metric=metric,
        higher_is_better=higher,
        interface="weighted_sum",
        upstream="hubert (s3prl)",
        upstream_config="s3prl",
        seed=0,
        schedule="superb",
        protocol=protocol,
        trainable_params={"interface": 13, "head": 1000, "upstream": 0},
        dev=scores,
        test=scores,
        overrides=(f"task={task}", "interface=weighted_sum", *overrides),
        **fields,
    )


def read_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/curve.jsonl``."""
    return [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]


def best_dev_record(curve: list[dict[str, Any]], metric: str, higher_is_better: bool) -> dict[str, Any]:
    """The dev evaluation a run should keep: the first with the best ``metric`` (a later tie does not
    replace it)."""
    evaluations = [record for record in curve if record["split"] == "dev"]
    assert len(evaluations) >= 2, "choosing a best step needs at least two dev evaluations"
    sign = -1.0 if higher_is_better else 1.0
    return min(evaluations, key=lambda record: (sign * record[metric], record["step"]))


# -- run comparisons (shared by the reliability, SLURM, shared-upstream and lr-search tests) --------
SHARED_FAST = [
    "trainer.max_steps=4",
    "trainer.eval_every=2",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=2",
    "trainer.log_every=1",
    *TINY_UPSTREAM,
]


def assert_same_metrics(together: dict, alone: dict) -> None:
    assert together["best_step"] == alone["best_step"]
    for split in ("dev", "test"):
        assert together[split].keys() == alone[split].keys()
        for key in alone[split]:
            assert together[split][key] == pytest.approx(alone[split][key], abs=1e-4)


def train_losses(run_dir: Path) -> dict[int, float]:
    """step -> training loss from curve.jsonl; every step must be logged exactly once."""
    records = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["split"] == "train" and "loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records if r["split"] == "train" and "loss" in r}


def assert_same_run(run_dir: Path, reference_dir: Path, atol: float = 0.0, rtol: float = 0.0) -> None:
    """Same results.json metrics, training curve and best model as the reference run (exactly by default)."""
    results = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((reference_dir / "results.json").read_text())
    assert results["best_step"] == expected["best_step"]
    for split in ("dev", "test"):
        assert results[split] == pytest.approx(expected[split], abs=atol, rel=rtol)
    assert results["layer_weights"] == pytest.approx(expected["layer_weights"], abs=atol, rel=rtol)
    losses, expected_losses = train_losses(run_dir), train_losses(reference_dir)
    assert list(losses) == list(expected_losses)
    assert list(losses.values()) == pytest.approx(list(expected_losses.values()), abs=atol, rel=rtol)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    expected_best = torch.load(reference_dir / "best.pt", weights_only=True)
    assert best["step"] == expected_best["step"] == expected["best_step"]
    for part in ("interface", "head"):
        for name, tensor in expected_best[part].items():
            torch.testing.assert_close(best[part][name], tensor, atol=atol, rtol=rtol)


# -- small corpora written by the tests ---------------------------------------------------------
def write_voxceleb1(root: Path, speakers: int = 3, counts: tuple[int, int, int] = (6, 1, 1)) -> list[Path]:
    """A small VoxCeleb1 layout: each speaker a tone of its own plus noise, 0.5 s per file, 16 kHz mono;
    ``counts`` files per speaker for train, dev, test. Returns the training files."""
    rng = np.random.default_rng(0)
    lines, training = [], []
    for speaker in range(speakers):
        for index in range(sum(counts)):
            relative = f"id1000{speaker}/video/{index:05d}.wav"
            path = root / "wav" / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            time_axis = np.arange(8000) / 16000
            wave = 0.3 * np.sin(2 * np.pi * (200 + 150 * speaker) * time_axis) + 0.05 * rng.standard_normal(
                8000
            )
            soundfile.write(str(path), wave.astype(np.float32), 16000)
            split = "1" if index < counts[0] else "2" if index < counts[0] + counts[1] else "3"
            lines.append(f"{split} {relative}")
            if split == "1":
                training.append(path)
    (root / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return training


def write_small_trials(directory: Path) -> tuple[Path, Path]:
    """Small trial lists over the mini corpus's dev and test speakers (absolute paths, fast evaluation)."""
    lists = {}
    for name, source in (("dev", "dev_trials.txt"), ("test", "veri_test.txt")):
        trials = read_trials(MINI_SUPERB / "VoxCeleb1" / source)
        chosen = [t for t in trials if t.same_speaker][:3] + [t for t in trials if not t.same_speaker][:3]
        lines = [f"{int(t.same_speaker)} {t.enrollment}.flac {t.test}.flac" for t in chosen]
        lists[name] = directory / f"{name}_trials.txt"
        lists[name].write_text("\n".join(lines) + "\n")
    return lists["dev"], lists["test"]


# -- s3prl's sox effects, run by the sox program ------------------------------------------------------
# s3prl 0.4.18's effect chains, written out from the s3prl files (not from this project's code)
S3PRL_KS_QBE = ["channels", "1", "rate", "16000", "gain", "-3.0"]  # speech_commands/dataset.py:22
S3PRL_SV = [
    *S3PRL_KS_QBE,
    "silence",
    "1",
    "0.1",
    "0.1%",
    "-1",
    "0.1",
    "0.1%",
]  # sv_voxceleb1/dataset.py:22-27


def sox_output(source: Path, effects: list[str], tmp_path: Path) -> np.ndarray:
    """What s3prl's apply_effects_file gave: sox's float output of ``effects`` on ``source``."""
    target = tmp_path / "sox_reference.wav"
    subprocess.run(
        ["sox", str(source), "-b", "32", "-e", "floating-point", str(target), *effects], check=True
    )
    data, rate = soundfile.read(str(target), dtype="float32")
    assert rate == 16000
    return data


# -- flawed copies of the mini corpus (tests/test_integrity.py, tests/test_corpus_text.py) ----------------

#: task -> the corpus folder of data/mini_superb it reads (flawed copies: ``copy_corpus``)
CORPUS = {
    "pr": "LibriSpeech",
    "asr": "LibriSpeech",
    "sid": "VoxCeleb1",
    "sv": "VoxCeleb1",
    "er": "IEMOCAP",
    "ic": "FluentSpeechCommands",
    "ks": "SpeechCommands",
    "sf": "SNIPS",
    "sd": "Diarization",
    "qbe": "quesst14Database",
    "ml_multi": "ML-SUPERB",
}
AUDIO = (".flac", ".wav")


def cases(values: list, ids: list[str], slow: set[str]) -> list:
    """``values`` as pytest params named ``ids``; those in ``slow`` in the slow tier (more members of the
    same kind, caught by the same code as the fast ones)."""
    return [
        pytest.param(
            *(value if isinstance(value, tuple) else (value,)),
            id=name,
            marks=[pytest.mark.slow] * (name in slow),
        )
        for value, name in zip(values, ids, strict=True)
    ]


def copy_corpus(root: Path, corpus: str) -> Path:
    """data/mini_superb/<corpus> under ``root``: folders made, text files copied, audio files symlinked."""
    source, target = MINI_SUPERB / corpus, root / corpus
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix in AUDIO:
            destination.symlink_to(path)
        else:
            shutil.copyfile(path, destination)
    return target


def make_task(name: str, root: Path, *overrides: str):
    """The task ``name`` on the (flawed) corpus copies under ``root``, as the runner builds it."""
    from downstream.training.runner import build_task

    cfg = compose_config([f"task={name}", f"paths.mini_superb={root}", *overrides])
    return build_task(cfg.task)


def edit_lines(path: Path, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(change(lines)) + "\n", encoding="utf-8")


# ESPnet egs2/ml_superb/asr1: the monolingual sets in run_mono.sh's order (local/single_lang_data_prep.py
# SINGLE_LANG), written out here as ESPnet lists them so tests compare the code against it.
ESPNET_MONOLINGUAL_SETS = (
    "eng1",
    "eng2",
    "eng3",
    "fra1",
    "fra2",
    "deu1",
    "deu2",
    "rus",
    "swa",
    "swe",
    "jpn",
    "cmn",
    "xty",
)
