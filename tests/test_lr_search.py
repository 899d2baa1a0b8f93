"""Learning-rate search on one upstream pass: branches that differ in optimizer settings share the upstream
and equal their runs alone, experiment=lr_search chooses each interface's lr on dev, successive halving
stops the worse half of each interface's branches (issue 20)."""

from __future__ import annotations

import csv
import io
import json
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from downstream import reporting
from downstream.reporting.lr_search import REPORT_FILE
from downstream.results import RunResults
from downstream.training.halving import halve
from downstream.training.identity import schedule_of, sweep_values
from downstream.training.runner import (
    Job,
    resolve_trainer_settings,
    resolved_job_config,
    run_experiment,
    run_jobs,
)
from scripts.make_table import main as make_table_main
from tests.helpers import (
    CONFIG_DIR,
    REPO_ROOT,
    assert_same_metrics,
    compose_config,
    read_curve,
    run_downstream_cli,
    write_finished_run,
)
from tests.helpers import SHARED_FAST as FAST

LRS = ("0.001", "0.01", "0.1")
INTERFACES = ("weighted_sum", "last_layer")


def lr_of(run_dir: Path) -> float:
    return json.loads((run_dir / "results.json").read_text())["lr"]


@pytest.mark.slow
def test_lr_search_sweep_trains_in_one_group_equal_to_separate_runs_and_chooses_dev_best(
    make_config, tmp_path
):
    """A 3-lr x 2-interface `experiment=lr_search` sweep trains as ONE group of six branches; each job's
    results equal the same job run alone, and lr_search.md reports, per interface, the test score of the
    lr whose dev score is best (chosen here again from the separate runs)."""
    sweep_dir = tmp_path / "sweep"
    completed = run_downstream_cli(
        [
            "-m",
            "experiment=lr_search",
            f"interface={','.join(INTERFACES)}",
            f"lr_search.grid=[{','.join(LRS)}]",
            *FAST,
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    log = completed.stderr + completed.stdout
    assert "training 6 job(s) on one upstream" in log
    assert log.count("job(s) on one upstream") == 1

    together = {}
    for path in sweep_dir.rglob("results.json"):
        results = json.loads(path.read_text())
        together[(results["interface"], results["lr"])] = results
    assert set(together) == {(name, float(lr)) for name in INTERFACES for lr in LRS}

    alone = {}
    for name in INTERFACES:
        for lr in LRS:
            overrides = [f"interface={name}", f"trainer.lr={lr}", *FAST]
            run_dir = tmp_path / "alone" / f"{name}-{lr}"
            alone[(name, float(lr))] = run_experiment(make_config(overrides, run_dir=run_dir), run_dir)
    for key, results in alone.items():
        assert_same_metrics(together[key], results)
    # the learning rate reached each branch: the runs of one interface do not all score the same
    for name in INTERFACES:
        assert len({json.dumps(alone[(name, float(lr))]["dev"]) for lr in LRS}) > 1

    report = (sweep_dir / REPORT_FILE).read_text()
    for name in INTERFACES:
        dev = {float(lr): alone[(name, float(lr))]["dev"]["per"] for lr in LRS}
        best_lr = min(sorted(dev), key=lambda lr: dev[lr])  # PER: lower is better; a tie keeps the smaller lr
        test = alone[(name, best_lr)]["test"]["per"]
        row = next(line for line in report.splitlines() if f"| {name} " in line)
        assert f"{test:.2f}" in row and f"(n=1, lr {best_lr:g})" in row


def test_jobs_differing_in_the_data_stream_are_refused_together(make_config, tmp_path):
    jobs = []
    for batch_size in (2, 3):
        overrides = ["interface=weighted_sum", *FAST, f"trainer.batch_size={batch_size}"]
        cfg = resolved_job_config(make_config(overrides, run_dir=tmp_path / str(batch_size)))
        jobs.append(Job(cfg, tmp_path / str(batch_size), overrides))
    with pytest.raises(ValueError, match=r"trainer\.batch_size is 2 in .* but 3 in .*only \['lr'"):
        run_jobs(jobs)


def branch(metric: float | None, pool: str = "a", stopped=None) -> SimpleNamespace:
    return SimpleNamespace(best_metric=metric, halving_pool=pool, stopped_early=stopped, run_dir=Path(pool))


def test_halving_stops_the_worse_half_of_each_pool():
    lower = [
        branch(30.0),
        branch(10.0),
        branch(20.0),
        branch(40.0),
        branch(5.0, "b"),
        branch(7.0, "b"),
        branch(1.0, "c"),
    ]
    stopped = halve(lower, higher_is_better=False, step=6)
    assert stopped == [lower[0], lower[3], lower[5]]  # pool a: 30 and 40 of four; pool b: 7 of two; c: alone
    assert lower[3].stopped_early == {"step": 6, "rank": 4, "of": 4}
    assert lower[0].stopped_early == {"step": 6, "rank": 3, "of": 4}
    assert [b.stopped_early for b in (lower[1], lower[2], lower[4], lower[6])] == [None] * 4

    # higher is better; an odd pool keeps ceil(n/2); a tie keeps the earlier job; stopped ones are out
    higher = [branch(50.0), branch(50.0), branch(60.0), branch(99.0, stopped={"step": 2, "rank": 2, "of": 2})]
    assert halve(higher, higher_is_better=True, step=8) == [higher[1]]
    assert higher[1].stopped_early == {"step": 8, "rank": 3, "of": 3}


def halving_jobs(make_config, root: Path, extra: list[str]) -> list[Job]:
    jobs = []
    for name in INTERFACES:
        for lr in ("0.001", "0.1"):
            overrides = [
                f"interface={name}",
                f"trainer.lr={lr}",
                *FAST,
                "trainer.max_steps=6",
                "trainer.halving_steps=[2]",
                *extra,
            ]
            run_dir = root / f"{name}-{lr}"
            jobs.append(Job(resolved_job_config(make_config(overrides, run_dir=run_dir)), run_dir, overrides))
    return jobs


@pytest.mark.slow
def test_successive_halving_stops_half_at_the_first_decision_and_resume_keeps_it(make_config, tmp_path):
    results = run_jobs(halving_jobs(make_config, tmp_path / "once", []))
    stopped = [r for r in results if r["stopped_early"] is not None]
    assert len(stopped) == 2 and {r["interface"] for r in stopped} == set(INTERFACES)
    for name in INTERFACES:
        records = [r for r in results if r["interface"] == name]  # in job order: lr 0.001, then 0.1
        pool = [
            (tmp_path / "once" / f"{name}-{lr}", r) for lr, r in zip(("0.001", "0.1"), records, strict=True)
        ]
        dev_at_2 = {d: next(c["per"] for c in read_curve(d) if c["split"] == "dev") for d, _ in pool}
        worse = max(
            dev_at_2, key=lambda d: (dev_at_2[d], str(d).endswith("-0.1"))
        )  # a tie stops the later job
        for run_dir, record in pool:
            on_disk = json.loads((run_dir / "results.json").read_text())
            assert on_disk == record
            curve = read_curve(run_dir)
            if run_dir == worse:
                assert record["stopped_early"] == {"step": 2, "rank": 2, "of": 2}
                assert record["best_step"] == 2
                assert max(c["step"] for c in curve if c["split"] in ("train", "dev")) == 2
            else:
                assert record["stopped_early"] is None
                assert max(c["step"] for c in curve if c["split"] == "train") == 6
        # the survivor trained as if alone: its results equal its run alone (no halving decision there)
        survivor = next(d for d in dev_at_2 if d != worse)
        lr = str(survivor).rsplit("-", 1)[1]
        alone_dir = tmp_path / "alone" / name
        overrides = [f"interface={name}", f"trainer.lr={lr}", *FAST, "trainer.max_steps=6"]
        alone = run_experiment(make_config(overrides, run_dir=alone_dir), alone_dir)
        assert_same_metrics(next(r for d, r in pool if d == survivor), alone)

    # interrupted after the decision (step 3), then relaunched: the same branches stay stopped, same results
    interrupted = run_jobs(halving_jobs(make_config, tmp_path / "twice", ["trainer.stop_after_steps=3"]))
    assert interrupted == [None] * 4
    resumed = run_jobs(halving_jobs(make_config, tmp_path / "twice", []))
    for first, second in zip(results, resumed, strict=True):
        assert second["stopped_early"] == first["stopped_early"]
        assert_same_metrics(second, first)


def write_search_run(
    root: Path,
    name: str,
    interface: str,
    lr: float | None,
    dev: float,
    test: float,
    seed=0,
    stopped_early=None,
):
    overrides = [f"interface={interface}", f"seed={seed}"] + ([f"trainer.lr={lr}"] if lr is not None else [])
    write_finished_run(
        root / name,
        task="pr",
        metric="per",
        higher_is_better=False,
        interface=interface,
        upstream="hubert (s3prl)",
        seed=seed,
        schedule="superb",
        trainable_params={"interface": 13, "head": 1000, "upstream": 0},
        lr=lr,
        dev={"per": dev},
        test={"per": test},
        overrides=tuple(overrides),
        stopped_early=stopped_early,
    )


def test_full_table_says_which_runs_successive_halving_stopped(tmp_path, capsys):
    """A run cut by successive halving trained fewer steps than its row label suggests: the table says so."""
    root = tmp_path / "lr"
    write_search_run(root, "ws-2", "weighted_sum", 1e-2, dev=12.0, test=30.0)
    write_search_run(
        root,
        "ws-3",
        "weighted_sum",
        1e-3,
        dev=20.0,
        test=22.0,
        stopped_early={"step": 500, "rank": 2, "of": 2},
    )
    assert make_table_main([str(root)]) == 0
    markdown = capsys.readouterr().out
    assert (
        "stopped early by successive halving (trained fewer steps): "
        "weighted_sum (trainer.lr=0.001) (hubert (s3prl), pr) at step 500" in markdown
    )
    assert "trainer.lr=0.01) (hubert (s3prl), pr) at step" not in markdown  # the run trained to the end


def test_table_of_chosen_learning_rates(tmp_path, capsys):
    """The lr with the best mean dev over seeds is chosen per interface; --chosen-lr keeps only its runs,
    one row per interface, and shows the lr in each cell; the full table names the choice in its notes."""
    root = tmp_path / "lr"
    # weighted_sum: 1e-3 has the better single dev (9) but the worse mean dev (9+21)/2 = 15 > (12+14)/2 = 13
    write_search_run(root, "ws-3-s0", "weighted_sum", 1e-3, dev=9.0, test=8.0)
    write_search_run(root, "ws-3-s1", "weighted_sum", 1e-3, dev=21.0, test=20.0, seed=1)
    write_search_run(root, "ws-2-s0", "weighted_sum", 1e-2, dev=12.0, test=30.0)
    write_search_run(root, "ws-2-s1", "weighted_sum", 1e-2, dev=14.0, test=32.0, seed=1)
    # hconv: a tie on dev keeps the smaller lr
    write_search_run(root, "hc-4", "hconv", 1e-4, dev=10.0, test=11.0)
    write_search_run(root, "hc-3", "hconv", 1e-3, dev=10.0, test=5.0)

    chosen = reporting.aggregate(reporting.collect_runs([root], chosen_lr=True))
    cells = {row.interface: chosen.cells[(row, "pr")] for row in chosen.rows}
    assert set(cells) == {"weighted_sum", "hconv"}
    assert cells["weighted_sum"].values == (30.0, 32.0) and cells["weighted_sum"].lr == 1e-2
    assert cells["hconv"].values == (11.0,) and cells["hconv"].lr == 1e-4

    assert make_table_main([str(root), "--chosen-lr"]) == 0
    markdown = capsys.readouterr().out
    assert "31.00 ± 1.41 (n=2, lr 0.01)" in markdown
    assert (
        "lr search pr / hubert (s3prl) / weighted_sum: chose lr 0.01 (dev per 13.00; tried 0.001, 0.01)"
        in markdown
    )
    assert "| 8.00" not in markdown and "14.00" not in markdown  # test of the lr not chosen is not reported

    full = reporting.aggregate(reporting.collect_runs([root]))
    assert len(full.rows) == 4  # one row per interface and lr, as before
    assert any("hconv: chose lr 0.0001" in note for note in full.notes)
    rows = list(csv.DictReader(io.StringIO(reporting.render(chosen, "csv"))))
    assert {row["interface"]: row["lr"] for row in rows} == {"weighted_sum": "0.01", "hconv": "0.0001"}


def test_a_search_needs_the_dev_metric_and_a_single_lr_does_not(tmp_path):
    write_search_run(tmp_path / "one", "a", "weighted_sum", None, dev=1.0, test=2.0)
    record = json.loads((tmp_path / "one" / "a" / "results.json").read_text())
    (tmp_path / "one" / "a" / "results.json").write_text(json.dumps({**record, "dev": {}}))
    assert reporting.collect_runs([tmp_path / "one"], chosen_lr=True).runs  # one lr: nothing to choose

    write_search_run(tmp_path / "one", "b", "weighted_sum", 0.1, dev=1.0, test=2.0)
    with pytest.raises(ValueError, match=r"one/a/results.json: 'dev' has no 'per' entry, needed to choose"):
        reporting.collect_runs([tmp_path / "one"])


def test_results_written_before_lr_and_halving_still_load():
    old = {
        "task": "pr",
        "metric": "per",
        "higher_is_better": False,
        "interface": "weighted_sum",
        "upstream": "tiny",
        "trainable_params": {"interface": 3, "head": 10, "upstream": 0},
        "test": {"per": 9.0},
    }
    results = RunResults.from_dict(old)
    assert results.lr is None and results.stopped_early is None and results.extra == {}


def test_lr_grid_is_a_list_of_learning_rates():
    assert sweep_values([1e-5, 0.001, 1]) == "1e-05,0.001,1.0"
    for bad in ([], "1e-3,1e-2", [0.0], [1e-3, True]):
        with pytest.raises(
            ValueError, match="lr_search.grid must be a non-empty list of positive learning rates"
        ):
            sweep_values(bad)


def test_halving_steps_must_be_evaluation_steps(make_config):
    from downstream.training.runner import resolve_trainer_settings

    for steps in (
        "[3]",
        "[4,2]",
        "[4]",
    ):  # not a multiple of eval_every=2; decreasing; not before max_steps=4
        cfg = make_config(["interface=weighted_sum", *FAST, f"trainer.halving_steps={steps}"])
        with pytest.raises(ValueError, match=r"trainer.halving_steps must be increasing evaluation steps"):
            resolve_trainer_settings(cfg)
    assert resolve_trainer_settings(make_config([*FAST, "trainer.halving_steps=[2]"])).halving_steps == [2]


def documented_lr_search_launches() -> list[list[str]]:
    """The overrides of every `python run_downstream.py -m experiment=lr_search ...` line in docs/sweeps.md and in
    the experiment file's header (shell comments dropped)."""
    lines = (REPO_ROOT / "docs" / "sweeps.md").read_text().splitlines()
    lines += [
        line.lstrip("# ") for line in (CONFIG_DIR / "experiment" / "lr_search.yaml").read_text().splitlines()
    ]
    prefix = "python run_downstream.py -m experiment=lr_search"
    return [shlex.split(line, comments=True)[3:] for line in lines if line.startswith(prefix)]


@pytest.mark.parametrize("launch", documented_lr_search_launches(), ids=" ".join)
def test_documented_lr_search_launches_pass_the_settings_check_on_the_shipped_corpus(launch):
    """Each documented command, with the first value of every swept key, gets past the trainer settings check
    (e.g. halving steps that are evaluation steps of the schedule the command runs under)."""
    job = []
    for override in OverridesParser.create().parse_overrides(launch):
        key = override.get_key_element()
        value = next(override.sweep_string_iterator()) if override.is_sweep_override() else None
        job.append(override.input_line if value is None else f"{key}={value}")
    cfg = compose_config([*job, "trainer.lr=0.001"])
    settings = resolve_trainer_settings(cfg)
    assert settings.lr == 0.001
    for step in settings.halving_steps or ():  # a halving decision needs an evaluation at that step
        assert step % settings.eval_every == 0 and step < settings.max_steps, (launch, step)
    task = cfg.task.schedules[schedule_of(cfg)]
    assert (settings.max_steps, settings.eval_every) == (
        task.max_steps,
        task.eval_every,
    )  # the task's schedule


@pytest.mark.slow
def test_halving_steps_on_a_run_alone_in_its_pool_warn_that_they_do_nothing(make_config, tmp_path, caplog):
    """A plain run (or a sweep outside the shared launcher) has nothing to rank its lr against: the halving
    setting would silently do nothing, so the launch says so."""
    overrides = [*FAST, "trainer.max_steps=2", "trainer.eval_every=1", "trainer.halving_steps=[1]"]
    with caplog.at_level("WARNING", logger="downstream.training.runner"):
        results = run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path)
    assert results["stopped_early"] is None
    (warning,) = [r.getMessage() for r in caplog.records if "halving_steps" in r.getMessage()]
    assert warning.startswith(f"trainer.halving_steps=[1] has no effect on {tmp_path}: no other branch")
