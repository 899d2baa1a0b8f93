"""The speed paths equal the plain paths: hidden-state cache, sync-free skipping of non-finite updates,
and the step benchmark's table."""

from __future__ import annotations

import copy
import json
import math
import re

import hydra.utils
import pytest
import torch
from torch.utils.data import DataLoader

from downstream.data.dataset import collate_wavs
from downstream.data.sampler import BucketBatchSampler
from downstream.training.branch import NonFiniteLossError
from downstream.training.cache import HiddenStateCacheError, open_hidden_state_cache
from downstream.training.loading import pick_device, split_dataset
from downstream.training.runner import build_branch, build_task, resolve_trainer_settings, run_experiment
from downstream.training.trainer import Trainer
from scripts import benchmark
from tests.helpers import TINY_UPSTREAM
from upstream.tiny import TinyUpstream

FAST = [
    "task=er",
    "trainer.max_steps=4",
    "trainer.eval_every=2",
    "trainer.batch_size=2",
    "trainer.log_every=1",
    *TINY_UPSTREAM,
]


class CountingTinyUpstream(TinyUpstream):
    """The tiny upstream, counting its forward calls (class-wide, as the runner builds its own instance)."""

    calls = 0

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        type(self).calls += 1
        return super().forward(wavs, wav_lengths)


class Float16StatesTinyUpstream(TinyUpstream):
    """The tiny upstream with its hidden states rounded to float16: what a cache stores, computed directly."""

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_states, frame_lengths = super().forward(wavs, wav_lengths)
        return hidden_states.half().float(), frame_lengths


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads wait on each other (10-100x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_losses(run_dir) -> list[float]:
    lines = (run_dir / "curve.jsonl").read_text().splitlines()
    return [record["loss"] for record in map(json.loads, lines) if record["split"] == "train"]


@pytest.mark.slow
def test_cached_runs_equal_plain_runs_on_float16_states_and_skip_the_upstream(make_config, tmp_path):
    cache = [f"cache.dir={tmp_path / 'cache'}", "cache.enabled=true"]
    counting = f"upstream._target_={__name__}.CountingTinyUpstream"
    plain_dir, first_dir, second_dir = tmp_path / "plain", tmp_path / "first", tmp_path / "second"

    plain_overrides = [*FAST, f"upstream._target_={__name__}.Float16StatesTinyUpstream"]
    plain = run_experiment(make_config(plain_overrides, run_dir=plain_dir), plain_dir)
    CountingTinyUpstream.calls = 0
    first = run_experiment(make_config([*FAST, counting, *cache], run_dir=first_dir), first_dir)

    # The first run fills the cache: one upstream call per batch of 2 of each split, none while training.
    cfg = make_config(FAST)
    task = build_task(cfg.task)
    fill_batches = sum(math.ceil(len(task.utterances(split)) / 2) for split in ("train", "dev", "test"))
    assert CountingTinyUpstream.calls == fill_batches
    assert sorted(path.name.split("-")[0] for path in (tmp_path / "cache").iterdir()) == [
        "dev",
        "test",
        "train",
    ]

    assert train_losses(first_dir) == pytest.approx(train_losses(plain_dir), rel=1e-5)
    for split in ("dev", "test"):
        assert first[split] == pytest.approx(plain[split], abs=1e-4)
    assert first["best_step"] == plain["best_step"]

    # A later run of another interface on the same upstream and corpus never runs the upstream.
    CountingTinyUpstream.calls = 0
    second_overrides = [*FAST, counting, *cache, "interface=hconv"]
    second = run_experiment(make_config(second_overrides, run_dir=second_dir), second_dir)
    assert CountingTinyUpstream.calls == 0
    assert second["interface"] == "hconv" and len(train_losses(second_dir)) == 4


@pytest.mark.slow
def test_cache_lookup_equals_the_upstream_up_to_float16_rounding(make_config, tmp_path):
    cfg = make_config([*FAST, f"cache.dir={tmp_path}", "cache.enabled=true"])
    settings = resolve_trainer_settings(cfg)
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    device = pick_device(settings.device)
    cache = open_hidden_state_cache(
        dict(cfg.cache), dict(cfg.upstream), upstream, task, settings, seed=cfg.seed, device=device
    )
    for split in ("train", "dev", "test"):
        dataset = split_dataset(task, split, seed=cfg.seed)
        without_audio = cache.index_only(dataset)
        assert without_audio[0]["wav"].numel() == 0 and without_audio.utterances == dataset.utterances
        # shuffle=False, batches of 2: the batches the cache was filled with; shuffled batches of 3: others
        for shuffle, batch_size in ((False, 2), (True, 3)):
            sampler = BucketBatchSampler(dataset.num_samples, batch_size=batch_size, shuffle=shuffle)
            for batch in DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_wavs):
                expected, expected_lengths = upstream(
                    batch["wavs"].to(device), batch["wav_lengths"].to(device)
                )
                cached, lengths = cache.lookup(batch, split, device)
                assert torch.equal(lengths, expected_lengths) and cached.shape == expected.shape
                if not shuffle:
                    assert torch.equal(cached, expected.half().float())
                else:  # float16 rounding (2^-11 relative) + fp32 noise of another batch composition
                    assert ((cached - expected).abs() <= 2**-11 * expected.abs() + 1e-5).all()


