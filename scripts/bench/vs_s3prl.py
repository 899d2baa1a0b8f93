"""Head-to-head on SUPERB PR: this project's runner vs s3prl 0.4.18's legacy runner (``run_downstream.py``).

    python scripts/bench/vs_s3prl.py --smoke                        # CPU plumbing check, tiny model, < 1 min
    python scripts/bench/vs_s3prl.py --model base --updates 200 --warmup-updates 20 --repeats 1 \\
        --output docs/vs_s3prl.md --json vs_s3prl.json              # on a GPU

One run, nothing downloaded:
1. a synthetic corpus in LibriSpeech layout (``<root>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/
   <speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac`` + ``<speaker>-<chapter>.trans.txt``), a lexicon of
   made-up words over the 69 stress-marked ARPAbet phones, and s3prl's phone vocabulary. Durations follow
   ``sample_durations`` (train-clean-100's range and mean, see there); word counts follow the duration at a
   speaking rate drawn per utterance, so transcript length and audio length correlate as in real speech but
   not exactly (s3prl buckets by transcript length, this project by audio length);
2. one random-weight HuBERT (``--model``: tiny, base or large) written once in s3prl's converted
   ``hubert_local`` format; s3prl loads that file, and this project loads either the same file through its
   s3prl upstream (``--ours-upstream s3prl``) or the same weights imported into torchaudio's model and
   saved as a state dict for the torchaudio bundle (``--ours-upstream torchaudio``, default for base/large:
   the upstream this project recommends; its hidden states are checked against s3prl's before timing);
3. SUPERB's PR schedule in both (weighted sum of all hidden states, Linear(D, 256) + Linear(256, vocab) per
   frame, CTC, Adam lr 1e-2, batch 16, gradient accumulation 2, clipping 1; s3prl's libriphone.yaml values)
   for ``--updates`` optimizer updates, in separate processes, interleaved ``--repeats`` times:
   ``s3prl`` (its runner as shipped, fp32), ``ours`` (this runner's defaults, fp32 as SUPERB) and
   ``ours-fast`` (``upstream.precision=bf16 trainer.precision=bf16``: bf16 upstream weights, bf16
   autocast for interface and head; plus ``--fast-overrides``).

Measured inside each process with two hooks, identical for both runners: a global optimizer-step hook
(``torch.optim.optimizer.register_optimizer_step_post_hook``) timestamps updates, with a device
synchronisation only at update ``--warmup-updates`` and at the last update; a wrapper around the upstream's
call counts the audio it gets (real samples, and padded batch samples). Figures over the window
(warm-up, last]: updates/s, audio seconds per second (real audio; padded audio in its own column), peak
memory (CUDA ``max_memory_allocated``, or the process's peak RSS on a CPU), and time to the first update
(imports, model, data indexing). After the last update the process exits (``--finish-runs``: let both
runners finish, including their evaluation).

Workarounds that s3prl 0.4.18 needs with today's packages live in ``install_s3prl_workarounds`` and nowhere
in the product: its wheel lacks the libriphone recipe (``downstream/ctc/corpus/libriphone.py``, the recipe
yaml, vocabulary and lexicon files: written here, the dataset class re-implemented from s3prl's source with
the same bucketing), ``torchaudio.load`` needs TorchCodec (replaced by a soundfile reader),
``huggingface_hub`` no longer has ``HfFolder`` and ``Repository`` (stubs; s3prl's hub upload path is unused), ``tensorboardX`` may
be missing (a no-op writer when it is), and torchaudio >= 2.9 lacks ``set_audio_backend``/``sox_effects``
(upstream/_s3prl_compat.py). ``torch.load``'s weights-only default only breaks s3prl's resume path, which
this benchmark never takes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
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


# -- measurement inside a runner's process --------------------------------------------------------------
class Meter:
    """Timestamps optimizer updates and counts the audio the upstream receives, for both runners alike.

    The window is updates (warmup, total]; the device is synchronised at its two ends only. ``on_done``
    runs after the last update of the window (writes the result, then exits unless told to finish).
    """

    def __init__(
        self, warmup: int, total: int, device: str, on_done: Callable[[dict[str, Any]], None]
    ) -> None:
        self.warmup, self.total, self.device, self.on_done = warmup, total, device, on_done
        self.started = time.perf_counter()
        self.updates = 0
        self.first_update_s: float | None = None
        self.t0 = 0.0
        self.counting = False
        self.real_samples: Any = 0  # int, or a device tensor for batches whose lengths live on the device
        self.padded_samples = 0
        self.upstream_calls = 0

    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def count_audio(self, real: Any, padded: int) -> None:
        if self.counting:
            self.real_samples = self.real_samples + real
            self.padded_samples += padded
            self.upstream_calls += 1

    def after_update(self, *_: Any) -> None:
        self.updates += 1
        if self.updates == 1:
            self.first_update_s = time.perf_counter() - self.started
        if self.updates == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()
            self.real_samples, self.padded_samples, self.upstream_calls = 0, 0, 0
            self.counting = True
        elif self.updates == self.total:
            self._sync()
            seconds = time.perf_counter() - self.t0
            self.counting = False
            real = self.real_samples
            real = float(real.item()) if hasattr(real, "item") else float(real)
            self.on_done(self.result(seconds, real))

    def result(self, seconds: float, real_samples: float) -> dict[str, Any]:
        import torch

        updates = self.total - self.warmup
        if self.device.startswith("cuda"):
            peak_mib = torch.cuda.max_memory_allocated() / 2**20
            memory = "CUDA max_memory_allocated"
        else:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            memory = "peak RSS"
        return {
            "updates": updates,
            "seconds": seconds,
            "updates_per_s": updates / seconds,
            "audio_s_per_s": real_samples / SAMPLE_RATE / seconds,
            "audio_s_per_update": real_samples / SAMPLE_RATE / updates,
            "padded_s_per_update": self.padded_samples / SAMPLE_RATE / updates,
            "upstream_calls": self.upstream_calls,
            "peak_mib": peak_mib,
            "memory": memory,
            "first_update_s": self.first_update_s,
        }


def _start_meter(spec: dict[str, Any]) -> Meter:

    def done(result: dict[str, Any]) -> None:
        Path(spec["result"]).write_text(json.dumps(result, indent=1))
        if not spec["finish"]:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    meter = Meter(spec["warmup"], spec["updates"], spec["device"], done)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(meter.after_update)
    return meter


# -- s3prl's runner -----------------------------------------------------------------------------------
def install_s3prl_workarounds() -> None:
    """What s3prl 0.4.18's legacy runner needs to start with today's packages (see the module docstring)."""
    import huggingface_hub
    import soundfile
    import torch
    import torchaudio

    from upstream import _s3prl_compat

    _s3prl_compat.install()
    for name in (
        "HfFolder",
        "Repository",
    ):  # removed from huggingface_hub; s3prl imports them for hub uploads
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, type(name, (), {}))
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        writer = types.ModuleType("tensorboardX")

        class SummaryWriter:
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                pass

            def __getattr__(self, name: str) -> Callable[..., None]:
                return lambda *args, **kwargs: None

        writer.SummaryWriter = SummaryWriter
        sys.modules["tensorboardX"] = writer

    def load(path: str, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, int]:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), rate

    torchaudio.load = load

    corpus = types.ModuleType("s3prl.downstream.ctc.corpus")
    corpus.__path__ = []
    libriphone = types.ModuleType("s3prl.downstream.ctc.corpus.libriphone")
    libriphone.LibriPhoneDataset = LibriPhoneDataset
    sys.modules[corpus.__name__] = corpus
    sys.modules[libriphone.__name__] = libriphone


class LibriPhoneDataset:
    """s3prl's libriphone dataset (missing from its wheel), re-implemented from its source: each word -> the
    first pronunciation in the lexicon files; utterances sorted by transcript length (longest first); item
    ``i`` of the training set is the bucket of ``bucket_size`` consecutive utterances from
    ``min(i, len - bucket_size)``, so an epoch has one bucket per utterance, shuffled by the DataLoader."""

    def __init__(
        self,
        split: list[str],
        tokenizer: Any,
        bucket_size: int,
        path: str,
        lexicon: list[str],
        ascending: bool = False,
        **kwargs: Any,
    ) -> None:
        self.bucket_size = bucket_size
        word_phones: dict[str, list[str]] = {}
        for lexicon_file in lexicon:
            for line in Path(lexicon_file).read_text().splitlines():
                word, *phones = line.split()
                word_phones.setdefault(word, phones)
        items = []
        for name in split:
            for transcript in sorted(Path(path, name).rglob("*.trans.txt")):
                for line in transcript.read_text().splitlines():
                    utterance_id, text = line.split(" ", 1)
                    phones = [p for word in text.split() for p in word_phones[word]]
                    items.append(
                        (transcript.parent / f"{utterance_id}.flac", tokenizer.encode(" ".join(phones)))
                    )
        if not items:
            raise FileNotFoundError(f"no utterances under {path} for {split}")
        items.sort(key=lambda item: len(item[1]), reverse=not ascending)
        self.file_list, self.text = zip(*items, strict=True)

    def __getitem__(self, index: int) -> Any:
        if self.bucket_size > 1:
            index = min(len(self.file_list) - self.bucket_size, index)
            end = index + self.bucket_size
            return list(zip(self.file_list[index:end], self.text[index:end], strict=True))
        return self.file_list[index], self.text[index]

    def __len__(self) -> int:
        return len(self.file_list)


def s3prl_recipe(spec: dict[str, Any]) -> dict[str, Any]:
    """s3prl's downstream/ctc/libriphone.yaml, the values this run needs (paths, steps and workers set here)."""
    root = Path(spec["corpus"])
    return {
        "runner": {
            "total_steps": spec["updates"],
            "gradient_clipping": PR_CLIP,
            "gradient_accumulate_steps": PR_ACCUM,
            "log_step": S3PRL_LOG_STEP,
            "eval_step": 10**9,
            "save_step": S3PRL_SAVE_STEP,
            "max_keep": 1,
            "eval_dataloaders": ["dev"],
        },
        "optimizer": {"name": "TorchOptim", "torch_optim_name": "Adam", "lr": PR_LR},
        "downstream_expert": {
            "corpus": {
                "name": "libriphone",
                "path": str(root / "LibriSpeech"),
                "lexicon": [str(root / "lexicon.txt")],
                "train": ["train-clean-100"],
                "dev": ["dev-clean"],
                "test": ["test-clean"],
                "bucketing": True,
                "batch_size": PR_BATCH,
                "num_workers": spec["num_workers"],
            },
            "text": {"mode": "word", "vocab_file": str(root / "phoneme.txt")},
            "model": {"project_dim": PR_PROJECT_DIM, "zero_infinity": True, "select": "FrameLevel"},
            "save_best_on": ["dev"],
            "metric_higher_better": False,
            "metric": ["per"],
        },
    }


