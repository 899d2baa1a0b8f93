"""Faults a cluster job meets: killed or preempted launches, torn checkpoints, a full disk, several processes
(torchrun), non-finite losses and bad input. Each test provokes the real fault (a real signal, a real
ENOSPC, real NaN audio) and checks what the runner does about it.

Launches that must be killed or run under torchrun are subprocesses of ``run_downstream.py``; reference
runs are in-process ``run_experiment`` calls with the same config. Everything runs on one CPU thread per
process: results then match bit for bit between processes, and two threads per process on a shared
2-core machine are several times slower than one.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from hydra.errors import InstantiationException

from downstream.data.audio import AudioDecodeError
from downstream.data.corpus import DataLayoutError
from downstream.training.branch import NonFiniteLossError
from downstream.training.preemption import EXIT_STOPPED_EARLY
from downstream.training.runner import run_experiment
from tests.helpers import (
    REPO_ROOT,
    TINY_UPSTREAM,
    assert_same_run,
    compose_config,
    launch_timeout_s,
    write_voxceleb1,
)

TINY = TINY_UPSTREAM
# PR on the mini corpus, long enough to be interrupted after its first checkpoint (step 5).
TRAINING = [
    "trainer.max_steps=60",
    "trainer.eval_every=20",
    "trainer.save_every=5",
    "trainer.lr=0.02",
    "trainer.batch_size=2",
    "trainer.limit_eval_batches=2",
    "trainer.log_every=1",
]
SCHEDULE = [*TRAINING, *TINY]
OUTPUTS = ("results.json", "last.pt", "best.pt", "curve.jsonl")
LAUNCH_TIMEOUT_S = launch_timeout_s(updates=60)  # a hang guard: one SCHEDULE launch


# -- helpers ----------------------------------------------------------------------------------------------


def run_in_process(overrides: list[str], run_dir: Path) -> dict | None:
    return run_experiment(compose_config(overrides, run_dir=run_dir), run_dir)


def command(overrides: list[str], run_dir: Path) -> list[str]:
    return [sys.executable, "run_downstream.py", *overrides, f"hydra.run.dir={run_dir}"]


def launch(args: list[str], **options) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.Popen(
        args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options
    )


def checkpoint_step(run_dir: Path) -> int:
    return torch.load(run_dir / "last.pt", weights_only=True)["progress"]["step"]


def signal_after_next_checkpoint(process: subprocess.Popen, run_dir: Path, signum: int) -> str:
    """Wait until the launch writes a checkpoint (a new last.pt), send ``signum``, return its output."""
    checkpoint = run_dir / "last.pt"
    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not checkpoint.exists() or checkpoint.stat().st_mtime_ns == before:
        assert process.poll() is None, (
            f"the launch ended before its first checkpoint:\n{process.stdout.read()}"
        )
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.005)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    return output


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted in-process run of SCHEDULE (seed 0) that the interrupted runs must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    run_in_process(SCHEDULE, run_dir)
    return run_dir


# -- preemption: SIGKILL, SIGTERM, torn checkpoints, a full disk --------------------------------------------


@pytest.mark.slow
def test_sigkill_then_sigterm_then_relaunch_matches_an_uninterrupted_run(reference, tmp_path, caplog):
    """Launch 1 is killed with SIGKILL just after a checkpoint (possibly while writing the next one);
    launch 2 resumes and is stopped with SIGTERM: it finishes its update, checkpoints and exits with 75;
    launch 3 (in-process, same config) finishes. results.json, the curve and best.pt equal those of the
    uninterrupted run."""
    run_dir = tmp_path / "run"
    killed = launch(command(SCHEDULE, run_dir))
    signal_after_next_checkpoint(killed, run_dir, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists()
    killed_at = checkpoint_step(run_dir)

    terminated = launch(command(SCHEDULE, run_dir))
    output = signal_after_next_checkpoint(terminated, run_dir, signal.SIGTERM)
    assert terminated.returncode == EXIT_STOPPED_EARLY, output[-3000:]
    assert f"resumed at step {killed_at}" in output
    stopped_at = checkpoint_step(run_dir)
    assert f"stopped at step {stopped_at} (SIGTERM) with a checkpoint" in output
    assert killed_at < stopped_at < 60 and not (run_dir / "results.json").exists()

    with caplog.at_level(logging.INFO):
        run_in_process(SCHEDULE, run_dir)
    assert f"resumed at step {stopped_at}" in caplog.text
    assert_same_run(run_dir, reference)


@pytest.mark.slow
def test_torn_checkpoint_is_reported_and_the_previous_one_is_used(reference, tmp_path, caplog):
    run_dir = tmp_path / "run"
    assert run_in_process([*SCHEDULE, "trainer.stop_after_steps=15"], run_dir) is None
    assert checkpoint_step(run_dir) == 15  # last.pt.previous holds step 10
    checkpoint = run_dir / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])

    with caplog.at_level(logging.INFO):
        run_in_process(SCHEDULE, run_dir)
    torn = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "unreadable" in r.getMessage()
    ]
    assert len(torn) == 1 and str(checkpoint) in torn[0] and "skipping it" in torn[0]
    assert "resumed at step 10" in caplog.text
    assert_same_run(run_dir, reference)


def _full_disk_launch(seed_dir: Path, out_dir: Path) -> tuple[int, str, Path, str]:
    """Relaunch the run in ``seed_dir`` on a disk with about 64 KiB free (less than one checkpoint).

    The disk is a 4 MiB tmpfs mounted in a private mount namespace (``unshare``: as root, or as a user
    through a user namespace), so a real write gets ENOSPC. Where namespaces are unavailable, the
    closest real mechanism: RLIMIT_FSIZE below a checkpoint's size makes the write fail with EFBIG.
    Returns (exit status, output, the run folder as the launch left it, the expected OS error text).
    """
    after = out_dir / "after"
    namespace = ["unshare", "--user", "--map-root-user", "--mount"]
    if shutil.which("unshare") and subprocess.run([*namespace, "true"], capture_output=True).returncode == 0:
        mount = out_dir / "disk"
        mount.mkdir()
        fill = (
            "import os, sys; s = os.statvfs(sys.argv[1]); free = s.f_bavail * s.f_frsize; "
            "open(os.path.join(sys.argv[1], 'filler'), 'wb').write(bytes(free - 64 * 1024))"
        )
        script = "\n".join(
            [
                "set -e",
                f"mount -t tmpfs -o size=4m tmpfs '{mount}'",
                f"cp -a '{seed_dir}' '{mount}/run'",
                f"'{sys.executable}' -c \"{fill}\" '{mount}'",
                f"{shlex.join(command(SCHEDULE, mount / 'run'))} > '{out_dir}/log' 2>&1 || echo $? > '{out_dir}/rc'",
                f"cp -a '{mount}/run' '{after}'",
            ]
        )
        setup = subprocess.run(
            [*namespace, "sh", "-c", script],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=LAUNCH_TIMEOUT_S,
        )
        assert setup.returncode == 0, setup.stderr
        status_file = out_dir / "rc"
        status = int(status_file.read_text()) if status_file.exists() else 0
        expected = f"could not write {mount}/run/last.pt: No space left on device (errno 28)"
        return status, (out_dir / "log").read_text(), after, expected
    import resource

    shutil.copytree(seed_dir, after)
    limit = (after / "last.pt").stat().st_size // 2

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    process = launch(command(SCHEDULE, after), preexec_fn=limit_file_size)
    output, _ = process.communicate(timeout=LAUNCH_TIMEOUT_S)
    return process.returncode, output, after, f"could not write {after}/last.pt: File too large (errno 27)"


@pytest.mark.slow
def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_says_so(reference, tmp_path):
    seed_dir = tmp_path / "seed"
    run_in_process([*SCHEDULE, "trainer.stop_after_steps=10"], seed_dir)
    previous = {name: (seed_dir / name).read_bytes() for name in ("last.pt", "last.pt.previous")}

    status, output, after, expected_error = _full_disk_launch(seed_dir, tmp_path)
    assert status == 1, output[-3000:]
    assert "CheckpointWriteError" in output and expected_error in output
    assert "the previous last.pt is unchanged" in output
    for name, content in previous.items():  # both checkpoints untouched, no temporary file left
        assert (after / name).read_bytes() == content
    assert checkpoint_step(after) == 10
    assert not list(after.glob(".last.pt.*")) and not (after / "results.json").exists()

    run_in_process(SCHEDULE, after)  # space again: the same command resumes and finishes
    assert_same_run(after, reference)


# -- several processes ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_processes_under_torchrun_match_one_process_with_the_same_global_batch(tmp_path):
    """torchrun --nproc_per_node 2 on gloo (CPU) with grad_accum=1 against one process with grad_accum=2.

    Global batch i goes to rank i mod 2 and gradients are averaged, so both consume the same two batches
    per update. Averaging the two ranks' gradients, (g1 + g2) / 2, equals one process's g1 / 2 + g2 / 2
    exactly in floating point (halving is exact), so with one thread everywhere the runs agree bit for
    bit: results.json, the curve and best.pt are compared exactly. Launch 1 is stopped with SIGTERM (torchrun forwards it to both ranks): every rank
    stops after the same update, rank 0 checkpoints and the relaunch finishes. No launch may hang.
    Evaluation takes 3 batches, an odd number: rank 0 scores two and rank 1 one, so the summed dev and
    test statistics equal one process's only if no batch is scored twice (no padding of the shards).
    """
    training = [o for o in TRAINING[2:] if not o.startswith("trainer.limit_eval_batches=")]
    schedule = [
        "trainer.max_steps=20",
        "trainer.eval_every=10",
        *training,
        "trainer.limit_eval_batches=3",
        *TINY,
    ]
    single = tmp_path / "single"
    run_in_process([*schedule, "trainer.grad_accum=2"], single)

    run_dir = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [*torchrun, *command([*schedule, "trainer.grad_accum=1"], run_dir)[1:]]
    first = launch(args)
    output = signal_after_next_checkpoint(first, run_dir, signal.SIGTERM)
    assert first.returncode != 0
    stopped_at = checkpoint_step(run_dir)
    assert output.count(f"stopped at step {stopped_at} (SIGTERM) with a checkpoint") == 1  # rank 0 reports
    assert "[rank 1] SIGTERM: checkpointing at the end of this update" in output
    assert torch.load(run_dir / "last.pt", weights_only=True)["progress"]["world_size"] == 2

    second = launch(args)
    output, _ = second.communicate(timeout=LAUNCH_TIMEOUT_S)
    assert second.returncode == 0, output[-3000:]
    assert f"resumed at step {stopped_at}" in output and "distributed: rank 0 of 2 (gloo)" in output
    assert_same_run(run_dir, single)  # and every step is logged once: one writer


# -- numerical faults -------------------------------------------------------------------------------------


SID = ["task=sid", "schedule=demo", "trainer.batch_size=2", "trainer.log_every=1", *TINY]


def test_non_finite_updates_are_skipped_counted_and_logged(tmp_path, caplog):
    """One training utterance holds samples at float32's largest magnitude (a float WAV: finite, so the
    corpus integrity pass lets it through, but the upstream overflows): every batch holding it has a
    non-finite loss. 18 utterances in batches of 2 for 18 steps is two epochs, so exactly two updates are
    skipped."""
    corpus = tmp_path / "corpus"
    damaged = write_voxceleb1(corpus)[4]
    huge = np.finfo(np.float32).max * np.where(np.arange(8000) % 2, 1.0, -1.0)
    soundfile.write(str(damaged), huge.astype(np.float32), 16000, subtype="FLOAT")
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        results = run_in_process(
            [*SID, f"task.data_root={corpus}", "trainer.max_steps=18", "trainer.eval_every=9"], run_dir
        )
    skipped = [
        r["step"]
        for r in map(json.loads, (run_dir / "curve.jsonl").read_text().splitlines())
        if "skipped_update" in r
    ]
    assert results["skipped_updates"] == len(skipped) == 2
    for step in skipped:
        assert f"step {step} had a non-finite loss or gradient; update skipped" in caplog.text
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for part in ("interface", "head") for t in best[part].values())
    assert all(np.isfinite(v) for split in ("dev", "test") for v in results[split].values())


def test_best_model_newer_than_the_checkpoint_is_rolled_back(tmp_path, caplog):
    """A launch killed after writing best.pt at an evaluation, before that evaluation's checkpoint, leaves
    best.pt one evaluation ahead of last.pt. The relaunch puts back the best model its checkpoint knows
    (best.pt.previous), so best_step and best.pt agree even if the replayed evaluation comes out
    differently (a GPU's non-deterministic kernels)."""
    corpus = tmp_path / "corpus"
    write_voxceleb1(corpus)
    run_dir = tmp_path / "run"
    overrides = [
        *SID,
        f"task.data_root={corpus}",
        "trainer.max_steps=12",
        "trainer.eval_every=4",
        "trainer.save_every=2",
        "trainer.lr=1e-3",
    ]
    run_in_process([*overrides, "trainer.stop_after_steps=8"], run_dir)
    best, previous = run_dir / "best.pt", run_dir / "best.pt.previous"
    assert torch.load(best)["step"] == 8 and torch.load(previous)["step"] == 4  # dev accuracy rose at 8
    best_of_step_4 = previous.read_bytes()
    # What a SIGKILL between best.pt and last.pt at step 8 leaves: last.pt is the step-6 checkpoint.
    os.replace(run_dir / "last.pt.previous", run_dir / "last.pt")
    assert checkpoint_step(run_dir) == 6

    with caplog.at_level(logging.INFO):
        run_in_process([*overrides, "trainer.stop_after_steps=1"], run_dir)  # resume, one update, stop
    assert "restored the best model of step 4 from best.pt.previous" in caplog.text
    assert best.read_bytes() == best_of_step_4
    assert run_in_process(overrides, run_dir)["best_step"] == 8


def test_too_many_non_finite_updates_in_a_row_stop_the_run_naming_the_step(tmp_path):
    """lr=1e30: Adam moves every weight by about 1e30 in update 1, so from update 2 on the logits overflow
    and every update is non-finite; with max_bad_steps=2 the third one in a row stops the run."""
    run_dir = tmp_path / "run"
    overrides = [*SCHEDULE, "trainer.lr=1e30", "trainer.max_bad_steps=2"]
    with pytest.raises(NonFiniteLossError) as raised:
        run_in_process(overrides, run_dir)
    skipped = [
        r["step"]
        for r in map(json.loads, (run_dir / "curve.jsonl").read_text().splitlines())
        if "skipped_update" in r
    ]
    assert skipped == [skipped[0], skipped[0] + 1, skipped[0] + 2]
    assert str(raised.value).startswith(f"stopped at step {skipped[-1]}: 3 updates in a row")
    assert "trainer.max_bad_steps=2" in str(raised.value)
    assert not (run_dir / "results.json").exists()


# -- bad input ----------------------------------------------------------------------------------------------


def _remove_everything(corpus: Path, training: list[Path]) -> None:
    shutil.rmtree(corpus)
    corpus.mkdir()


def _write_empty_audio(corpus: Path, training: list[Path]) -> None:
    soundfile.write(str(training[0]), np.zeros(0, dtype=np.float32), 16000)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (_remove_everything, DataLayoutError, r"VoxCeleb1 audio folder '.*corpus/wav' does not exist"),
        (
            lambda corpus, training: (corpus / "iden_split.txt").unlink(),
            DataLayoutError,
            r"VoxCeleb1 split file '.*corpus/iden_split\.txt' does not exist",
        ),
        (
            lambda corpus, training: training[2].unlink(),
            DataLayoutError,
            r"1 audio file\(s\) listed but not found:\n  .*id10000/video/00002\.wav",
        ),
        (_write_empty_audio, AudioDecodeError, r"id10000/video/00000\.wav' holds no audio samples"),
        (
            lambda corpus, training: training[1].write_bytes(b"RIFF" + bytes(100)),
            AudioDecodeError,
            r"cannot be used:\n  .*id10000/video/00001\.wav",
        ),
    ],
    ids=["empty-root", "split-file-missing", "listed-file-missing", "zero-length-audio", "undecodable-audio"],
)
def test_bad_corpus_fails_before_training_with_no_outputs(tmp_path, damage, error, message):
    corpus = tmp_path / "corpus"
    damage(corpus, write_voxceleb1(corpus))
    run_dir = tmp_path / "run"
    with pytest.raises(error, match=message):
        run_in_process([*SID, f"task.data_root={corpus}", "trainer.max_steps=2"], run_dir)
    assert not any((run_dir / name).exists() for name in OUTPUTS)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["interface=single_layer", "interface.layer=7", *TINY],
            r"layer must be a layer index in \[-3, 2\].*got 7",
        ),
        pytest.param(  # importing torchaudio's bundles and s3prl's hub takes seconds
            ["upstream=torchaudio", "upstream.bundle=HUBERT_BSE", "upstream.pretrained=false"],
            r"did you mean HUBERT_BASE",
            marks=pytest.mark.slow,
        ),
        pytest.param(
            ["upstream=s3prl", "upstream.name=hubret"],
            r"upstream.name='hubret' is not an s3prl upstream; did you mean hubert",
            marks=pytest.mark.slow,
        ),
    ],
    ids=["interface-hyperparameter", "torchaudio-bundle-name", "s3prl-name"],
)
def test_bad_model_settings_fail_before_training_with_no_outputs(tmp_path, overrides, message):
    """Hydra builds upstreams and interfaces, so their ValueError arrives wrapped (and quoted) in Hydra's
    InstantiationException."""
    run_dir = tmp_path / "run"
    with pytest.raises(InstantiationException, match=message) as raised:
        run_in_process([*TRAINING, *overrides], run_dir)
    assert isinstance(raised.value.__cause__, ValueError)
    assert not any((run_dir / name).exists() for name in OUTPUTS)


