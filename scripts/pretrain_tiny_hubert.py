"""Pretrain the tiny upstream on the mini corpus with HuBERT's first-iteration objective.

A randomly initialised upstream gives features that carry little phonetic information, so the offline
demo would only show a probe failing to learn. This script gives the tiny HuBERT-architecture model a
short self-supervised pretraining, as HuBERT's first iteration does at full scale:

1. targets: k-means (``--clusters``) of 39-d MFCC features (13 cepstra + deltas + delta-deltas,
   per-utterance mean/variance normalised), one per 20 ms frame, aligned with the CNN's frames
   (25 ms windows, 20 ms hop, no edge padding: T = floor((n - 400) / 320) + 1);
2. masked prediction: spans of ``--mask-length`` frames starting at a ``--mask-prob`` fraction of frames
   are replaced by a learned mask embedding at the transformer's input; a linear layer on the last
   hidden state predicts each frame's cluster; the loss is cross-entropy on masked frames plus
   ``--unmasked-weight`` times that on unmasked frames.

Only the training split of the mini LibriSpeech corpus is used (no transcripts, no labels). The result,
the upstream's torchaudio state dict in float16, is what ``upstream=tiny_pretrained`` loads:

    python scripts/pretrain_tiny_hubert.py --steps 3000 --output data/tiny_hubert/mini_superb_hubert.pt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from sklearn.cluster import KMeans

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from downstream.data.audio import load_audio  # noqa: E402
from downstream.data.librispeech import read_librispeech  # noqa: E402
from upstream.tiny import TinyUpstream  # noqa: E402


def mfcc_features(wav: torch.Tensor) -> torch.Tensor:
    """[T, 39] normalised MFCC + deltas, one row per CNN frame (25 ms window, 20 ms hop)."""
    cepstra = torchaudio.compliance.kaldi.mfcc(
        wav.unsqueeze(0) * 32768,
        num_ceps=13,
        frame_length=25.0,
        frame_shift=20.0,
        snip_edges=True,
        dither=0.0,
    )
    deltas = torchaudio.functional.compute_deltas(cepstra.T.unsqueeze(0)).squeeze(0).T
    features = torch.cat([cepstra, deltas, torchaudio.functional.compute_deltas(deltas.T).T], dim=1)
    return (features - features.mean(0)) / (features.std(0) + 1e-5)


def span_mask(
    frame_lengths: torch.Tensor, num_frames: int, prob: float, span: int, generator: torch.Generator
) -> torch.Tensor:
    """[B, T] True at masked frames: spans of ``span`` frames from starts drawn with probability ``prob``."""
    starts = torch.rand(len(frame_lengths), num_frames, generator=generator) < prob
    masked = torch.zeros_like(starts)
    for offset in range(span):
        masked[:, offset:] |= starts[:, : num_frames - offset]
    valid = torch.arange(num_frames)[None, :] < frame_lengths[:, None].cpu()
    return masked & valid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default=str(REPO_ROOT / "data/mini_superb/LibriSpeech"))
    parser.add_argument("--split", default="train-clean-100")
    parser.add_argument("--output", default=str(REPO_ROOT / "data/tiny_hubert/mini_superb_hubert.pt"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--mask-prob", type=float, default=0.08)
    parser.add_argument("--mask-length", type=int, default=5)
    parser.add_argument("--unmasked-weight", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    device = torch.device(args.device)

    utterances = read_librispeech(args.corpus, args.split)
    wavs = [load_audio(u.path) for u in utterances]
    features = [mfcc_features(w) for w in wavs]
    kmeans = KMeans(n_clusters=args.clusters, n_init=3, random_state=args.seed).fit(
        torch.cat(features).numpy()
    )
    targets = [torch.from_numpy(kmeans.predict(f.numpy())).long() for f in features]
    print(
        f"{len(wavs)} utterances, {sum(len(t) for t in targets)} frames, {args.clusters} clusters", flush=True
    )

    upstream = TinyUpstream(seed=args.seed, trainable=True).to(device)
    model = upstream.model
    mask_embedding = torch.nn.Parameter(
        torch.empty(upstream.hidden_size).uniform_(generator=generator).to(device)
    )
    predictor = torch.nn.Linear(upstream.hidden_size, args.clusters)
    predictor.to(device)
    parameters = [*model.parameters(), mask_embedding, predictor.weight, predictor.bias]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.01)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min((step + 1) / warmup, max(0.0, (args.steps - step) / (args.steps - warmup))),
    )
    upstream.train()
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = torch.randperm(len(wavs), generator=generator)[: args.batch_size].tolist()
        lengths = torch.tensor([len(wavs[i]) for i in batch])
        padded = torch.zeros(len(batch), int(lengths.max()))
        for row, index in enumerate(batch):
            padded[row, : lengths[row]] = wavs[index]
        features_cnn, frame_lengths = model.feature_extractor(padded.to(device), lengths.to(device))
        projected = model.encoder.feature_projection(features_cnn)
        masked = span_mask(frame_lengths, projected.shape[1], args.mask_prob, args.mask_length, generator).to(
            device
        )
        projected = torch.where(masked[..., None], mask_embedding.to(projected.dtype), projected)
        last = upstream.transformer_states(projected, frame_lengths)[-1]
        labels = torch.full(masked.shape, -100, dtype=torch.long)
        for row, index in enumerate(batch):
            count = min(int(frame_lengths[row]), len(targets[index]))
            labels[row, :count] = targets[index][:count]
        labels = labels.to(device)
        logits = predictor(last)
        loss_masked = F.cross_entropy(logits[masked], labels[masked], ignore_index=-100)
        loss_unmasked = F.cross_entropy(logits[~masked], labels[~masked], ignore_index=-100)
        loss = loss_masked + args.unmasked_weight * loss_unmasked
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == args.steps:
            print(
                f"step {step}: masked {loss_masked.item():.3f} unmasked {loss_unmasked.item():.3f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    state = {key: value.detach().to("cpu", torch.float16) for key, value in model.state_dict().items()}
    torch.save(state, output)
    recipe = {key: value for key, value in vars(args).items() if key not in ("output", "device", "corpus")}
    output.with_suffix(".json").write_text(
        json.dumps({"recipe": recipe, "final_masked_loss": loss_masked.item()}, indent=2) + "\n"
    )
    print(f"wrote {output} ({output.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