def child_s3prl(spec: dict[str, Any]) -> None:
    import torch
    import yaml

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    install_s3prl_workarounds()
    meter = _start_meter(spec)
    from s3prl.upstream.interfaces import UpstreamBase

    call = UpstreamBase.__call__

    def counted_call(self: Any, wavs: list[torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        lengths = [len(w) for w in wavs]
        meter.count_audio(sum(lengths), len(lengths) * max(lengths))
        return call(self, wavs, *args, **kwargs)

    UpstreamBase.__call__ = counted_call
    workdir = Path(spec["workdir"])
    config = workdir / "libriphone.yaml"
    config.write_text(yaml.safe_dump(s3prl_recipe(spec)))
    sys.argv = [
        "run_downstream.py", "-m", "train", "-d", "ctc", "-c", str(config), "-u", "hubert_local",
        "-k", spec["s3prl_checkpoint"], "-p", str(workdir / "s3prl_exp"), "--device", spec["device"],
    ]  # fmt: skip
    from s3prl import run_downstream

    run_downstream.main()


# -- this project's runner --------------------------------------------------------------------------
def ours_overrides(spec: dict[str, Any]) -> list[str]:
    root = Path(spec["corpus"])
    if spec["ours_upstream"] == "s3prl":
        upstream = [
            "upstream=s3prl",
            "upstream.name=hubert_local",
            f"upstream.path={spec['s3prl_checkpoint']}",
        ]
    else:
        upstream = [
            "upstream=torchaudio",
            f"upstream.bundle={spec['bundle']}",
            f"upstream.path={spec['torchaudio_state']}",
        ]
    return [
        *upstream,
        "task=pr",
        "interface=weighted_sum",
        f"task.data_root={root / 'LibriSpeech'}",
        f"task.lexicon={root / 'lexicon.txt'}",
        "schedule=superb",
        f"trainer.max_steps={spec['updates']}",
        f"trainer.eval_every={spec['updates']}",
        f"trainer.num_workers={spec['num_workers']}",
        f"trainer.device={spec['device']}",
        "trainer.progress_bar=false",
        "logger=none",
        "overwrite=true",
        f"hydra.run.dir={Path(spec['workdir']) / 'ours_run'}",
        *spec["overrides"],
    ]


def child_ours(spec: dict[str, Any]) -> None:
    import torch

    torch.set_num_threads(spec["threads"]) if spec["threads"] else None
    meter = _start_meter(spec)
    from upstream.base import Upstream

    forward = Upstream.forward

    def counted_forward(self: Any, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> Any:
        meter.count_audio(wav_lengths.sum(), wavs.shape[0] * wavs.shape[1])  # no host sync
        return forward(self, wavs, wav_lengths)

    Upstream.forward = counted_forward
    os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
    sys.argv = [str(REPO_ROOT / "run_downstream.py"), *ours_overrides(spec)]
    runpy.run_path(
        sys.argv[0], run_name="__main__"
    )  # as `python run_downstream.py ...` (Hydra finds configs/)


# -- orchestration ------------------------------------------------------------------------------------
FAST = ["upstream.precision=bf16", "trainer.precision=bf16"]


def resolve_workers(requested: str, device: str) -> int:
    """``auto``: the project's trainer.num_workers=auto rule (0 on a CPU; all cores but two, at most 16, on
    a GPU), used for both runners so that they decode with the same number of processes."""
    if requested != "auto":
        return int(requested)
    return 0 if device == "cpu" else max(0, min(16, (os.cpu_count() or 1) - 2))


def run_child(runner: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one runner in its own process; its measured window as a dict, or {'error': ...}."""
    spec_file = Path(spec["workdir"]) / "spec.json"
    spec_file.write_text(json.dumps(spec))
    log = Path(spec["workdir"]) / "log.txt"
    command = [sys.executable, "-m", "scripts.bench.vs_s3prl", "--child", runner, str(spec_file)]
    path = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )  # keeps carried wheels
    env = {**os.environ, "PYTHONPATH": path, "SSL_BENCH_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    if spec["threads"]:
        env["OMP_NUM_THREADS"] = str(spec["threads"])
    began = time.perf_counter()
    try:
        with log.open("w") as out:
            status = subprocess.run(
                command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
    except subprocess.TimeoutExpired:
        status = "timeout"
    wall = time.perf_counter() - began
    result_file = Path(spec["result"])
    if result_file.is_file():
        return {**json.loads(result_file.read_text()), "process_s": wall}
    tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
    return {"error": f"exit {status} after {wall:.0f} s without a measurement; log tail:\n{tail}"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help="tiny model, short corpus, 4 updates, CPU")
    parser.add_argument("--model", choices=sorted(MODELS), default="base", help="random-weight HuBERT size")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--updates", type=int, default=200, help="optimizer updates per run")
    parser.add_argument("--warmup-updates", type=int, default=20, help="updates before the timed window")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds of all runners")
    parser.add_argument(
        "--runners", default="s3prl,ours,ours-fast", help="comma-separated: s3prl, ours, ours-fast"
    )
    parser.add_argument("--ours-upstream", choices=["torchaudio", "s3prl"], default=None,
                        help="this project's upstream for the same weights (default: torchaudio; s3prl for tiny)")  # fmt: skip
    parser.add_argument(
        "--fast-overrides", default="", help="extra Hydra overrides for ours-fast (space-separated)"
    )
    parser.add_argument("--train-utterances", type=int, default=None,
                        help="default: enough for one epoch of this runner (updates x 32 + 10%%)")  # fmt: skip
    parser.add_argument(
        "--duration-scale", type=float, default=1.0, help="multiply every duration (smoke: 0.1)"
    )
    parser.add_argument("--num-workers", default="auto", help="DataLoader workers of both runners")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads in each run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per run")
    parser.add_argument(
        "--finish-runs", action="store_true", help="let each runner finish (evaluation included)"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="corpus, checkpoints, runs (default: a temp dir)"
    )
    parser.add_argument("--output", type=Path, default=None, help="also write the markdown here")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures here")


def apply_smoke(args: argparse.Namespace) -> None:
    args.model, args.device = "tiny", "cpu"
    args.updates, args.warmup_updates = 4, 1
    args.duration_scale = 0.1
    args.train_utterances = args.train_utterances or 96
    args.threads = args.threads or 1


def describe_machine(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(0)
    else:
        name = platform.processor() or platform.machine()
        for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{name}, {os.cpu_count()} CPUs (load average {load:.1f} at the start), torch {torch.__version__}"


def summarize(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, str]]:
    """One row per runner: medians over its repeats, and the ratio to s3prl's median."""
    rows = []
    medians: dict[str, dict[str, float]] = {}
    keys = [
        "updates_per_s",
        "audio_s_per_s",
        "audio_s_per_update",
        "padded_s_per_update",
        "peak_mib",
        "first_update_s",
    ]
    for runner, runs in results.items():
        good = [r for r in runs if "error" not in r]
        if not good:
            rows.append({"runner": runner, "updates/s": f"failed: {runs[0]['error'].splitlines()[0]}"})
            continue
        medians[runner] = {k: statistics.median(r[k] for r in good) for k in keys}
    base = medians.get("s3prl")
    for runner, m in medians.items():
        rows.append(
            {
                "runner": runner,
                "runs": str(len([r for r in results[runner] if "error" not in r])),
                "updates/s": f"{m['updates_per_s']:.3f}",
                "audio s/s": f"{m['audio_s_per_s']:.1f}",
                "audio s / update (padded)": f"{m['audio_s_per_update']:.1f} ({m['padded_s_per_update']:.1f})",
                "peak MiB": f"{m['peak_mib']:,.0f}",
                "first update s": f"{m['first_update_s']:.1f}",
                "updates/s vs s3prl": f"{m['updates_per_s'] / base['updates_per_s']:.2f}x" if base else "-",
                "audio s/s vs s3prl": f"{m['audio_s_per_s'] / base['audio_s_per_s']:.2f}x" if base else "-",
                "peak memory vs s3prl": f"{m['peak_mib'] / base['peak_mib']:.2f}" if base else "-",
                "updates/s vs s3prl, per round": per_round(results, runner),
            }
        )
    return rows


def per_round(results: dict[str, list[dict[str, Any]]], runner: str) -> str:
    """updates/s over the same round's s3prl run, round by round (pairs run back to back share the load)."""
    pairs = zip(results.get("s3prl", []), results[runner], strict=False)
    ratios = [
        f"{r['updates_per_s'] / b['updates_per_s']:.2f}"
        for b, r in pairs
        if "error" not in r and "error" not in b
    ]
    return ", ".join(ratios) or "-"


def markdown_table(rows: list[dict[str, str]]) -> str:
    header = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(k, "") for k in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    import torch

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if not 0 < args.warmup_updates < args.updates:
        raise SystemExit(
            f"--warmup-updates must be in [1, --updates); got {args.warmup_updates}, {args.updates}"
        )
    runners = args.runners.split(",")
    unknown = set(runners) - {"s3prl", "ours", "ours-fast"}
    if unknown:
        raise SystemExit(f"--runners: unknown {sorted(unknown)}; choose among s3prl, ours, ours-fast")
    ours_upstream = args.ours_upstream or ("s3prl" if args.model == "tiny" else "torchaudio")
    if ours_upstream == "torchaudio" and MODELS[args.model]["bundle"] is None:
        raise SystemExit(
            f"--ours-upstream torchaudio needs a torchaudio bundle architecture; --model {args.model} has none"
        )
    workers = resolve_workers(args.num_workers, device)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="vs_s3prl."))
    workdir.mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    train = args.train_utterances or int(args.updates * PR_BATCH * PR_ACCUM * 1.1)
    counts = {"train-clean-100": train, "dev-clean": 8, "test-clean": 8}
    corpus = workdir / "corpus"
    marker = corpus / "stats.json"
    wanted = {"counts": counts, "scale": args.duration_scale}
    if marker.is_file() and json.loads(marker.read_text()).get("wanted") == wanted:
        stats = json.loads(marker.read_text())["stats"]
    else:
        stats = make_corpus(corpus, counts, args.duration_scale)
        marker.write_text(json.dumps({"wanted": wanted, "stats": stats}))
    corpus_s = time.perf_counter() - began
    s3prl_checkpoint = workdir / f"hubert_{args.model}_s3prl.pt"
    torchaudio_state = workdir / f"hubert_{args.model}_torchaudio.pt"
    if not s3prl_checkpoint.is_file():
        write_s3prl_checkpoint(args.model, s3prl_checkpoint)
    conversion_error = None
    if ours_upstream == "torchaudio":
        conversion_error = write_torchaudio_state(s3prl_checkpoint, torchaudio_state)
        if conversion_error > 1e-3:
            raise SystemExit(
                f"torchaudio import of the checkpoint differs from s3prl by {conversion_error:.2e}"
            )
    print(f"corpus {stats} in {corpus_s:.0f} s; checkpoint {s3prl_checkpoint}", flush=True)

    results: dict[str, list[dict[str, Any]]] = {runner: [] for runner in runners}
    for repeat in range(args.repeats):
        for runner in runners:
            rundir = workdir / f"{runner}.{repeat}"
            rundir.mkdir(exist_ok=True)
            overrides = FAST + args.fast_overrides.split() if runner == "ours-fast" else []
            spec = {
                "corpus": str(corpus), "s3prl_checkpoint": str(s3prl_checkpoint), "device": device,
                "torchaudio_state": str(torchaudio_state), "bundle": MODELS[args.model]["bundle"],
                "ours_upstream": ours_upstream, "updates": args.updates, "warmup": args.warmup_updates,
                "num_workers": workers, "threads": args.threads, "finish": args.finish_runs,
                "workdir": str(rundir), "result": str(rundir / "result.json"), "overrides": overrides,
            }  # fmt: skip
            (rundir / "result.json").unlink(missing_ok=True)
            result = run_child("s3prl" if runner == "s3prl" else "ours", spec, args.timeout)
            results[runner].append(result)
            print(f"[{repeat}] {runner}: {json.dumps(result)[:400]}", flush=True)

    heading = (
        f"{datetime.date.today().isoformat()}, {describe_machine(device)}; HuBERT {args.model} (random weights; "
        f"ours via {ours_upstream}), SUPERB PR (batch {PR_BATCH} x accumulation {PR_ACCUM}, lr {PR_LR}), "
        f"updates {args.warmup_updates + 1}-{args.updates} timed, {args.repeats} interleaved round(s), "
        f"{workers} DataLoader workers each, torch threads {args.threads or 'default'}; synthetic train split "
        f"{stats['train-clean-100']}"
    )
    table = markdown_table(summarize(results))
    text = f"{heading}\n\n{table}\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    report = {"heading": heading, "results": results, "corpus": stats, "conversion_max_abs": conversion_error}
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child = {"s3prl": child_s3prl, "ours": child_ours}[sys.argv[2]]
        child(json.loads(Path(sys.argv[3]).read_text()))
    else:
        main()
