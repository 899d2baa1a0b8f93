"""The benchmark's synthetic LibriSpeech: the phone set, a made-up lexicon, audio whose durations follow
train-clean-100's, and random-weight HuBERT checkpoints in s3prl's and torchaudio's formats (see vs_s3prl.py)."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))
SAMPLE_RATE = 16000

# -- the phone set ----------------------------------------------------------------------------------
# ARPAbet: 15 vowels carrying stress 0/1/2 and 24 consonants (the LibriSpeech lexicon's 69 phones);
# s3prl's downstream/ctc/vocab/phoneme.txt lists these plus SIL and SPN.
VOWELS = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
CONSONANTS = [
    "B",
    "CH",
    "D",
    "DH",
    "F",
    "G",
    "HH",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
]
PHONES = sorted([f"{v}{s}" for v in VOWELS for s in "012"] + CONSONANTS)
S3PRL_PHONE_VOCAB = ["SIL", "SPN", *PHONES]

# -- the models -------------------------------------------------------------------------------------
# s3prl HubertConfig fields (fairseq's names); HubertConfig's defaults are HuBERT Base's.
MODELS: dict[str, dict[str, Any]] = {
    "tiny": {
        "model": {
            "conv_feature_layers": "[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2",  # != D: keeps post_extract_proj
            "encoder_layers": 2,
            "encoder_embed_dim": 32,
            "encoder_ffn_embed_dim": 64,
            "encoder_attention_heads": 2,
            "conv_pos": 16,
            "conv_pos_groups": 4,
            "final_dim": 16,
        },
        "normalize": False,
        "bundle": None,
    },
    "base": {"model": {"final_dim": 256}, "normalize": False, "bundle": "HUBERT_BASE"},
    "large": {
        "model": {
            "extractor_mode": "layer_norm",
            "layer_norm_first": True,
            "encoder_layers": 24,
            "encoder_embed_dim": 1024,
            "encoder_ffn_embed_dim": 4096,
            "encoder_attention_heads": 16,
            "final_dim": 768,
        },
        "normalize": True,
        "bundle": "HUBERT_LARGE",
    },
}
HUBERT_CLUSTERS = 504  # HuBERT iteration-2 dictionary size; only the (unused) pretraining head depends on it

# SUPERB PR (s3prl downstream/ctc/libriphone.yaml; shared/DESIGN.md section 4)
PR_LR, PR_BATCH, PR_ACCUM, PR_CLIP, PR_PROJECT_DIM = 1.0e-2, 16, 2, 1.0, 256
S3PRL_LOG_STEP, S3PRL_SAVE_STEP = 100, 100  # the recipe's values (its eval_step, 1000, is set past the run)


# -- corpus -----------------------------------------------------------------------------------------
def sample_durations(count: int, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Utterance durations in seconds shaped like LibriSpeech train-clean-100's, times ``scale``.

    Targets: 100.6 h in 28,539 utterances (LibriSpeech paper, Table 1: 100.6 h; mean 100.6 * 3600 / 28,539
    = 12.7 s), utterances between about 2 and 35 s, most of them 11-17 s (the corpus was segmented at
    silences into pieces of up to 35 s). Not the real histogram: a mixture of 74% N(14.35 s, 1.3 s) clipped
    to [11, 17.5], 24% uniform on [2, 11] and 2% uniform on [17.5, 35], whose mean is 12.7 s.
    """
    kind = rng.choice(3, size=count, p=[0.74, 0.24, 0.02])
    main = np.clip(rng.normal(14.35, 1.3, size=count), 11.0, 17.5)
    short = rng.uniform(2.0, 11.0, size=count)
    long = rng.uniform(17.5, 35.0, size=count)
    return np.choose(kind, [main, short, long]) * scale


