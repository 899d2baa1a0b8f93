"""Upstream forward vs the project trainer's full training step; data wait, steps/s, peak memory.

    python scripts/benchmark.py step --device cpu --steps 3 --warmup 1 --batch-size 4 --seconds 2
    python scripts/benchmark.py step upstream=torchaudio upstream.pretrained=false --device cuda \\
        --interfaces weighted_sum,hconv --upstream-variants fp32,bf16,bf16+compile --shared 3,8

Hydra overrides come first, then the options. The project config is composed with the overrides (as
run_downstream.py would), and upstream, interface, head and task are built by the runner's functions.

Per row (one upstream variant x one interface):
- upstream fwd: ``Trainer.upstream_forward`` (frozen, as the trainer runs it) on a fixed synthetic batch
  of ``--batch-size`` utterances of ``--seconds`` s (random waveforms; targets of real training
  utterances of the task's corpus, so every task works);
- step: ``Trainer.training_update`` on that same batch (grad_accum forced to 1): upstream forward,
  interface, head, loss, backward, optimizer update. Both are timed as ``--steps`` calls back to back
  after ``--warmup`` calls, with one device synchronisation at the end, so queued work is counted;
- data wait (first upstream variant only): the same trainer fed by its real DataLoader (the task's corpus, ``--batch-size`` utterances
  per batch, the configured trainer.num_workers) for ``--data-steps`` updates; the share of wall time
  spent in ``next(batches)``, with a device synchronisation after each update (an upper bound on what
  the device waits: it cannot run ahead of the loader);
- peak memory: CUDA max_memory_allocated during the step timing, or the process's peak RSS on CPU;
- syncs/step (CUDA): synchronising CUDA calls in one training step (torch.cuda.set_sync_debug_mode).

``--upstream-variants fp32,bf16,bf16+compile`` builds the upstream with each upstream.precision /
upstream.compile (``fp32+tf32``: fp32 weights, TF32 matmuls, which the project itself never turns on)
and adds the largest per-layer ||h - h_ref||_F / ||h_ref||_F against the first variant, and the time of
its first forward (compilation included).
``--shared 3,8`` times K branches (interfaces cycled from ``--interfaces``) trained on one upstream
forward per batch in one Trainer, against K single-branch trainers (the sum of their step times).
``--eager-update-checks`` adds a row (first variant, first interface) whose trainer counts skipped updates
after every update (one host sync per update, the behaviour before the check became lazy).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import gc
import itertools
import json
import os
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra.utils
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from downstream.training.loading import pick_device, resolve_num_workers
from downstream.training.runner import build_branch, build_task, resolve_trainer_settings, resolved_job_config
from downstream.training.settings import TrainerSettings
from downstream.training.trainer import Trainer
from scripts.bench.interfaces import describe_device, markdown_table, synchronize
from upstream.base import Upstream

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
# name: (upstream.precision, upstream.compile, TF32 matmuls); the project runs fp32 matmuls in full fp32
VARIANTS = {
    "fp32": ("fp32", False, False),
    "fp32+tf32": ("fp32", False, True),
    "bf16": ("bf16", False, False),
    "fp32+compile": ("fp32", True, False),
    "bf16+compile": ("bf16", True, False),
}
SHARED_TARGETS = {3: 0.5, 8: 0.25}  # issue 7: K branches in one process vs K separate runs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides of the project config (before the options)"
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present"
    )
    parser.add_argument("--steps", type=int, default=10, help="timed calls per measurement")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls before timing")
    parser.add_argument("--batch-size", type=int, default=32, help="utterances per batch (B)")
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per synthetic utterance (S)")
    parser.add_argument(
        "--interfaces", default=None, help="comma-separated interface configs (default: the config's)"
    )
    parser.add_argument(
        "--upstream-variants",
        default=None,
        help=f"comma-separated upstream precision variants among {list(VARIANTS)} (default: as configured)",
    )
    parser.add_argument(
        "--shared", default=None, help="comma-separated branch counts K for the shared-upstream rows"
    )
    parser.add_argument(
        "--data-steps", type=int, default=None, help="updates fed by the real DataLoader (0: skip)"
    )
    parser.add_argument(
        "--eager-update-checks", action="store_true", help="add a row with a host check per update"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown tables here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")


# -- building -------------------------------------------------------------------------------------
def compose_run_config(overrides: list[str]) -> DictConfig:
    """The job config run_downstream.py would see for these overrides (``${hydra:...}`` resolved, no hydra node)."""
    os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return resolved_job_config(cfg)


def benchmark_settings(cfg: DictConfig, args: argparse.Namespace) -> TrainerSettings:
    """The run's trainer settings with one batch per update of ``--batch-size`` utterances on the device."""
    settings = resolve_trainer_settings(cfg)
    return dataclasses.replace(
        settings, grad_accum=1, batch_size=args.batch_size, max_batch_seconds=None, device=args.device
    )


