"""HuBERT upstream forward: how far eager fp32 can be sped up, and at what numerical cost.

    python scripts/bench/hubert_forward.py --smoke                      # CPU plumbing check, tiny model
    python scripts/bench/hubert_forward.py --models base,large --output fwd.md --json fwd.json   # on a GPU

The product's frozen torchaudio upstream (upstream/torchaudio_bundle.py, HUBERT_BASE / HUBERT_LARGE
architecture, random weights seeded identically for every variant, nothing downloaded) on one batch of
``--batch-size`` x ``--seconds`` equal-length random waveforms (default 32 x 12 s), then, with
``--varied-batches K``, on K batches of different lengths (train-clean-100-like durations, see
scripts/bench/synthetic_librispeech.py's ``sample_durations``) padded up to a multiple of ``--bucket-seconds`` so a
static compile sees few shapes. Variants (``--variants``):

- ``fp32``: eager, fp32 weights, matmuls in full fp32 (PyTorch's default; cuDNN convolutions may use TF32,
  also PyTorch's default); the reference for every error column;
- ``tf32``: as fp32 with TF32 matmuls and convolutions (``torch.backends.{cuda.matmul,cudnn}.allow_tf32``);
- ``bf16``: ``upstream.precision=bf16`` (weights cast to bfloat16);
- ``bf16+nomask``: bf16, attention without a padding mask (valid only when every utterance in the batch has
  the same length, as here), so scaled_dot_product_attention may pick its flash kernel. A prototype in this
  script (``unmasked_transformer_states``), checked against the product's masked path;
- ``bf16+compile``: ``upstream.compile=true`` as the product runs it (``torch.compile(dynamic=True)``);
- ``bf16+compile-static``: the masked path under ``torch.compile(dynamic=False)``: one graph per padded
  shape, so varied batches need length buckets (``--varied-batches``) to keep recompilations few;
- ``bf16+nomask+compile``: the unmasked path under ``torch.compile(dynamic=False)`` (one shape per bucket);
- ``bf16+nomask+cudagraphs``: the same with ``mode="reduce-overhead"`` (CUDA graphs; static shapes only).

The upstream runs with the product's ``upstream.padding_mode`` unless ``--padding-mode`` says otherwise (the
default, ``exact``, computes HuBERT Base's first group norm over valid frames only).

Per variant: ms per forward (the mean of ``--steps`` calls after ``--warmup``, one device synchronisation
at the end), x real time, speed-up over fp32, peak memory (CUDA max_memory_allocated; CPU: process peak
RSS), first call (compilation included) and the largest per-layer relative error against fp32,
||h - h_fp32||_F / ||h_fp32||_F over valid frames, checked against ``TOLERANCE`` (the product's stated bf16
tolerance, upstream/base.py).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import resource
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))

from scripts.bench.synthetic_librispeech import sample_durations  # noqa: E402
from scripts.bench.vs_s3prl import describe_machine, markdown_table  # noqa: E402
from upstream.torchaudio_bundle import TorchaudioModelUpstream, TorchaudioUpstream  # noqa: E402

TOLERANCE = 0.03  # per-layer relative Frobenius error vs fp32 (upstream/base.py's stated bf16 tolerance)
BUNDLES = {"base": "HUBERT_BASE", "large": "HUBERT_LARGE"}
# name: (upstream.precision, TF32, unmasked attention, compile: None | "dynamic" | "static" | "cudagraphs")
VARIANTS: dict[str, tuple[str, bool, bool, str | None]] = {
    "fp32": ("fp32", False, False, None),
    "tf32": ("fp32", True, False, None),
    "bf16": ("bf16", False, False, None),
    "bf16+nomask": ("bf16", False, True, None),
    "bf16+compile": ("bf16", False, False, "dynamic"),
    "bf16+compile-static": ("bf16", False, False, "static"),
    "bf16+nomask+compile": ("bf16", False, True, "static"),
    "bf16+nomask+cudagraphs": ("bf16", False, True, "cudagraphs"),
}


def tiny_hubert(precision: str, **options: Any) -> TorchaudioModelUpstream:
    """A 2-layer HuBERT-shaped torchaudio model (CPU smoke runs)."""
    from torchaudio.models import wav2vec2_model

    model = wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2,
        extractor_conv_bias=False,
        encoder_embed_dim=32,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=4,
        encoder_num_layers=2,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=64,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=None,
    )
    return TorchaudioModelUpstream(model, name="tiny hubert (torchaudio)", precision=precision, **options)


def unmasked_transformer_states(
    self: TorchaudioModelUpstream, x: torch.Tensor, frame_lengths: torch.Tensor
) -> torch.Tensor:
    """``TorchaudioModelUpstream.transformer_states`` without the attention mask: only for batches whose
    utterances all have the padded length (no padded frame to hide), which the caller guarantees."""
    transformer = self.model.encoder.transformer
    x = transformer._preprocess(x)
    states = [x]
    position_bias = None
    for layer in transformer.layers:
        x, position_bias = layer(x, position_bias=position_bias, attention_mask=None)
        states.append(x)
    if not transformer.layer_norm_first:
        states[-1] = transformer.layer_norm(states[-1])
    return torch.stack(states)


def build(
    model: str, variant: str, device: torch.device, backend: str = "inductor", padding_mode: str | None = None
) -> TorchaudioModelUpstream:
    precision, _, unmasked, compile_mode = VARIANTS[variant]
    options = {} if padding_mode is None else {"padding_mode": padding_mode}
    torch.manual_seed(0)  # the same random weights for every variant
    with torch.device(device):  # initialise on the device (HuBERT Large's CPU init takes seconds)
        if model == "tiny":
            upstream = tiny_hubert(precision, **options)
        else:  # bf16: the seeded fp32 weights, rounded (the product casts after initialising)
            upstream = TorchaudioUpstream(
                bundle=BUNDLES[model], pretrained=False, precision=precision, **options
            )
    upstream = upstream.to(device)
    if unmasked:
        upstream.transformer_states = types.MethodType(unmasked_transformer_states, upstream)
    if compile_mode == "dynamic":
        upstream.use_compile = True  # the product's path: torch.compile(extract, dynamic=True) on first call
        upstream.compile_backend = backend
    elif compile_mode is not None:
        upstream.use_compile = True
        mode = "reduce-overhead" if compile_mode == "cudagraphs" else None
        upstream._compiled_extract = torch.compile(
            upstream.extract, dynamic=False, mode=mode, backend=backend
        )
    return upstream


@contextlib.contextmanager
def tf32(enabled: bool) -> Iterator[None]:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def layer_errors(reference: torch.Tensor, other: torch.Tensor) -> float:
    """max over layers of ||h - h_ref||_F / ||h_ref||_F (both [L, B, T, D], padded frames zero in both)."""
    difference = (other.float() - reference).flatten(1).norm(dim=1)
    return float((difference / reference.flatten(1).norm(dim=1).clamp(min=1e-12)).max())


def time_calls(call: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(first call s, mean s per call over ``steps`` calls after ``warmup`` more)."""
    synchronize(device)
    began = time.perf_counter()
    call()
    synchronize(device)
    first = time.perf_counter() - began
    for _ in range(warmup):
        call()
    synchronize(device)
    began = time.perf_counter()
    for _ in range(steps):
        call()
    synchronize(device)
    return first, (time.perf_counter() - began) / steps


