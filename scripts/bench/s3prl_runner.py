"""s3prl 0.4.18's legacy runner, run as shipped on the synthetic corpus, with the workarounds today's packages
need (see vs_s3prl.py)."""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))
SAMPLE_RATE = 16000

from scripts.bench.meter import start_meter  # noqa: E402
from scripts.bench.synthetic_librispeech import (  # noqa: E402
    PR_ACCUM,
    PR_BATCH,
    PR_CLIP,
    PR_LR,
    PR_PROJECT_DIM,
    S3PRL_LOG_STEP,
    S3PRL_SAVE_STEP,
)


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
    meter = start_meter(spec)
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
