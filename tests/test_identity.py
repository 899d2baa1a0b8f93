"""Numbers one can publish (issue 13): a run's folder, record and resume follow every setting that changes its
result. Each test gives the input that showed the problem (the issue's numbered items) and checks the fix."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from downstream.training.identity import (
    EXCLUDED_KEYS,
    IDENTITY_FILE,
    RunConfigMismatchError,
    RunIdentity,
    identity_config,
    is_excluded,
    job_dirname,
)
from downstream.training.preemption import EXIT_INTERRUPTED
from downstream.training.run_log import wandb_run_id
from downstream.training.runner import resolve_trainer_settings, run_experiment
from downstream.training.settings import ConfigValueError
from tests.helpers import (
    REPO_ROOT,
    TINY_PAIR_OVERRIDES,
    TINY_UPSTREAM,
    TWO_STEP_RUN,
    compose_config,
    launch_timeout_s,
    read_curve,
    run_downstream_cli,
)

# A run that stops after its first update (a checkpoint at step 1), then can be resumed.
STOPPED_RUN = [*TWO_STEP_RUN, "trainer.stop_after_steps=1"]


def run_dir_of(overrides: list[str]) -> str:
    """hydra.run.dir as Hydra names it for these command-line overrides."""
    return str(OmegaConf.select(compose_config(overrides), "hydra.run.dir"))


def sweep_subdir_of(overrides: list[str]) -> str:
    return str(OmegaConf.select(compose_config(overrides), "hydra.sweep.subdir"))


def run_in_process(overrides: list[str], run_dir: Path) -> dict | None:
    return run_experiment(compose_config(overrides, run_dir=run_dir), run_dir, overrides=overrides)


# -- 1. the folder is the identity ------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        ["trainer.lr=0.001"],
        ["task.data_root=/nonexistent"],
        ["trainer.max_steps=50"],
        ["upstream.seed=1"],
        ["schedule=superb"],
    ],
)
def test_a_result_affecting_setting_gets_a_folder_of_its_own(make_config, change):
    base = ["upstream=tiny"]
    assert run_dir_of(base) != run_dir_of([*base, *change])
    assert run_dir_of([*base, *change]) == run_dir_of([*base, *change])  # and always the same one


def test_two_hugging_face_models_get_two_folders(make_config):
    first = run_dir_of(["upstream=hf", "upstream.model=facebook/hubert-base-ls960"])
    second = run_dir_of(["upstream=hf", "upstream.model=microsoft/wavlm-base-plus"])
    assert first != second
    assert first.startswith("outputs/pr/hf-hubert-base-ls960/weighted_sum/seed0-")
    assert second.startswith("outputs/pr/hf-wavlm-base-plus/weighted_sum/seed0-")


@pytest.mark.parametrize(
    "change",
    [
        ["logger=wandb"],
        ["overwrite=true"],
        ["trainer.num_workers=0"],
        ["trainer.progress_bar=false"],
        ["trainer.stop_after_steps=5"],
        ["trainer.save_every=7"],
        ["debug=true"],
    ],
)
def test_settings_that_cannot_change_the_result_keep_the_folder(make_config, change):
    assert run_dir_of(change) == run_dir_of([])


def test_the_schedule_and_an_explicit_value_that_equals_it_are_one_identity(make_config):
    # the demo schedule's lr is 0.01: saying so explicitly is the same run
    assert run_dir_of(["trainer.lr=0.01"]) == run_dir_of([])
    assert run_dir_of(["trainer.lr=0.02"]) != run_dir_of([])


def test_excluded_keys_are_listed_once_and_exist_in_the_config(make_config):
    cfg = compose_config(["logger=wandb", "upstream=hf", "experiment=lr_search"])
    for key in EXCLUDED_KEYS:
        assert OmegaConf.select(cfg, key, default="<missing>") != "<missing>", key
    identity = identity_config(cfg)
    assert not any(is_excluded(key) for key in identity)
    assert identity["task.data_root"] == "${paths.root}/data/mini_superb/LibriSpeech"  # checkout-independent
    assert identity["upstream.model"] == "facebook/hubert-base-ls960"


def test_sweep_job_folders_have_no_path_separators_and_follow_the_settings(make_config):
    nested = sweep_subdir_of(["task.data_root=/a/b", "trainer.lr=0.1"])
    assert "/" not in nested and nested.startswith("task.data_root=a_b,trainer.lr=0.1-")
    assert sweep_subdir_of(["task.data_root=/a/c", "trainer.lr=0.1"]) != nested
    # launcher and logger choices are not part of the name; the hash still is
    assert sweep_subdir_of(["trainer.lr=0.1", "logger=wandb"]) == sweep_subdir_of(["trainer.lr=0.1"])
    assert job_dirname(["hydra/launcher=parallel"], "12345678") == "12345678"


#: the overrides of a fusion sweep job of docs/fusion.md's offline pair (longer than a folder name holds)
FUSION_JOB = [
    *TINY_PAIR_OVERRIDES,
    "task=ks",
    "trainer.max_steps=4",
    "trainer.eval_every=4",
    "trainer.limit_eval_batches=2",
    "interface=ws_fusion",
    "seed=0",
]


def test_a_long_sweep_job_folder_keeps_whole_overrides_short_ones_first(make_config):
    name = sweep_subdir_of(FUSION_JOB)  # as Hydra names the job's folder
    readable, _, digest = name.rpartition("-")
    assert len(digest) == 8 and len(readable.encode()) <= 200
    # what tells a sweep's jobs apart (group choices) comes first, the long member overrides last
    assert readable.startswith("interface=ws_fusion,seed=0,task=ks,upstream=fusion,trainer.")
    # whole overrides were left out from the end, and the name says so; none is cut (hidden_size=9...)
    assert readable.endswith(",...")
    shown = readable.removesuffix(",...").split(",")
    assert set(shown) < {override.lstrip("~") for override in FUSION_JOB}
    assert "upstream.members.random.hidden_size=96" not in shown
    # the same overrides in any order name the same folder (a relaunch finds it); another value another
    assert sweep_subdir_of(FUSION_JOB[::-1]) == name
    other = sweep_subdir_of([*FUSION_JOB[:3], "upstream.members.random.hidden_size=48", *FUSION_JOB[4:]])
    assert other != name and other.rpartition("-")[0] == readable


def test_a_short_job_folder_name_keeps_every_override_and_an_overlong_one_names_none():
    assert job_dirname(["trainer.lr=0.1", "seed=1", "interface=hconv"], "12345678") == (
        "interface=hconv,seed=1,trainer.lr=0.1-12345678"
    )
    assert job_dirname([f"interface.option={'x' * 250}", "seed=1"], "12345678") == "seed=1,...-12345678"
    assert job_dirname([f"interface.option={'x' * 250}"], "12345678") == "...-12345678"


# -- 2. resume and skip check the stored settings --------------------------------------------------------


@pytest.mark.slow
def test_a_relaunch_with_other_settings_is_refused_naming_the_keys(make_config, tmp_path):
    run_dir = tmp_path / "run"
    assert run_in_process(STOPPED_RUN, run_dir) is None  # a checkpoint at step 1 of lr 0.01
    checkpoint = (run_dir / "last.pt").read_bytes()
    with pytest.raises(RunConfigMismatchError) as refused:
        run_in_process([*TWO_STEP_RUN, "trainer.lr=0.001"], run_dir)
    message = str(refused.value)
    assert "trainer.lr: 0.01 in the folder, 0.001 now" in message
    assert "overwrite=true" in message and "hydra.run.dir" in message
    assert (run_dir / "last.pt").read_bytes() == checkpoint  # nothing resumed, nothing written

    # another upstream: every differing key is listed
    with pytest.raises(RunConfigMismatchError, match="upstream.hidden_size: 32 in the folder, 48 now"):
        run_in_process([*TWO_STEP_RUN, "upstream.hidden_size=48"], run_dir)

    finished = run_in_process(TWO_STEP_RUN, run_dir)  # the same settings resume and finish
    assert finished["config_hash"] == json.loads((run_dir / IDENTITY_FILE).read_text())["hash"]
    with pytest.raises(RunConfigMismatchError, match="trainer.lr: 0.01 in the folder, 0.001 now"):
        run_in_process([*TWO_STEP_RUN, "trainer.lr=0.001"], run_dir)  # no skip under another label
    redone = run_in_process([*TWO_STEP_RUN, "trainer.lr=0.001", "overwrite=true"], run_dir)
    assert redone["trainer"]["lr"] == 0.001
    assert json.loads((run_dir / IDENTITY_FILE).read_text())["config"]["trainer.lr"] == 0.001


def test_a_folder_with_a_run_but_no_identity_is_refused(make_config, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"a checkpoint of an older version")
    with pytest.raises(RunConfigMismatchError, match="without identity.json"):
        run_in_process(TWO_STEP_RUN, tmp_path)


@pytest.mark.slow
def test_a_finished_run_is_skipped_before_torch_is_imported(tmp_path):
    """The relaunch of a finished run returns without importing torch (what makes it take about a second)."""
    run_dir = tmp_path / "run"
    run_downstream_cli([*TWO_STEP_RUN, f"hydra.run.dir={run_dir}"])
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['run_downstream.py', *{[*TWO_STEP_RUN, f'hydra.run.dir={run_dir}']!r}]\n"
        "try:\n    runpy.run_path('run_downstream.py', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert not exit.code, exit.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = dict(os.environ, WANDB_MODE="disabled")
    completed = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=launch_timeout_s(updates=0),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "torch imported: False" in completed.stdout
    assert "skipping" in completed.stdout + completed.stderr
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp


# -- 3. the effective settings, before and after ---------------------------------------------------------


@pytest.mark.slow
def test_cfg_job_resolve_shows_the_schedules_values_and_an_override_wins():
    shown = yaml.safe_load(run_downstream_cli(["--cfg", "job", "--resolve"]).stdout)
    assert shown["trainer"]["lr"] == 0.01 and shown["trainer"]["batch_size"] == 8  # PR's demo schedule
    assert shown["trainer"]["grad_accum"] == 1 and shown["trainer"]["max_steps"] == 300
    assert shown["trainer"]["eval_every"] == 100
    real = yaml.safe_load(
        run_downstream_cli(
            ["--cfg", "job", "--resolve", "task.data_root=/data/LibriSpeech", "trainer.lr=0.5"]
        ).stdout
    )
    assert real["trainer"]["lr"] == 0.5 and real["trainer"]["batch_size"] == 16  # superb, lr overridden
    assert real["trainer"]["grad_accum"] == 2 and real["trainer"]["max_steps"] == 100000


def test_max_batch_seconds_replaces_the_schedules_batch_size(make_config):
    settings = resolve_trainer_settings(compose_config(["trainer.max_batch_seconds=30"]))
    assert settings.batch_size is None and settings.max_batch_seconds == 30


@pytest.mark.slow
def test_the_saved_hydra_config_holds_the_values_the_run_used(tmp_path):
    run_dir = tmp_path / "run"
    run_downstream_cli(
        [
            *TINY_UPSTREAM,
            "trainer.max_steps=1",
            "trainer.eval_every=1",
            "trainer.limit_eval_batches=1",
            f"hydra.run.dir={run_dir}",
        ]
    )
    saved = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert saved["trainer"]["lr"] == 0.01 and saved["trainer"]["batch_size"] == 8
    assert saved["task"]["data_root"] == str(REPO_ROOT / "data" / "mini_superb" / "LibriSpeech")
    assert saved["interface_name"] == "weighted_sum"
    stored = json.loads((run_dir / IDENTITY_FILE).read_text())
    assert stored["config"]["trainer.batch_size"] == 8


# -- 4. typed validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.lr=abc", r"trainer.lr='abc' \(str\) is not allowed: trainer.lr must be a number > 0"),
        ("trainer.lr=0", r"trainer.lr=0 \(int\) is not allowed: trainer.lr must be a number > 0"),
        ("trainer.max_steps=1.5", r"trainer.max_steps=1.5 \(float\) is not allowed: .* an integer >= 1"),
        ("trainer.batch_size=true", r"trainer.batch_size=True \(bool\) .* an integer >= 1 or null"),
        ("trainer.num_workers=-1", r"trainer.num_workers=-1 .* auto or an integer >= 0"),
        ("trainer.progress_bar=maybe", r"trainer.progress_bar='maybe' .* one of auto, true, false"),
        ("trainer.optimizer=sgd", r"trainer.optimizer='sgd' .* one of adam, adamw"),
        ("trainer.lr=null", r"trainer.lr=null \(NoneType\) .* a number > 0"),
    ],
)
def test_a_bad_trainer_value_names_the_key_the_value_and_what_is_allowed(make_config, override, message):
    with pytest.raises(ConfigValueError, match=message):
        resolve_trainer_settings(compose_config([override]))


# -- 5. one message, exit 1; Ctrl-C ------------------------------------------------------------------------


def cli(arguments: list[str]) -> subprocess.CompletedProcess:
    """run_downstream.py ARGUMENTS, whatever its exit status (HYDRA_FULL_ERROR unset)."""
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    env.update(WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "run_downstream.py", *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=launch_timeout_s(updates=50),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "first_line"),
    [
        (["trainer.lr=abc"], "error: ConfigValueError: trainer.lr='abc' (str) is not allowed"),
        (
            ["task.data_root=/nonexistent"],
            "error: DataLayoutError: LibriSpeech root '/nonexistent' does not exist",
        ),
        (["schedule=fast"], "error: InterpolationResolutionError: ValueError raised while resolving"),
        (
            ["upstream.hidden_size=30"],  # raised inside Hydra's instantiate: the real error leads
            "error: ValueError: upstream.hidden_size must be a positive multiple of num_heads=4, got 30\n"
            "(raised while building upstream)",
        ),
    ],
)
def test_errors_end_with_one_message_and_status_1(tmp_path, overrides, first_line):
    arguments = [*TWO_STEP_RUN, *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    failed = cli(arguments)
    assert failed.returncode == 1
    assert failed.stderr.startswith(first_line), failed.stderr
    assert "Traceback" not in failed.stderr and "Error executing job" not in failed.stderr
    assert failed.stderr.rstrip().endswith("debug=true or HYDRA_FULL_ERROR=1 shows the traceback)")
    debugged = cli([*arguments, "debug=true"])
    assert debugged.returncode == 1 and "Traceback" in debugged.stderr


@pytest.mark.slow
def test_a_sweep_with_failed_jobs_ends_with_one_line_and_no_hydra_advice(tmp_path):
    """Each failed job prints its message once; the sweep's end adds one line, not the first job's message
    again with Hydra's HYDRA_FULL_ERROR advice."""
    roots = ["/nonexistent-a", "/nonexistent-b"]
    failed = cli(["-m", *TWO_STEP_RUN, f"task.data_root={','.join(roots)}", f"hydra.sweep.dir={tmp_path}"])
    assert failed.returncode == 1
    for root in roots:
        assert failed.stderr.count(f"LibriSpeech root '{root}' does not exist") == 1, failed.stderr
    assert "HYDRA_FULL_ERROR=1 for a complete stack trace" not in failed.stderr
    assert failed.stderr.rstrip().endswith("the command that continues the sweep are above"), failed.stderr