def synthetic_batch(
    task, upstream: Upstream, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """B random waveforms of S seconds, collated by the task with the targets of its first B training
    utterances (cycled), pinned for the copy to a GPU as the DataLoader would."""
    utterances = task.utterances("train")
    samples = round(args.seconds * upstream.sample_rate)
    generator = torch.Generator().manual_seed(0)
    items = [
        {"wav": 0.1 * torch.randn(samples, generator=generator), "index": index % len(utterances)}
        for index in range(args.batch_size)
    ]
    batch = task.collate(items, "train", utterances)
    if device.type == "cuda":
        batch = {key: value.pin_memory() if torch.is_tensor(value) else value for key, value in batch.items()}
    return batch


# -- measuring ------------------------------------------------------------------------------------
def seconds_per_call(call: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        call()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        call()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets VmHWM, the peak resident set size


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_syncs(call: Callable[[], Any], device: torch.device) -> int | None:
    """Synchronising CUDA calls made by ``call`` (None on CPU, where nothing waits for a device)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    synchronize(device)
    return sum("synchroniz" in str(warning.message) for warning in caught)


def data_wait(trainer: Trainer, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(share of wall time spent waiting for the next batch, seconds per update) over ``steps`` updates
    fed by the trainer's own DataLoader, after ``warmup`` updates (worker start-up)."""
    batches = trainer._training_batches()  # the trainer's data path: epochs, sampler, workers, pinning
    waited = total = 0.0
    for position in range(warmup + steps):
        started = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        trainer.training_update(iter([batch]))
        synchronize(device)
        if position >= warmup:
            waited += loaded - started
            total += time.perf_counter() - started
    trainer.account_updates()
    return waited / total, total / steps


def hidden_states_of(upstream: Upstream, batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    upstream.to(device)
    states, _ = upstream(batch["wavs"].to(device), batch["wav_lengths"].to(device))
    return states


def describe_precision(cfg: DictConfig) -> str:
    precision = cfg.upstream.get("precision", "fp32")
    return precision + ("+compile" if cfg.upstream.get("compile", False) else "")


def relative_layer_errors(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max over layers of ||other_l - ref_l||_F / ||ref_l||_F for hidden states [L, B, T, D]."""
    difference = (other.float() - reference.float()).flatten(1).norm(dim=1)
    return float((difference / reference.float().flatten(1).norm(dim=1).clamp(min=1e-12)).max())


def measure_row(
    trainer: Trainer, batch: dict[str, Any], args: argparse.Namespace, device: torch.device, data_steps: int
) -> dict[str, Any]:
    """Forward and step times, syncs and peak memory of one trainer on one batch, and the data wait over
    ``data_steps`` updates fed by its DataLoader (none when 0)."""
    forward = seconds_per_call(lambda: trainer.upstream_forward(batch), args.steps, args.warmup, device)
    repeated = itertools.repeat(batch)
    reset_peak_memory(device)
    step = seconds_per_call(lambda: trainer.training_update(repeated), args.steps, args.warmup, device)
    peak = peak_memory_mib(device)
    syncs = count_syncs(lambda: trainer.training_update(repeated), device)
    trainer.account_updates()
    row = {"forward_s": forward, "step_s": step, "ratio": step / forward, "peak_mib": peak, "syncs": syncs}
    if data_steps:
        row["data_wait"], row["data_step_s"] = data_wait(trainer, data_steps, args.warmup, device)
    return row


# -- the run --------------------------------------------------------------------------------------
class StepBenchmark:
    """The composed base config, task and options shared by every row."""

    def __init__(self, args: argparse.Namespace, device: torch.device, run_root: Path) -> None:
        self.args, self.device, self.run_root = args, device, run_root
        self.base = compose_run_config(list(args.overrides))
        self.task = build_task(self.base.task)
        self.single_step_s: dict[str, float] = {}
        self.reference_states: torch.Tensor | None = None
        self.first_variant: str | None = None

    def config_for(self, interface: str, variant: str | None) -> DictConfig:
        extra = [f"interface={interface}"]
        if variant is not None:
            precision, compiled, _ = VARIANTS[variant]
            extra += [f"upstream.precision={precision}", f"upstream.compile={str(compiled).lower()}"]
        return compose_run_config([*self.args.overrides, *extra])

    def trainer(self, interfaces: list[str], variant: str | None, upstream: Upstream, batch: dict) -> Trainer:
        """One Trainer with a branch per interface on ``upstream``; interfaces that need fitting are fitted
        on the batch's hidden states."""
        cfgs = [self.config_for(name, variant) for name in interfaces]
        settings = benchmark_settings(cfgs[0], self.args)
        folder = Path(tempfile.mkdtemp(dir=self.run_root))
        branches = [
            build_branch(cfg, upstream, self.task, settings, folder / f"branch{position}")
            for position, cfg in enumerate(cfgs)
        ]
        trainer = Trainer(settings, upstream, self.task, branches, seed=cfgs[0].seed)
        for branch in branches:
            if branch.interface.needs_fit:
                branch.interface.fit([trainer.upstream_forward(batch)])
        return trainer

    def variant_rows(
        self, variant: str | None, interfaces: list[str], shared: list[int]
    ) -> tuple[list, list]:
        args, device = self.args, self.device
        cfg = self.config_for(interfaces[0], variant)
        torch.manual_seed(
            0
        )  # every variant gets the same (random-init) weights, so their states are comparable
        upstream = hydra.utils.instantiate(cfg.upstream)
        batch = synthetic_batch(self.task, upstream, args, device)
        started = time.perf_counter()
        states = hidden_states_of(upstream, batch, device)  # compiles, for a compiled variant
        synchronize(device)
        first_call_s = time.perf_counter() - started
        if self.reference_states is None:
            self.reference_states = states
        error = relative_layer_errors(self.reference_states, states)
        del states
        label = f"{upstream.name} {variant or describe_precision(cfg)}"
        rows = []
        trials = [(name, False) for name in interfaces]
        if args.eager_update_checks and variant == self.first_variant:
            trials.append((interfaces[0], True))
        for interface, eager in trials:
            trainer = self.trainer([interface], variant, upstream, batch)
            trainer.check_updates_lazily = not eager
            # the loader does not depend on the upstream variant; real batches of varying lengths would
            # also make a compiled upstream recompile
            data_steps = args.data_steps if variant == self.first_variant else 0
            row = measure_row(trainer, batch, args, device, data_steps)
            row.update(
                upstream=label,
                interface=interface + (" (check every update)" if eager else ""),
                max_layer_rel_error=error,
                first_call_s=first_call_s,
            )
            rows.append(row)
            if not eager:
                self.single_step_s.setdefault(interface, row["step_s"])
            print(f"{label} | {row['interface']}: step {row['step_s'] * 1e3:.1f} ms", flush=True)
            del trainer
            free_memory(device)
        shared_rows = [self.shared_row(count, interfaces, variant, upstream, batch) for count in shared]
        return rows, shared_rows

    def shared_row(
        self, count: int, interfaces: list[str], variant: str | None, upstream: Upstream, batch: dict
    ) -> dict[str, Any]:
        """K branches (interfaces cycled) in one Trainer vs the sum of K single-branch step times."""
        names = list(itertools.islice(itertools.cycle(interfaces), count))
        trainer = self.trainer(names, variant, upstream, batch)
        repeated = itertools.repeat(batch)
        reset_peak_memory(self.device)
        update = functools.partial(trainer.training_update, repeated)
        step = seconds_per_call(update, self.args.steps, self.args.warmup, self.device)
        trainer.account_updates()
        separate = sum(self.single_step_s[name] for name in names)
        row = {
            "k": count,
            "interfaces": names,
            "shared_step_s": step,
            "separate_steps_s": separate,
            "ratio": step / separate,
            "target": SHARED_TARGETS.get(count),
            "peak_mib": peak_memory_mib(self.device),
        }
        print(f"shared K={count}: {step * 1e3:.1f} ms vs {separate * 1e3:.1f} ms separate", flush=True)
        del trainer
        free_memory(self.device)
        return row


def run(args: argparse.Namespace) -> None:
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or not args.seconds > 0:
        raise SystemExit(
            f"--steps >= 1, --warmup >= 0, --batch-size >= 1 and --seconds > 0 expected, got {args.steps}, "
            f"{args.warmup}, {args.batch_size}, {args.seconds}"
        )
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    args.data_steps = args.steps if args.data_steps is None else args.data_steps
    device = pick_device(args.device, setting="--device")
    args.device = device.type
    variants = args.upstream_variants.split(",") if args.upstream_variants else [None]
    unknown = [variant for variant in variants if variant is not None and variant not in VARIANTS]
    if unknown:
        raise SystemExit(f"--upstream-variants: unknown {unknown}; choose from {list(VARIANTS)}")
    shared = [int(k) for k in args.shared.split(",")] if args.shared else []
    if any(k < 1 for k in shared):
        raise SystemExit(f"--shared: branch counts must be >= 1, got {shared}")

    rows, shared_rows = [], []
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    with tempfile.TemporaryDirectory(prefix="bench-step-") as folder:
        bench = StepBenchmark(args, device, Path(folder))
        interfaces = args.interfaces.split(",") if args.interfaces else [str(bench.base.interface_name)]
        bench.first_variant = variants[0]
        for position, variant in enumerate(variants):
            torch.backends.cuda.matmul.allow_tf32 = variant is not None and VARIANTS[variant][2]
            try:
                variant_rows, variant_shared = bench.variant_rows(
                    variant, interfaces, shared if position == 0 else []
                )
            finally:
                torch.backends.cuda.matmul.allow_tf32 = tf32_before
            rows += variant_rows
            shared_rows += variant_shared
            free_memory(device)
        header = describe_run(bench.base, args, device)

    text = markdown_table([format_row(row, device) for row in rows], header)
    if shared_rows:
        text += "\n" + markdown_table(
            [format_shared_row(row) for row in shared_rows],
            "Shared upstream: K branches trained on one upstream forward per batch (one Trainer) vs K "
            "single-branch trainers (sum of their step times in the rows above)",
        )
    print(text)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "rows": rows, "shared": shared_rows}, indent=2))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def describe_run(cfg: DictConfig, args: argparse.Namespace, device: torch.device) -> str:
    load = f"; load average {os.getloadavg()[0]:.1f}" if device.type == "cpu" else ""
    return (
        f"{datetime.date.today().isoformat()}, {describe_device(device)}, torch {torch.__version__}; "
        f"task {cfg.task_name}, trainer.precision={cfg.trainer.precision}, "
        f"trainer.num_workers={cfg.trainer.num_workers} "
        f"({resolve_num_workers(cfg.trainer.num_workers, device)} workers); synthetic batch {args.batch_size} x {args.seconds:g} s; "
        f"mean of {args.steps} calls after {args.warmup} warm-up; data wait over {args.data_steps} updates of "
        f"{args.batch_size} corpus utterances{load}"
    )


def format_row(row: dict[str, Any], device: torch.device) -> dict[str, str]:
    memory = "peak CUDA MiB" if device.type == "cuda" else "peak RSS MiB"
    formatted = {
        "upstream": row["upstream"],
        "interface": row["interface"],
        "upstream fwd ms": f"{row['forward_s'] * 1e3:.1f}",
        "step ms": f"{row['step_s'] * 1e3:.1f}",
        "step / fwd": f"{row['ratio']:.2f}",
        "data wait": f"{100 * row['data_wait']:.1f}%" if "data_wait" in row else "-",
        "steps/s": f"{1 / row['step_s']:.2f}",
        memory: f"{row['peak_mib']:,.0f}",
        "max layer rel. err": f"{row['max_layer_rel_error']:.2e}",
        "first call s": f"{row['first_call_s']:.1f}",
    }
    if device.type == "cuda":
        formatted["syncs/step"] = str(row["syncs"])
    return formatted


def format_shared_row(row: dict[str, Any]) -> dict[str, str]:
    target = row["target"]
    return {
        "K": str(row["k"]),
        "interfaces": ", ".join(row["interfaces"]),
        "one trainer ms/step": f"{row['shared_step_s'] * 1e3:.1f}",
        "K separate ms/step": f"{row['separate_steps_s'] * 1e3:.1f}",
        "ratio": f"{row['ratio']:.2f}",
        "target": "-" if target is None else f"<= {target}",
    }
