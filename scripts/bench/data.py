"""Decoding + batching speed (x real time per DataLoader worker) on the mini corpus FLAC.

    python scripts/benchmark.py data                      # workers 0, 1, 2 on mini LibriSpeech train
    python scripts/benchmark.py data --workers 1 --full-bits

One epoch = AudioDataset (soundfile decode) + BucketBatchSampler (max_batch_seconds) + collate_wavs
(zero-padded batches), consumed by an empty loop, so the figure is what the data side can deliver to a
trainer. x real time = seconds of audio delivered / wall seconds, the best of ``--epochs`` epochs after
one warm-up epoch (page cache warm; worker start-up included, as in training with non-persistent
workers; ``--repeat`` lists the split several times per epoch so start-up is amortised as over a real
corpus's epoch). Per worker = that / workers (workers 0: the main process alone, counted as one).

The shipped corpus stores 8 significant bits per sample, which FLAC decodes faster than real 16-bit
recordings; ``--full-bits`` first re-encodes a copy with a +-1 LSB noise floor so every bit is used,
which is closer to real LibriSpeech FLAC.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile
import torch
from torch.utils.data import DataLoader

from downstream.data.corpus import Utterance
from downstream.data.dataset import AudioDataset, collate_wavs
from downstream.data.librispeech import read_librispeech
from downstream.data.sampler import BucketBatchSampler
from scripts.bench.interfaces import describe_device

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=REPO_ROOT / "data" / "mini_superb" / "LibriSpeech",
        help="LibriSpeech root",
    )
    parser.add_argument("--split", default="train-clean-100")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader num_workers")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per worker count (best is kept)")
    parser.add_argument("--max-batch-seconds", type=float, default=32.0)
    parser.add_argument("--full-bits", action="store_true", help="re-encode to full 16-bit FLAC first")
    parser.add_argument("--repeat", type=int, default=4, help="list the split this many times per epoch")


def reencode_full_bits(utterances: list[Utterance], folder: Path) -> list[Utterance]:
    """Copies of ``utterances`` as 16-bit FLAC whose low bits carry a +-1 LSB noise floor."""
    generator = np.random.default_rng(0)
    copies = []
    for utterance in utterances:
        samples, rate = soundfile.read(str(utterance.path), dtype="int16")
        noisy = np.clip(
            samples.astype(np.int32) + generator.integers(-1, 2, size=samples.shape), -32768, 32767
        )
        path = folder / utterance.path.name
        soundfile.write(str(path), noisy.astype(np.int16), rate, format="FLAC", subtype="PCM_16")
        copies.append(replace(utterance, path=path))
    return copies


def time_epoch(utterances: list[Utterance], workers: int, max_batch_seconds: float, epoch: int) -> float:
    dataset = AudioDataset(utterances)
    sampler = BucketBatchSampler(dataset.num_samples, max_batch_seconds=max_batch_seconds, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_wavs, num_workers=workers)
    started = time.perf_counter()
    for _batch in loader:
        pass
    return time.perf_counter() - started


def run(args: argparse.Namespace) -> None:
    if args.epochs < 1 or args.repeat < 1 or min(args.workers) < 0:
        raise SystemExit(
            f"--epochs and --repeat must be >= 1 and --workers >= 0, got {args.epochs}, {args.repeat}, {args.workers}"
        )
    utterances = read_librispeech(args.root, args.split) * args.repeat
    audio_seconds = sum(utterance.num_samples for utterance in utterances) / 16000
    with tempfile.TemporaryDirectory() as folder:
        if args.full_bits:
            utterances = (
                reencode_full_bits(utterances[: len(utterances) // args.repeat], Path(folder)) * args.repeat
            )
        encoding = (
            "16-bit FLAC (re-encoded, full bits)" if args.full_bits else "shipped FLAC (8 significant bits)"
        )
        rows = []
        for workers in args.workers:
            time_epoch(utterances, workers, args.max_batch_seconds, epoch=0)  # warm-up
            best = min(
                time_epoch(utterances, workers, args.max_batch_seconds, epoch)
                for epoch in range(1, args.epochs + 1)
            )
            speed = audio_seconds / best
            rows.append((workers, best, speed, speed / max(workers, 1)))
            print(f"workers={workers}: {best:.2f} s per epoch, {speed:,.0f}x real time", flush=True)
    lines = [
        f"{datetime.date.today().isoformat()}, {describe_device(torch.device('cpu'))}; "
        f"{len(utterances) // args.repeat} utterances of {args.root.name}/{args.split} x {args.repeat} per epoch "
        f"({audio_seconds / 60:.1f} min), "
        f"{encoding}, max_batch_seconds={args.max_batch_seconds}; best of {args.epochs} epochs after a warm-up",
        "",
        "| DataLoader workers | s per epoch | x real time | x real time per worker |",
        "|---|---|---|---|",
    ]
    lines += [f"| {w} | {s:.2f} | {x:,.0f} | {p:,.0f} |" for w, s, x, p in rows]
    print("\n".join(lines))