@pytest.mark.slow
def test_a_failing_sweep_job_reports_itself_once_and_the_other_jobs_still_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    failed = cli(["-m", *TWO_STEP_RUN, "task=er", "trainer.lr=abc,0.01", f"hydra.sweep.dir={sweep_dir}"])
    assert failed.returncode == 1
    # the job's own message when it failed, once; the sweep's end says jobs failed
    assert failed.stderr.count("error: ConfigValueError: trainer.lr='abc'") == 1
    assert "error: the sweep ended with failed jobs" in failed.stderr
    assert "Traceback" not in failed.stderr
    (finished,) = sweep_dir.glob("*/results.json")
    assert json.loads(finished.read_text())["trainer"]["lr"] == 0.01
    assert "trainer.lr=0.01," in finished.parent.name


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_exits_130_then_the_relaunch_resumes(tmp_path):
    run_dir = tmp_path / "run"
    schedule = [*TINY_UPSTREAM, "trainer.max_steps=400", "trainer.eval_every=400", "trainer.save_every=3"]
    schedule += ["trainer.batch_size=2", "trainer.limit_eval_batches=1", "trainer.log_every=1"]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "run_downstream.py", *schedule, f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + launch_timeout_s(updates=10)
    while not (run_dir / "last.pt").exists():  # the first checkpoint (step 3): training is under way
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=launch_timeout_s(updates=10))
    assert process.returncode == EXIT_INTERRUPTED, stderr
    assert "to resume, run:" in stderr and "Traceback" not in stderr
    stopped_at = torch.load(run_dir / "last.pt", weights_only=True)["progress"]["step"]
    assert stopped_at >= 3 and not (run_dir / "results.json").exists()
    log_text = (run_dir / "run_downstream.log").read_text()
    assert f"stopped at step {stopped_at} (SIGINT) with a checkpoint" in log_text
    # the relaunch continues from that step (stopped again at once, to keep the test short)
    resumed = cli([*schedule, "trainer.stop_after_steps=1", f"hydra.run.dir={run_dir}"])
    assert resumed.returncode == 75, resumed.stderr
    assert f"resumed at step {stopped_at}" in (run_dir / "run_downstream.log").read_text()