def make_lexicon(words: int, rng: np.random.Generator) -> dict[str, list[str]]:
    """Made-up upper-case words with 2-8 random phones each (about LibriSpeech's 3-4 phones per word on average)."""
    lexicon = {}
    for index in range(words):
        name = "".join(chr(ord("A") + (index // 26**k) % 26) for k in range(4)) + "W"
        lexicon[name] = list(rng.choice(PHONES, size=int(rng.integers(2, 9))))
    return lexicon


def _speech_like(samples: int, seed: int) -> np.ndarray:
    """A voiced-speech stand-in: a few harmonics of a wandering pitch under a syllable-rate envelope, plus
    noise; int16. It compresses in FLAC roughly like speech, so decoding costs about what real audio costs."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / SAMPLE_RATE
    f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in (1, 2, 3, 5))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6.3)), 0, None)
    signal = 0.25 * voiced * envelope + 0.01 * rng.standard_normal(samples)
    return (np.clip(signal, -1, 1) * 32767).astype(np.int16)


def _write_chapter(job: tuple[str, list[tuple[str, int, str]], int]) -> None:
    import soundfile

    folder, utterances, seed = job
    lines = []
    for index, (utterance_id, samples, text) in enumerate(utterances):
        soundfile.write(f"{folder}/{utterance_id}.flac", _speech_like(samples, seed + index), SAMPLE_RATE)
        lines.append(f"{utterance_id} {text}\n")
    prefix = utterances[0][0].rsplit("-", 1)[0]
    Path(folder, f"{prefix}.trans.txt").write_text("".join(lines))


def make_corpus(
    root: Path, counts: dict[str, int], scale: float, seed: int = 0, workers: int | None = None
) -> dict[str, Any]:
    """Write the corpus under ``root`` (LibriSpeech/, lexicon.txt, phoneme.txt) and return its statistics
    per split (utterances, hours, min/mean/max seconds). ``counts``: utterances per split folder name."""
    rng = np.random.default_rng(seed)
    lexicon = make_lexicon(2000, rng)
    words = sorted(lexicon)
    (root / "LibriSpeech").mkdir(parents=True, exist_ok=True)
    (root / "lexicon.txt").write_text("".join(f"{w} {' '.join(p)}\n" for w, p in sorted(lexicon.items())))
    (root / "phoneme.txt").write_text("".join(f"{p}\n" for p in S3PRL_PHONE_VOCAB))
    jobs, stats = [], {}
    for split_index, (split, count) in enumerate(counts.items()):
        durations = sample_durations(count, rng, scale)
        stats[split] = {
            "utterances": count,
            "hours": round(float(durations.sum()) / 3600, 3),
            "min_s": round(float(durations.min()), 2),
            "mean_s": round(float(durations.mean()), 2),
            "max_s": round(float(durations.max()), 2),
        }
        per_chapter = 20
        for start in range(0, count, per_chapter):
            speaker, chapter = 100 + split_index * 1000 + start // (per_chapter * 5), start // per_chapter
            folder = root / "LibriSpeech" / split / str(speaker) / str(chapter)
            folder.mkdir(parents=True, exist_ok=True)
            utterances = []
            for offset, duration in enumerate(durations[start : start + per_chapter]):
                rate = rng.normal(2.7, 0.35) / max(scale, 1e-3)  # words per second (of the unscaled audio)
                text = " ".join(rng.choice(words, size=max(1, round(duration * rate))))
                utterances.append((f"{speaker}-{chapter}-{offset:04d}", int(duration * SAMPLE_RATE), text))
            jobs.append((str(folder), utterances, seed * 1_000_003 + len(jobs) * 1000))
    with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
        list(pool.map(_write_chapter, jobs))
    return stats


# -- checkpoints --------------------------------------------------------------------------------------
def _plain(config: Any) -> dict[str, Any]:
    import dataclasses

    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def write_s3prl_checkpoint(model_name: str, path: Path, seed: int = 0) -> None:
    """A random-weight HuBERT in s3prl's converted format (the file its ``hubert_local`` entry loads)."""
    import torch

    from upstream import _s3prl_compat

    _s3prl_compat.install()
    from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

    spec = MODELS[model_name]
    model_cfg = HubertConfig(label_rate=50, **spec["model"])
    task_cfg = HubertPretrainingConfig(normalize=spec["normalize"])
    symbols = [[f"c{i}" for i in range(HUBERT_CLUSTERS)]]
    torch.manual_seed(seed)
    model = HubertModel(model_cfg, task_cfg, symbols)
    state = {
        "task_cfg": _plain(task_cfg),
        "model_cfg": _plain(model_cfg),
        "model_weight": model.state_dict(),
        "dictionaries_symbols": symbols,
    }
    torch.save(state, path)


def write_torchaudio_state(s3prl_checkpoint: Path, path: Path) -> float:
    """The same weights for torchaudio's model (its fairseq importer), saved as a state dict; returns the
    largest absolute difference between s3prl's and torchaudio's hidden states on a 1 s input (fp32, CPU)."""
    import torch
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    from upstream.s3prl_hub import S3prlUpstream
    from upstream.torchaudio_bundle import TorchaudioModelUpstream

    reference = S3prlUpstream(name="hubert_local", path=str(s3prl_checkpoint))
    imported = import_fairseq_model(reference.model.upstream.model)
    torch.save(imported.state_dict(), path)
    normalize = reference.model.upstream.task_cfg.normalize
    ours = TorchaudioModelUpstream(imported, name="imported", waveform_norm_eps=1e-5 if normalize else None)
    wavs = torch.randn(1, SAMPLE_RATE, generator=torch.Generator().manual_seed(0))
    lengths = torch.tensor([SAMPLE_RATE])
    with torch.no_grad():
        return float((reference(wavs, lengths)[0] - ours(wavs, lengths)[0]).abs().max())
