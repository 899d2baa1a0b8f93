"""Frozen upstream forward of real-sized speech encoders with random weights (no download): time, x real
time, peak memory; Whisper's 30 s window options; the padding_mode difference.

    python scripts/benchmark.py upstream --archs whisper-tiny,whisper-small --device cpu --batch-size 2 \\
        --seconds 5 --whisper-windows pad30,trim --threads 1
    python scripts/benchmark.py upstream --archs hubert-base,xls-r-2b,w2v-bert-2.0,whisper-large-v3 \\
        --device cuda --precisions fp32,bf16 --batch-size 8 --seconds 15
    python scripts/benchmark.py upstream --padding-report --device cpu

Each architecture is built from its published configuration (ARCHITECTURES below: the values of the
checkpoints' config.json / torchaudio's bundle parameters) with random weights, directly on the device,
and wrapped in the project's hf upstream (``upstream.hf.HfEncoderUpstream``): the same code path as
``upstream=hf upstream.model=<checkpoint>``, feature extraction included. A batch of ``--batch-size``
random waveforms with lengths spread evenly from ``--seconds``/2 to ``--seconds`` is timed: the median of
``--repeats`` forwards after ``--warmup``, with a device synchronisation after each. x real time = audio
seconds in the batch / wall seconds.

``--padding-report`` measures what padding does to one utterance in a batch (issue 14): for a group-norm
(Base) CNN, ||h_padded - h_alone||_F / ||h_alone||_F (largest over layers) and the largest absolute
difference, for ``padding_mode=s3prl`` and ``exact``, on the tiny group-norm model and on HuBERT Base's
architecture (random weights).
"""

from __future__ import annotations

import argparse
import datetime
import resource
import statistics
import time
from typing import Any

import torch

from downstream.training.loading import pick_device
from scripts.bench.interfaces import describe_device, markdown_table, synchronize

WHISPER_TOKENS = {
    "vocab_size": 51865,
    "decoder_layers": 1,
    "decoder_attention_heads": 1,
    "decoder_ffn_dim": 8,
}
# name: (transformers config class, published values). Sources: the checkpoints' config.json (Whisper:
# OpenAI's ModelDimensions; w2v-BERT 2.0, XLS-R, MMS, wav2vec2-conformer: their Hub configs) and
# torchaudio's bundle parameters (XLS-R layer counts, HuBERT/WavLM).
ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "hubert-base": ("HubertConfig", {}),  # transformers' defaults are facebook/hubert-base-ls960's
    "wavlm-large": (
        "WavLMConfig",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
        },
    ),
    "xls-r-300m": (
        "Wav2Vec2Config",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
        },
    ),
    "xls-r-1b": (  # also MMS-1B's architecture
        "Wav2Vec2Config",
        {
            "hidden_size": 1280,
            "num_hidden_layers": 48,
            "num_attention_heads": 16,
            "intermediate_size": 5120,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
        },
    ),
    "xls-r-2b": (
        "Wav2Vec2Config",
        {
            "hidden_size": 1920,
            "num_hidden_layers": 48,
            "num_attention_heads": 16,
            "intermediate_size": 7680,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
        },
    ),
    # hidden size, heads, FFN, kernel from the checkpoint's config; 24 layers assumed (wav2vec 2.0 Large's)
    "wav2vec2-conformer-rel-pos-large": (
        "Wav2Vec2ConformerConfig",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
            "position_embeddings_type": "relative",
            "conv_depthwise_kernel_size": 31,
        },
    ),
    "w2v-bert-2.0": (
        "Wav2Vec2BertConfig",
        {
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feature_projection_input_dim": 160,
            "conv_depthwise_kernel_size": 31,
            "position_embeddings_type": "relative_key",
            "left_max_position_embeddings": 64,
            "right_max_position_embeddings": 8,
            "add_adapter": False,
        },
    ),
    "whisper-tiny": (
        "WhisperConfig",
        {
            "d_model": 384,
            "encoder_layers": 4,
            "encoder_attention_heads": 6,
            "encoder_ffn_dim": 1536,
            "num_mel_bins": 80,
            **WHISPER_TOKENS,
        },
    ),
    "whisper-base": (
        "WhisperConfig",
        {
            "d_model": 512,
            "encoder_layers": 6,
            "encoder_attention_heads": 8,
            "encoder_ffn_dim": 2048,
            "num_mel_bins": 80,
            **WHISPER_TOKENS,
        },
    ),
    "whisper-small": (
        "WhisperConfig",
        {
            "d_model": 768,
            "encoder_layers": 12,
            "encoder_attention_heads": 12,
            "encoder_ffn_dim": 3072,
            "num_mel_bins": 80,
            **WHISPER_TOKENS,
        },
    ),
    "whisper-medium": (
        "WhisperConfig",
        {
            "d_model": 1024,
            "encoder_layers": 24,
            "encoder_attention_heads": 16,
            "encoder_ffn_dim": 4096,
            "num_mel_bins": 80,
            **WHISPER_TOKENS,
        },
    ),
    "whisper-large-v3": (
        "WhisperConfig",
        {
            "d_model": 1280,
            "encoder_layers": 32,
            "encoder_attention_heads": 20,
            "encoder_ffn_dim": 5120,
            "num_mel_bins": 128,
            **WHISPER_TOKENS,
        },
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--archs",
        default="hubert-base,whisper-tiny",
        help=f"comma-separated, from: {', '.join(ARCHITECTURES)}",
    )
    parser.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if present"
    )
    parser.add_argument("--precisions", default="fp32", help="comma-separated upstream.precision values")
    parser.add_argument(
        "--whisper-windows", default="pad30", help="comma-separated: pad30, trim (Whisper only)"
    )
    parser.add_argument("--layers", default=None, help="upstream.layers for every run, e.g. '::2'")
    parser.add_argument("--batch-size", type=int, default=4, help="utterances per batch")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest utterance; others down to half")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--padding-report", action="store_true", help="measure padding_mode instead of timing"
    )
    parser.add_argument("--output", default=None, help="also write the markdown table here")


