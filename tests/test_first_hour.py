"""What a new user meets in the first hour: thread count, run folder names, result lines, quiet third-party
output, failed launches, "did you mean" and --help, the lr grid-edge warning."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from dataclasses import fields

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from downstream.metrics.display import results_line
from downstream.quiet import quiet_third_party
from downstream.reporting.lr_choice import LrChoice, choice_notes, grid_edge_warning
from downstream.training.config_help import CONFIG_DIR, help_text, suggest
from downstream.training.identity import (
    RunIdentity,
    describe_difference,
    nearest_run,
    upstream_label,
    write_identity,
)
from downstream.training.settings import ConfigValueError, TrainerSettings
from downstream.training.threads import available_cores, choose_threads, quota_cores
from tests.helpers import REPO_ROOT, compose_config

# ---------------------------------------------------------------- threads


def test_cgroup_quota_is_read_in_cores(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert quota_cores(cpu_max, tmp_path / "none", tmp_path / "none") == 1.5
    cpu_max.write_text("max 100000\n")
    assert quota_cores(cpu_max, tmp_path / "none", tmp_path / "none") is None
    (tmp_path / "quota").write_text("200000\n")  # cgroup v1
    (tmp_path / "period").write_text("100000\n")
    assert quota_cores(tmp_path / "none", tmp_path / "quota", tmp_path / "period") == 2.0


def test_threads_are_the_fewest_cores_allowed_minus_workers():
    import os

    affinity = len(os.sched_getaffinity(0))
    assert (
        choose_threads("auto", 0, environ={}, cgroup_limit=None)[0] == available_cores({}).cores == affinity
    )
    # a quota of 0.5 cores still gets one thread; SLURM's allocation below the affinity wins
    assert available_cores({}, cgroup_limit=0.5).cores == 1
    assert available_cores({"SLURM_CPUS_PER_TASK": "1"}, cgroup_limit=None).cores == 1
    threads, why = choose_threads("auto", 1, environ={"SLURM_CPUS_PER_TASK": "1"}, cgroup_limit=None)
    assert threads == 1 and "SLURM_CPUS_PER_TASK" in why  # never below one
    assert choose_threads("auto", 0, environ={"OMP_NUM_THREADS": "3"}) == (3, "OMP_NUM_THREADS")
    assert choose_threads(2, 0, environ={"OMP_NUM_THREADS": "3"})[0] == 2  # trainer.threads wins


def test_trainer_threads_is_a_checked_key_outside_the_run_identity():
    base = {"max_steps": 1, "eval_every": 1, "lr": 0.1, "grad_accum": 1, "batch_size": 1}
    assert TrainerSettings.from_config({**base, "threads": 2}).threads == 2
    with pytest.raises(ConfigValueError, match="trainer.threads=0"):
        TrainerSettings.from_config({**base, "threads": 0})
    assert RunIdentity.of(compose_config(["trainer.threads=1"])).hash == RunIdentity.of(compose_config()).hash


# ---------------------------------------------------------------- run folders


def test_run_folders_name_the_model_and_a_non_default_protocol():
    assert upstream_label("hf", {"model": "facebook/hubert-base-ls960"}) == "hf-hubert-base-ls960"
    assert upstream_label("s3prl", {"name": "wavlm_large", "path": None}) == "s3prl-wavlm_large"
    assert upstream_label("torchaudio", {"bundle": "HUBERT_BASE", "path": None}) == "torchaudio-hubert_base"
    assert upstream_label("hf", {"model": "/models/My Model/"}) == "hf-my-model"
    assert upstream_label("tiny", {"seed": 0}) == "tiny"
    cfg = compose_config(["upstream=hf", "protocol=exact"])
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=True)["dir"]
    assert run_dir.startswith("outputs/pr/hf-hubert-base-ls960/weighted_sum/seed0-exact-")
    assert (
        "-exact-"
        not in OmegaConf.to_container(compose_config(["upstream=hf"]).hydra.run, resolve=True)["dir"]
    )


def test_a_new_run_folder_names_the_settings_that_differ_from_its_nearest_neighbour(tmp_path):
    near, far = (
        RunIdentity.of(compose_config(["trainer.lr=0.5"])),
        RunIdentity.of(compose_config(["seed=3", "trainer.lr=0.2"])),
    )
    write_identity(near, tmp_path / "a")
    write_identity(far, tmp_path / "b")
    new = RunIdentity.of(compose_config())
    folder, differing = nearest_run(new, tmp_path / "new")
    assert folder == tmp_path / "a" and differing == ["trainer.lr"]
    assert describe_difference(new, folder, differing) == "a differs in 1 setting(s): trainer.lr: 0.5 -> 0.01"


# ---------------------------------------------------------------- output


def test_results_line_rounds_to_the_metric_convention_with_its_unit():
    assert results_line("test", {"per": 37.7551234, "loss": 1.23456}, "per") == "test: PER 37.76 %"
    sv = results_line("dev", {"eer": 5.1234, "min_dcf": 0.412345, "scores": 1000}, "eer")
    assert sv == "dev: EER 5.12 %, minDCF 0.4123"
    assert results_line("test", {"mtwv": 0.073612, "queries": 4.0}, "mtwv") == "test: MTWV 0.0736"
    multi = results_line("test", {"cer": 47.67025, "loss": 45.5, "lid_acc": 76.923077}, "cer")
    assert multi == "test: CER 47.67 %, LID accuracy 76.92 %"  # ml_multi's LID accuracy beside its CER


def test_third_party_warnings_are_silenced_unless_debug():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party(debug=True)
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
        quiet_third_party(debug=False)
        warnings.warn_explicit("old API", FutureWarning, "x.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("ours", UserWarning, "y.py", 1, module="downstream.training.runner")
    assert [str(w.message) for w in caught] == ["old API", "ours"]


# ---------------------------------------------------------------- help


def composition_error(overrides: list[str]) -> Exception:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            compose("config", overrides=overrides)
    except Exception as error:  # noqa: BLE001 - the error Hydra raises for these overrides
        return error
    finally:
        GlobalHydra.instance().clear()
    raise AssertionError(f"{overrides} composed")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["trainer.lrr=0.1"], "trainer.lrr: no such key in the trainer config; did you mean trainer.lr?"),
        (["interface=weighted_summ"], "has no option 'weighted_summ'; did you mean weighted_sum?"),
        (
            ["intrface=hconv"],
            "intrface: no such key in the root config; did you mean interface or interface_name?",
        ),
        (["task=sd", "task.num_speaker=3"], "did you mean task.num_speakers?"),
    ],
)
def test_unknown_names_get_the_closest_ones_never_a_plus(overrides, expected):
    message = str(suggest(composition_error(overrides), overrides))
    assert expected in message and "+" not in message


def test_help_lists_every_group_option_and_trainer_key_with_its_description():
    text = help_text()
    for path in CONFIG_DIR.glob("*/*.yaml"):
        if path.parent.name != "hydra":
            assert re.search(rf"^ +\*?{path.stem} +\S", text, flags=re.MULTILINE), (
                path
            )  # option + description
    for field in fields(TrainerSettings):
        assert f"trainer.{field.name} = " in text
    assert "trainer.threads = auto  # torch CPU threads" in text


@pytest.mark.slow
def test_the_command_line_suggests_and_helps(tmp_path):
    def run(*arguments):
        return subprocess.run(
            [sys.executable, "run_downstream.py", *arguments],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    typo = run("trainer.lrr=0.1")
    assert (
        typo.returncode == 1 and "did you mean trainer.lr?" in typo.stderr and "+trainer" not in typo.stderr
    )
    shown = run("--help")
    assert shown.returncode == 0 and "Config groups" in shown.stdout and "trainer.lr = " in shown.stdout
    failed = run("task.data_root=/nonexistent", f"hydra.run.dir={tmp_path / 'run'}")
    assert failed.returncode == 1 and "removed: nothing was trained" in failed.stderr
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- lr search


def test_a_choice_at_the_grid_edge_is_flagged(caplog):
    top = LrChoice(lr=1e-2, dev=5.0, tried=(1e-4, 1e-3, 1e-2), metric="per")
    assert grid_edge_warning(top) == "best lr is the grid's largest: extend the grid above 0.01"
    assert "smallest" in grid_edge_warning(LrChoice(1e-4, 5.0, (1e-4, 1e-3), "per"))
    assert grid_edge_warning(LrChoice(1e-3, 5.0, (1e-4, 1e-3, 1e-2), "per")) is None
    notes = choice_notes({("row", "pr"): top}, lambda row: row)
    assert notes[0].endswith("WARNING: best lr is the grid's largest: extend the grid above 0.01")
    assert "extend the grid above 0.01" in caplog.text