def test_other_rates_channels_and_too_long_utterances_are_handled_and_counted(tmp_path, caplog):
    """A stereo 44.1 kHz file trains like any other once task.resample=true allows it in this 16 kHz corpus
    (counted under data_policy.sample_rate); training utterances over task.max_seconds are left out
    (on_too_long=skip), logged, and counted in results.json; dev keeps its long one."""
    corpus = tmp_path / "corpus"
    training = write_voxceleb1(corpus)
    time_axis = np.arange(22050) / 44100
    tone = 0.3 * np.sin(2 * np.pi * 300 * time_axis)
    soundfile.write(str(training[0]), np.stack([tone, 0.5 * tone], axis=1), 44100)
    too_long = [training[1], corpus / "wav" / "id10001" / "video" / "00006.wav"]  # one train, one dev
    for path in too_long:
        soundfile.write(str(path), np.zeros(32000, dtype=np.float32) + 0.1, 16000)
    run_dir = tmp_path / "run"
    overrides = [
        *SID,
        f"task.data_root={corpus}",
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "task.resample=true",
    ]
    with caplog.at_level(logging.WARNING):
        results = run_in_process([*overrides, "task.max_seconds=1.0", "task.on_too_long=skip"], run_dir)
    assert results["data_policy"]["train"]["sample_rate"]["rates"] == {"44100": 1}
    # dev and test are never limited (issue 14): the long dev utterance is evaluated whole
    assert results["too_long"] == {"max_seconds": 1.0, "policy": "skip", "train": 1, "dev": 0, "test": 0}
    assert results["data_policy"]["train"]["too_long"] == {
        "count": 1,
        "max_seconds": 1.0,
        "policy": "left out",
    }
    assert results["data_policy"]["dev"]["utterances"] == 3
    assert "1 of 18 utterances are longer than max_seconds=1.0" in caplog.text
    assert json.loads((run_dir / "results.json").read_text())["too_long"] == results["too_long"]