def float16_cache_bytes(cfg, task, splits) -> int:
    """Frames of the wav2vec 2.0 CNN, floor((n - 400) / 320) + 1, x L x D x 2 bytes over ``splits``."""
    frames = sum((u.num_samples - 400) // 320 + 1 for split in splits for u in task.utterances(split))
    return frames * (cfg.upstream.num_transformer_layers + 1) * cfg.upstream.hidden_size * 2


def test_cache_refuses_a_size_over_max_gb_and_states_the_size(make_config, tmp_path):
    overrides = [*FAST, f"cache.dir={tmp_path / 'cache'}", "cache.enabled=true", "cache.max_gb=0.0001"]
    cfg = make_config(overrides, run_dir=tmp_path / "run")
    task = build_task(cfg.task)
    size = float16_cache_bytes(cfg, task, ("train", "dev", "test"))
    assert size > 0.0001e9
    with pytest.raises(HiddenStateCacheError, match=re.escape(f"would need {size / 1e9:.3g} GB")):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        # the mini corpus's SID utterances are shorter than SUPERB's 8 s crop, which then cuts nothing
        (
            ["task=sid", "task.train_crop_seconds=1"],
            r"'train'.*random 1 s windows.*Leave 'train' out of cache.splits",
        ),
        (["upstream.trainable=true"], r"needs a frozen upstream"),
        (["cache.splits=[train,eval]"], r"cache.splits must be a non-empty subset"),
    ],
)
def test_cache_refuses_what_it_cannot_serve(make_config, tmp_path, overrides, message):
    cache = [f"cache.dir={tmp_path / 'cache'}", "cache.enabled=true"]
    cfg = make_config([*FAST, *cache, *overrides], run_dir=tmp_path / "run")
    with pytest.raises(HiddenStateCacheError, match=message):
        run_experiment(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_nonfinite_updates_are_skipped_without_a_sync_and_counted(make_config, tmp_path):
    cfg = make_config([*FAST, "trainer.max_bad_steps=2"], run_dir=tmp_path)
    settings = resolve_trainer_settings(cfg)
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    branch = build_branch(cfg, upstream, task, settings, tmp_path)
    trainer = Trainer(settings, upstream, task, [branch], seed=cfg.seed)
    good = next(iter(trainer.train_loader))
    bad = {**good, "wavs": torch.full_like(good["wavs"], float("nan"))}

    def snapshot():
        return copy.deepcopy(branch.model_state()), copy.deepcopy(branch.optimizer.state_dict()["state"])

    def unchanged(before) -> bool:
        weights, state = before
        now_weights, now_state = snapshot()
        same_weights = all(
            torch.equal(now_weights[part][name], value)
            for part in weights
            for name, value in weights[part].items()
        )
        same_state = all(torch.equal(now_state[k][key], v) for k in state for key, v in state[k].items())
        return same_weights and same_state

    trainer.training_update(iter([good]))  # the optimizer state exists from here on
    before = snapshot()
    trainer.check_updates_lazily = False  # the CPU default: counted after every update
    trainer.training_update(iter([bad]))
    assert unchanged(before)
    assert (branch.bad_steps_in_a_row, branch.bad_steps_total) == (1, 1)

    trainer.check_updates_lazily = True  # the accelerator path: counted where the loop syncs anyway
    trainer.training_update(iter([good]))
    assert not unchanged(before)
    assert (branch.bad_steps_in_a_row, len(branch.pending_update_checks)) == (1, 1)
    trainer.account_updates()
    assert (branch.bad_steps_in_a_row, branch.bad_steps_total) == (0, 1)

    before = snapshot()
    for _ in range(3):
        trainer.training_update(iter([bad]))
    assert unchanged(before) and branch.bad_steps_total == 1
    with pytest.raises(NonFiniteLossError, match=r"stopped at step 6: 3 updates in a row .*max_bad_steps=2"):
        trainer.account_updates()
    assert branch.bad_steps_total == 4
    # the learning-rate schedule advances with every update, skipped or not
    assert branch.scheduler.last_epoch == trainer.step == 6


@pytest.mark.slow
def test_step_benchmark_prints_its_table_on_cpu(tmp_path, capsys):
    output = tmp_path / "step.json"
    benchmark.main(
        [
            "step",
            "task=er",
            *TINY_UPSTREAM,
            *("--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-size", "2", "--seconds", "1"),
            *("--interfaces", "weighted_sum,hconv", "--shared", "2", "--data-steps", "2"),
            *("--json", str(output)),
        ]
    )
    printed = capsys.readouterr().out
    columns = "| upstream | interface | upstream fwd ms | step ms | step / fwd | data wait | steps/s | peak RSS MiB |"
    assert columns in printed
    assert "| K | interfaces | one trainer ms/step | K separate ms/step | ratio | target |" in printed
    rows = [line for line in printed.splitlines() if line.startswith("| tiny-hubert L3 D32")]
    assert [row.split(" | ")[1] for row in rows] == ["weighted_sum", "hconv"]

    figures = json.loads(output.read_text())
    for row in figures["rows"]:
        assert row["ratio"] == pytest.approx(row["step_s"] / row["forward_s"])
        assert 0.0 <= row["data_wait"] < 1.0 and row["peak_mib"] > 0
    (shared,) = figures["shared"]
    assert shared["interfaces"] == ["weighted_sum", "hconv"]
    separate = sum(row["step_s"] for row in figures["rows"])
    assert shared["separate_steps_s"] == pytest.approx(separate)
    assert shared["ratio"] == pytest.approx(shared["shared_step_s"] / separate)