def bucketed_batches(count: int, batch: int, bucket_s: float, scale: float, seed: int = 0) -> list[list[int]]:
    """``count`` batches of ``batch`` utterance lengths (samples) drawn like train-clean-100, sorted, and
    bucketed: the batch is padded up to a multiple of ``bucket_s`` seconds (``lengths[-1]`` is that size)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        lengths = sorted(int(s * 16000) for s in sample_durations(batch, rng, scale))
        bucket = int(bucket_s * 16000 * scale)
        padded = math.ceil(lengths[-1] / bucket) * bucket
        batches.append([*lengths, padded])
    return batches


def measure(
    model: str, variant: str, args: argparse.Namespace, device: torch.device, reference: torch.Tensor | None
) -> dict[str, Any]:
    _, use_tf32, unmasked, compile_mode = VARIANTS[variant]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples = int(args.seconds * 16000)
    generator = torch.Generator().manual_seed(1)
    wavs = torch.randn(args.batch_size, samples, generator=generator).to(device)
    lengths = torch.full((args.batch_size,), samples, device=device)
    row: dict[str, Any] = {"model": model, "variant": variant}
    with tf32(use_tf32):
        upstream = build(model, variant, device, args.compile_backend, args.padding_mode)
        first, seconds = time_calls(
            functools.partial(upstream, wavs, lengths), args.steps, args.warmup, device
        )
        states, _ = upstream(wavs, lengths)
        row.update(
            first_call_s=first, ms=seconds * 1000, x_real_time=args.batch_size * args.seconds / seconds
        )
        row["peak_mib"] = peak_mib(device)
        row["max_layer_rel_err"] = 0.0 if reference is None else layer_errors(reference, states)
        if args.varied_batches and not unmasked and compile_mode != "cudagraphs":
            row.update(varied(upstream, args, device))
    del upstream
    return {"row": row, "states": states if reference is None else None}


def varied(
    upstream: TorchaudioModelUpstream, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Mean time per audio second over bucketed batches of different lengths (a first pass compiles)."""
    batches = bucketed_batches(args.varied_batches, args.batch_size, args.bucket_seconds, args.duration_scale)
    inputs = []
    for spec in batches:
        lengths, padded = spec[:-1], spec[-1]
        wavs = torch.randn(len(lengths), padded).to(device)
        inputs.append((wavs, torch.tensor(lengths, device=device)))
    began = time.perf_counter()
    for wavs, lengths in inputs:
        upstream(wavs, lengths)
    synchronize(device)
    first = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(args.varied_passes):
        for wavs, lengths in inputs:
            upstream(wavs, lengths)
    synchronize(device)
    seconds = (time.perf_counter() - began) / args.varied_passes
    audio = sum(sum(spec[:-1]) for spec in batches) / 16000
    return {
        "varied_shapes": len({spec[-1] for spec in batches}),
        "varied_first_pass_s": first,
        "varied_x_real_time": audio / seconds,
    }