# -- 6. W&B with a key and no network ----------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # free, and nothing listens on it once the socket is closed


@pytest.mark.slow
def test_wandb_with_a_key_and_no_network_logs_offline_and_writes_results(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        HOME=str(tmp_path / "home"),
        WANDB_API_KEY="0123456789abcdef0123456789abcdef01234567",
        WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}",
    )
    completed = run_downstream_cli([*TWO_STEP_RUN, "logger=wandb", f"hydra.run.dir={run_dir}"], env=env)
    assert (run_dir / "results.json").is_file()
    assert "does not answer; logging offline" in (run_dir / "run_downstream.log").read_text()
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    run_id = (run_dir / "wandb" / "run_id.txt").read_text().strip()
    assert offline.name.endswith(run_id)
    # the config W&B received (wandb logs it in debug.log; offline runs keep it only in their binary file)
    (line,) = [x for x in (run_dir / "wandb" / "debug.log").read_text().splitlines() if "config: {'" in x]
    config = ast.literal_eval(line[line.index("config: ") + len("config: ") :])
    assert config["trainer"]["lr"] == 0.01  # the resolved settings, not the schedule's nulls
    assert config["environment"]["packages"]["torch"] == metadata.version("torch")
    assert config["config_hash"] == json.loads((run_dir / "results.json").read_text())["config_hash"]
    assert completed.returncode == 0