def build(arch: str, device: torch.device, **upstream_kwargs: Any):
    """The architecture with random weights (seed 0), built on ``device``, as a project upstream."""
    import transformers

    from upstream.hf import HfEncoderUpstream, model_from_config

    if arch not in ARCHITECTURES:
        raise SystemExit(f"--archs: unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    config_class, values = ARCHITECTURES[arch]
    config = getattr(transformers, config_class)(**values)
    torch.manual_seed(0)
    with torch.device(device):
        model = model_from_config(config)
    return HfEncoderUpstream(model, name=f"{arch} (random weights)", **upstream_kwargs).to(device)


def batch(batch_size: int, seconds: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = int(seconds * 16000)
    lengths = (
        torch.linspace(longest / 2, longest, batch_size).long() if batch_size > 1 else torch.tensor([longest])
    )
    generator = torch.Generator().manual_seed(0)
    wavs = torch.zeros(batch_size, longest)
    for row, length in enumerate(lengths.tolist()):
        wavs[row, :length] = torch.randn(length, generator=generator) * 0.1
    return wavs.to(device), lengths


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB RSS"


def time_forward(upstream, wavs: torch.Tensor, lengths: torch.Tensor, args: argparse.Namespace) -> float:
    device = wavs.device
    for _ in range(args.warmup):
        upstream(wavs, lengths)
    synchronize(device)
    timings = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        upstream(wavs, lengths)
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def timing_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, str]]:
    rows = []
    wavs, lengths = batch(args.batch_size, args.seconds, device)
    audio_seconds = float(lengths.sum()) / 16000
    for arch in args.archs.split(","):
        windows = args.whisper_windows.split(",") if arch.startswith("whisper") else ["-"]
        for precision in args.precisions.split(","):
            for window in windows:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                kwargs: dict[str, Any] = {"precision": precision, "layers": args.layers}
                if window != "-":
                    kwargs["whisper_window"] = window
                upstream = build(arch, device, **kwargs)
                seconds = time_forward(upstream, wavs, lengths, args)
                rows.append(
                    {
                        "architecture": arch,
                        "params (M)": f"{sum(p.numel() for p in upstream.parameters()) / 1e6:,.0f}",
                        "L x D": f"{upstream.num_layers} x {upstream.hidden_size}",
                        "Hz": f"{upstream.frame_rate:g}",
                        "precision": precision,
                        "whisper_window": window,
                        "ms per batch": f"{seconds * 1e3:,.0f}",
                        "x real time": f"{audio_seconds / seconds:,.1f}",
                        "peak memory": peak_memory(device),
                    }
                )
                print(rows[-1], flush=True)
                del upstream
    return rows


def padding_difference(upstream, wavs: torch.Tensor, lengths: torch.Tensor) -> tuple[float, float]:
    """(max over layers of ||h_padded - h_alone||_F / ||h_alone||_F, max |h_padded - h_alone|) for the
    shortest utterance of the batch, at its valid frames."""
    batch_states, frames = upstream(wavs, lengths)
    row = int(lengths.argmin())
    alone, _ = upstream(wavs[row : row + 1, : int(lengths[row])], lengths[row : row + 1])
    valid = int(frames[row])
    padded, single = batch_states[:, row, :valid], alone[:, 0, :valid]
    relative = max(float((p - s).norm() / s.norm()) for p, s in zip(padded, single, strict=True))
    return relative, float((padded - single).abs().max())


def padding_rows(device: torch.device) -> list[dict[str, str]]:
    from upstream.tiny import TinyUpstream

    wavs, lengths = batch(2, 8.0, device)  # 8 s and 4 s: the shorter one is half padding
    rows = []
    for mode in ("s3prl", "exact"):
        models = {
            "tiny (group-norm CNN, L=7, D=192)": TinyUpstream(extractor_mode="group_norm", padding_mode=mode),
            "hubert-base architecture (random weights)": build("hubert-base", device, padding_mode=mode),
        }
        for name, upstream in models.items():
            relative, absolute = padding_difference(upstream.to(device), wavs, lengths)
            rows.append(
                {
                    "model": name,
                    "padding_mode": mode,
                    "max layer rel. diff": f"{relative:.2e}",
                    "max abs diff": f"{absolute:.2e}",
                }
            )
            print(rows[-1], flush=True)
    return rows


def run(args: argparse.Namespace) -> None:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device, setting="--device")
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.padding_report:
        rows = padding_rows(device)
        header = (
            f"padding: 8 s + 4 s utterances in one batch vs the 4 s one alone; {describe_device(device)}, "
            f"torch {torch.__version__}, {when}"
        )
    else:
        rows = timing_rows(args, device)
        header = (
            f"upstream forward (frozen, random weights): {args.batch_size} utterances of "
            f"{args.seconds / 2:g}-{args.seconds:g} s, median of {args.repeats} after {args.warmup} warm-up; "
            f"{describe_device(device)}, torch {torch.__version__}, {when}"
        )
    table = markdown_table(rows, header)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table)