def format_row(row: dict[str, Any], fp32_ms: float | None) -> dict[str, str]:
    error = row["max_layer_rel_err"]
    out = {
        "model": row["model"],
        "variant": row["variant"],
        "ms / forward": f"{row['ms']:.1f}",
        "x real time": f"{row['x_real_time']:,.0f}",
        "vs fp32": f"{fp32_ms / row['ms']:.2f}x" if fp32_ms else "-",
        "peak MiB": f"{row['peak_mib']:,.0f}",
        "first call s": f"{row['first_call_s']:.1f}",
        "max layer rel. err": f"{error:.2e} ({'ok' if error < TOLERANCE else 'OVER'} < {TOLERANCE})",
    }
    if "varied_x_real_time" in row:
        out["bucketed varied batches: x real time (shapes, first pass s)"] = (
            f"{row['varied_x_real_time']:,.0f} ({row['varied_shapes']}, {row['varied_first_pass_s']:.1f})"
        )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, a few calls")
    parser.add_argument("--models", default="base,large", help="comma-separated: base, large (tiny: --smoke)")
    parser.add_argument("--variants", default="fp32,tf32,bf16,bf16+nomask,bf16+compile,bf16+compile-static,bf16+nomask+compile",
                        help=f"comma-separated among {list(VARIANTS)}; the first must be fp32 (the reference)")  # fmt: skip
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12.0)
    parser.add_argument("--steps", type=int, default=10, help="timed calls")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first")
    parser.add_argument(
        "--varied-batches", type=int, default=0, help="also time K bucketed batches of different lengths"
    )
    parser.add_argument("--varied-passes", type=int, default=2, help="timed passes over those batches")
    parser.add_argument(
        "--bucket-seconds", type=float, default=2.0, help="pad varied batches to multiples of this"
    )
    parser.add_argument("--duration-scale", type=float, default=1.0, help="scale the varied durations")
    parser.add_argument("--padding-mode", default=None, help="upstream.padding_mode (default: the product's)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (smoke: eager)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.device, args.batch_size, args.seconds = "tiny", "cpu", 2, 1.0
        args.steps, args.warmup, args.varied_batches, args.duration_scale = 1, 0, 2, 0.1
        args.variants = (
            "fp32,bf16,bf16+nomask,bf16+compile-static,bf16+nomask+compile"
            if args.variants == parser.get_default("variants")
            else args.variants
        )
        args.threads = args.threads or 1
        args.compile_backend = (
            "eager"  # traces with dynamo, skips inductor's code generation (minutes on a CPU)
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    variants = args.variants.split(",")
    if variants[0] != "fp32" or set(variants) - set(VARIANTS):
        raise SystemExit(f"--variants: fp32 first, then any of {list(VARIANTS)}; got {variants}")
    if device.type != "cuda" and "bf16+nomask+cudagraphs" in variants:
        raise SystemExit("bf16+nomask+cudagraphs needs a CUDA device")
    heading = (
        f"{datetime.date.today().isoformat()}, {describe_machine(device.type)}; random-weight HuBERT, "
        f"{args.batch_size} x {args.seconds:g} s equal-length batch, mean of {args.steps} calls after "
        f"{args.warmup} warm-up (and a first call); upstream.padding_mode {args.padding_mode or 'default'}"
        + (
            f"; {args.varied_batches} varied batches padded to {args.bucket_seconds:g} s buckets"
            if args.varied_batches
            else ""
        )
    )
    rows: list[dict[str, Any]] = []
    for model in args.models.split(","):
        reference = None
        for variant in variants:
            began = time.perf_counter()
            try:
                result = measure(model, variant, args, device, reference)
            except Exception as error:  # noqa: BLE001 - one failing variant (e.g. a compile error) is reported, the rest still run
                rows.append(
                    {"model": model, "variant": variant, "error": f"{type(error).__name__}: {error}"[:300]}
                )
                print(f"{model} {variant}: FAILED {rows[-1]['error']}", flush=True)
                continue
            if reference is None:
                reference = result["states"]
            rows.append(result["row"])
            print(
                f"{model} {variant}: {json.dumps(result['row'])} ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
            write_outputs(rows, heading, args)  # after every variant: a run cut short keeps what it measured
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del reference
    print(write_outputs(rows, heading, args))
    return rows


def write_outputs(rows: list[dict[str, Any]], heading: str, args: argparse.Namespace) -> str:
    """The markdown (and JSON) of the rows so far, written to --output / --json; returns the markdown."""
    fp32 = {row["model"]: row["ms"] for row in rows if row["variant"] == "fp32" and "ms" in row}
    table = [
        format_row(row, fp32.get(row["model"]))
        if "error" not in row
        else {"model": row["model"], "variant": row["variant"], "ms / forward": row["error"]}
        for row in rows
    ]
    text = f"{heading}\n\n{markdown_table(table)}\n"
    if args.output:
        args.output.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"heading": heading, "rows": rows}, indent=1))
    return text


if __name__ == "__main__":
    main()