def test_wandb_run_ids_are_one_per_run_folder(tmp_path):
    first, second = tmp_path / "a" / "seed0", tmp_path / "b" / "seed0"  # same seed, two folders
    assert wandb_run_id(first) != wandb_run_id(second)
    assert wandb_run_id(first) == wandb_run_id(first)  # a resumed launch continues its W&B run


# -- 8. the curve after a resume -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_training_loss_after_a_resume_equals_the_uninterrupted_curve(make_config, tmp_path):
    schedule = [*TWO_STEP_RUN, "trainer.max_steps=4", "trainer.eval_every=4", "trainer.log_every=50"]
    straight = tmp_path / "straight"
    run_in_process(schedule, straight)
    resumed = tmp_path / "resumed"
    assert run_in_process([*schedule, "trainer.stop_after_steps=2"], resumed) is None
    run_in_process(schedule, resumed)
    losses = {
        name: [(r["step"], r["loss"]) for r in read_curve(folder) if r["split"] == "train"]
        for name, folder in (("straight", straight), ("resumed", resumed))
    }
    assert losses["resumed"] == losses["straight"]  # one record, at step 4: the mean of all four updates
    assert [step for step, _ in losses["straight"]] == [4]


# -- 9, 10. permissions, progress without a terminal ------------------------------------------------------


