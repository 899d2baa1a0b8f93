"""Forward+backward time of every interface config on random hidden states (L=13, D=768, 32 x 600 frames).

    python scripts/benchmark.py interfaces --device cpu --repeats 2
    python scripts/benchmark.py interfaces --device cuda --precision bf16 --output docs/interfaces_gpu.md

Each interface is built from configs/interface/<name>.yaml at its defaults and timed on one batch of
B x T valid frames, as in a frozen-upstream training step: forward under the chosen autocast precision,
then backward from a scalar loss into the interface's parameters (interfaces without parameters have
nothing to backpropagate, so their time is the forward). pca_concat is fitted first (not timed).
The median over ``--repeats`` timed runs is reported, after ``--warmup`` untimed ones.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from downstream.heads import count_parameters
from downstream.training.loading import pick_device
from interfaces.base import Interface
from interfaces.configs import build_interface, interface_config_names

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present"
    )
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32", help="autocast dtype")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward+backward runs per interface")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--num-layers", type=int, default=13, help="L (13: Base models)")
    parser.add_argument("--hidden-size", type=int, default=768, help="D (768: Base models)")
    parser.add_argument("--batch-size", type=int, default=32, help="B")
    parser.add_argument("--frames", type=int, default=600, help="T per utterance (600 = 12 s at 50 Hz)")
    parser.add_argument("--interfaces", nargs="+", default=None, help="config names (default: all)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown table here")


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_step(
    interface: Interface,
    hidden_states: torch.Tensor,
    lengths: torch.Tensor,
    dtype: torch.dtype | None,
) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one forward (under autocast when dtype is set) + backward,
    device work included. CPU seconds sum over threads and depend less on other processes' load."""
    device = hidden_states.device
    interface.zero_grad(set_to_none=True)
    synchronize(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        features = interface(hidden_states, lengths)
    if features.requires_grad:
        features.float().square().mean().backward()
    synchronize(device)
    return time.perf_counter() - started, time.process_time() - cpu_started


def benchmark_interface(name: str, args: argparse.Namespace, hidden_states, lengths, device) -> dict:
    interface = build_interface(name, args.num_layers, args.hidden_size).to(device).train()
    if interface.needs_fit:
        interface.fit([(hidden_states, lengths)])
    dtype = PRECISIONS[args.precision]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        time_step(interface, hidden_states, lengths, dtype)
    timings = [time_step(interface, hidden_states, lengths, dtype) for _ in range(args.repeats)]
    seconds = statistics.median(wall for wall, _ in timings)
    frames = hidden_states.shape[1] * hidden_states.shape[2]
    row = {
        "interface": name,
        "trainable params": f"{count_parameters(interface):,}",
        "output size": str(interface.output_size),
        "ms per fwd+bwd": f"{seconds * 1e3:.1f}",
        "frames/s": f"{frames / seconds:,.0f}",
    }
    if device.type == "cuda":
        row["peak GPU MiB"] = f"{torch.cuda.max_memory_allocated(device) / 2**20:,.0f}"
    else:
        row["CPU-time ms"] = f"{statistics.median(cpu for _, cpu in timings) * 1e3:.0f}"
    return row


def markdown_table(rows: list[dict[str, str]], header: str) -> str:
    columns = list(rows[0])
    lines = [header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[column] for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    device = pick_device(args.device, setting="--device")
    if args.precision == "fp16" and device.type != "cuda":
        raise SystemExit("--precision fp16: autocast to float16 is for CUDA; use bf16 on CPU")
    names = args.interfaces or interface_config_names()
    unknown = sorted(set(names) - set(interface_config_names()))
    if unknown:
        raise SystemExit(f"--interfaces: unknown config(s) {unknown}; choose from {interface_config_names()}")

    generator = torch.Generator().manual_seed(0)
    shape = (args.num_layers, args.batch_size, args.frames, args.hidden_size)
    hidden_states = torch.randn(shape, generator=generator).to(device)  # a frozen upstream's output
    lengths = torch.full((args.batch_size,), args.frames, dtype=torch.long, device=device)

    load_at_start = os.getloadavg()[0]
    rows = []
    for name in names:
        rows.append(benchmark_interface(name, args, hidden_states, lengths, device))
        print(f"{name}: {rows[-1]['ms per fwd+bwd']} ms", flush=True)
    header = (
        f"{datetime.date.today().isoformat()}, {describe_device(device)}, torch {torch.__version__}, "
        f"{args.precision}; L={args.num_layers}, D={args.hidden_size}, B x T = {args.batch_size} x {args.frames} "
        f"= {args.batch_size * args.frames:,} frames; median of {args.repeats} after {args.warmup} warmup"
    )
    if device.type == "cpu":
        header += f"; load average {load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end"
    table = markdown_table(rows, header)
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(table)