@pytest.mark.slow
def test_one_runs_record_permissions_and_progress_lines(make_config, tmp_path, caplog):
    """results.json records the trainer settings and the environment (3); every output file gets the
    umask's permissions (9); without a terminal, progress is logged every log_every updates (10)."""
    previous = os.umask(0o027)
    try:
        with caplog.at_level(logging.INFO, logger="downstream.training.trainer"):
            results = run_in_process(TWO_STEP_RUN, tmp_path)
    finally:
        os.umask(previous)
    trainer = results["trainer"]
    # TWO_STEP_RUN sets steps, eval interval and batch size; lr and accumulation are PR's demo schedule's
    assert (trainer["max_steps"], trainer["eval_every"], trainer["batch_size"]) == (2, 2, 2)
    assert (trainer["lr"], trainer["grad_accum"]) == (0.01, 1)
    assert trainer["interface_lr"] == 0.01 and trainer["save_every"] == 2  # null means "as lr / eval_every"
    environment = results["environment"]
    for package in ("torch", "torchaudio", "transformers", "s3prl"):
        assert environment["packages"][package] == metadata.version(package)
    assert environment["torch_threads"] == torch.get_num_threads()
    assert environment["device"] == "cpu"
    assert results["config_hash"] == RunIdentity.of(compose_config(TWO_STEP_RUN)).hash
    assert json.loads((tmp_path / "results.json").read_text()) == results

    files = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert {"results.json", "curve.jsonl", "last.pt", "best.pt", IDENTITY_FILE} <= {p.name for p in files}
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in files}
    assert set(modes.values()) == {0o640}, modes

    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert any(line.startswith("step 1/2: train loss ") for line in progress), progress  # log_every=1
    assert any(line.startswith("step 2/2: train loss ") for line in progress), progress
