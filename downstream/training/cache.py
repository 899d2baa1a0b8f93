"""An optional on-disk cache of every layer's hidden states, so later runs of any interface skip the upstream.

Meant for small corpora (ER, IC) trained for many epochs with a frozen upstream: the upstream runs once
over each cached split, its hidden states [L, T, D] of every utterance are stored as float16 in one
memory-mapped file per split, and every later batch of that split (training, evaluation, fitting
pca_concat) reads them instead of decoding audio and running the upstream.

Key: a split's cache is found again only for the same upstream (its config without ``lr``/``compile``,
and a hash of its weights, so a checkpoint replaced in place is noticed), the same corpus (data_root and
the split's utterance ids and lengths, in order) and the same split. Layout of ``<cache.dir>/<split>-<key>/``:

- ``hidden_states.f16``: raw float16; utterance i's block [L, T_i, D] starts at element ``offsets[i]``;
- ``index.json``: ids, offsets, frames (T_i), L, D and what the key was made of.

A split is written to a ``.partial`` folder and renamed into place when complete, so a crash never leaves
a half-written cache and two runs filling the same split at once both end up reading one complete copy.

A fused upstream (``upstream=fusion``) is cached per member under that member's own key, so a member's
cache serves every fusion that contains it and its single-model runs.

Precision: float16 round-to-nearest, so each cached value x' satisfies |x' - x| <= 2^-11 |x| for
|x| >= 2^-14, and |x' - x| <= 2^-25 below (subnormals). Values beyond float16's range (65504) are refused.

The states of one utterance are computed in a batch of similar lengths (the evaluation order). For
upstreams whose output does not depend on padding (per-frame-normalised CNNs: Large models, the tiny
model) that equals the uncached path up to the rounding above. Group-norm CNNs (HuBERT/wav2vec 2.0/WavLM
Base) see the padded length (see ``upstream.torchaudio_bundle``): cached states then come from a batch
padded to a similar length, where uncached training batches are padded to their own longest utterance.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from downstream.data.corpus import cache_dir
from downstream.data.dataset import AudioDataset, collate_wavs
from downstream.tasks.base import SPLITS, Task
from downstream.training.loading import batch_loader, bucket_sampler, split_dataset
from downstream.training.settings import TrainerSettings
from upstream.base import Upstream

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FLOAT16_MAX = float(np.finfo(np.float16).max)
# Upstream config keys that do not change the hidden states of a frozen upstream.
KEYS_WITHOUT_EFFECT = ("lr", "compile")
_NO_AUDIO = torch.zeros(0)


class HiddenStateCacheError(ValueError):
    """The cache cannot serve this run (trainable upstream, random crops, too large, ...): the message says why."""


@dataclass
class CachedSplit:
    """One split's hidden states: utterance i is ``data[offsets[i] : offsets[i] + L * frames[i] * D]``."""

    ids: list[str]
    offsets: np.ndarray
    frames: np.ndarray
    data: np.ndarray  # flat float16 memmap


class HiddenStateCache:
    """Hidden states [L, T_i, D] of every utterance of some splits, read back as padded batches.

    The trainer calls ``has(split)`` and ``lookup(batch, split, device)`` and gives the DataLoader of a
    covered split ``index_only(dataset)`` so it does not decode audio it would not use.
    """

    def __init__(self, num_layers: int, hidden_size: int) -> None:
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.splits: dict[str, CachedSplit] = {}

    def has(self, split: str) -> bool:
        return split in self.splits

    def lookup(
        self, batch: dict[str, Any], split: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden_states [L, B, T, D] float32 (T = the longest utterance's frames, zeros beyond each
        utterance's frames) and frame_lengths [B] long, on ``device``, for the utterances of ``batch``
        (``batch["indices"]``: positions in the split's dataset)."""
        cached = self.splits[split]
        indices = batch["indices"].tolist()
        frames = cached.frames[indices]
        layers, width = self.num_layers, self.hidden_size
        pin = device.type == "cuda"  # then the copies below overlap with the device's work
        staged = torch.zeros(
            (layers, len(indices), int(frames.max(initial=0)), width), dtype=torch.float16, pin_memory=pin
        )
        view = staged.numpy()
        for row, (index, count) in enumerate(zip(indices, frames, strict=True)):
            start = cached.offsets[index]
            view[:, row, :count] = cached.data[start : start + layers * count * width].reshape(
                layers, count, width
            )
        lengths = torch.from_numpy(frames)
        if pin:
            lengths = lengths.pin_memory()
        return (
            staged.to(device, non_blocking=True).float(),
            lengths.to(device, non_blocking=True),
        )

    def index_only(self, dataset: AudioDataset) -> Dataset:
        """``dataset`` without its audio: items carry only their index (batches keep their composition)."""
        return IndexOnlyDataset(dataset)


class FusedHiddenStateCache(HiddenStateCache):
    """The caches of a fused upstream's members, read together: ``lookup`` reads each member's states and
    aligns them as the fused upstream's forward does (``FusedUpstream.align``)."""

    def __init__(self, upstream: Upstream, member_caches: list[HiddenStateCache]) -> None:
        super().__init__(upstream.num_layers, upstream.hidden_size)
        self.upstream = upstream
        self.member_caches = member_caches

    def has(self, split: str) -> bool:
        return all(cache.has(split) for cache in self.member_caches)

    def lookup(
        self, batch: dict[str, Any], split: str, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fused hidden states [L, B, T, sum D_i] and frame_lengths [B] of ``batch``'s utterances."""
        return self.upstream.align([cache.lookup(batch, split, device) for cache in self.member_caches])


class IndexOnlyDataset(Dataset):
    """Stands in for a split's AudioDataset once the cache holds its hidden states: same utterances,
    lengths (for the batch sampler) and epochs, but items are {"wav": empty, "index": i}."""

    def __init__(self, dataset: AudioDataset) -> None:
        self.source = dataset
        self.utterances = dataset.utterances
        self.num_too_long = dataset.num_too_long

    @property
    def num_samples(self) -> list[int]:
        return self.source.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        return {"wav": _NO_AUDIO, "index": index}


def open_hidden_state_cache(
    cache_config: dict[str, Any],
    upstream_config: dict[str, Any],
    upstream: Upstream,
    task: Task,
    settings: TrainerSettings,
    seed: int,
    device: torch.device,
) -> HiddenStateCache:
    """The cache of ``cache_config["splits"]``, filling the splits not yet on disk (the upstream runs once
    over each). Refuses, before anything runs, a trainable upstream, a split with random crops, a total
    size above ``cache.max_gb`` (stating the size it would need) and a disk without room for it.

    A fused upstream (``upstream=fusion``) gets one cache per member, keyed by that member's own config and
    weights exactly as a single-model run of it is (so any fusion containing the member, and the member's
    single-model runs, share it; ``cache.max_gb`` applies to each), and the members' cached states are
    aligned on lookup (``FusedHiddenStateCache``)."""
    members = getattr(upstream, "members", None)
    if members is not None:
        return FusedHiddenStateCache(
            upstream,
            [
                open_hidden_state_cache(
                    cache_config, upstream_config["members"][key], member, task, settings, seed, device
                )
                for key, member in members.items()
            ],
        )
    if upstream.trainable:
        raise HiddenStateCacheError(
            "cache.enabled=true needs a frozen upstream: with upstream.trainable=true its hidden states change "
            "every update; set cache.enabled=false"
        )
    splits = list(cache_config["splits"])
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown or not splits:
        raise HiddenStateCacheError(
            f"cache.splits must be a non-empty subset of {list(SPLITS)}, got {splits}"
        )
    directory = resolve_cache_dir(cache_config.get("dir"))
    datasets = {split: split_dataset(task, split, seed) for split in splits}
    for split, dataset in datasets.items():
        refuse_random_crops(split, dataset, task)

    layers, width = upstream.num_layers, upstream.hidden_size
    upstream_key = upstream_identity(upstream_config, upstream)
    plans = {}
    for split, dataset in datasets.items():
        frames = upstream.frame_lengths(torch.tensor(dataset.num_samples, dtype=torch.long)).numpy()
        plans[split] = (split_folder(directory, split, upstream_key, task, dataset), frames)
    needed = {split: int(frames.sum()) * layers * width * 2 for split, (_, frames) in plans.items()}
    max_bytes = float(cache_config["max_gb"]) * 1e9
    if sum(needed.values()) > max_bytes:
        sizes = ", ".join(f"{split} {gigabytes(size)}" for split, size in needed.items())
        raise HiddenStateCacheError(
            f"caching {upstream.name} (L={layers}, D={width}) on splits {splits} would need "
            f"{gigabytes(sum(needed.values()))} ({sizes}; float16), more than cache.max_gb={cache_config['max_gb']}; "
            "raise cache.max_gb, cache fewer cache.splits, or set cache.enabled=false"
        )
    missing = [split for split, (folder, _) in plans.items() if not (folder / "index.json").is_file()]
    if missing:
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
        to_write = sum(needed[split] for split in missing)
        if to_write > free:
            raise HiddenStateCacheError(
                f"cache.dir={directory} has {gigabytes(free)} free; filling splits {missing} needs "
                f"{gigabytes(to_write)}; choose another cache.dir or set cache.enabled=false"
            )

    cache = HiddenStateCache(layers, width)
    upstream.to(device)
    for split, (folder, frames) in plans.items():
        dataset = datasets[split]
        if split in missing:
            log.info(
                "hidden-state cache: running %s once over the %s split (%d utterances, %s) into %s",
                upstream.name,
                split,
                len(dataset),
                gigabytes(needed[split]),
                folder,
            )
            fill_split(
                folder, dataset, frames, upstream, settings, device, description(upstream_key, split, task)
            )
        else:
            log.info("hidden-state cache: reading the %s split from %s", split, folder)
        cache.splits[split] = read_split(folder, dataset, layers, width)
    return cache


def resolve_cache_dir(configured: str | None) -> Path:
    if configured is not None:
        return Path(configured).expanduser()
    base = cache_dir()
    if base is None:
        raise HiddenStateCacheError(
            "cache.dir is null and SSL_BENCH_CACHE=off leaves no default location; set cache.dir"
        )
    return base / "hidden_states"


def refuse_random_crops(split: str, dataset: AudioDataset, task: Task) -> None:
    """A split whose utterances are cut to random windows has no fixed hidden states to store."""
    crop = dataset.crop_samples
    if crop is None:
        return
    longest = max(utterance.num_samples for utterance in dataset.utterances)
    if longest > crop:
        raise HiddenStateCacheError(
            f"cache.splits includes {split!r}, whose utterances {task.name} crops to random {crop / 16000:g} s "
            f"windows (longest {longest / 16000:.1f} s; task.train_crop_seconds, or task.max_seconds with "
            f"on_too_long=crop): a cache would freeze one window. Leave {split!r} out of cache.splits or set "
            "cache.enabled=false"
        )


def upstream_identity(upstream_config: dict[str, Any], upstream: Upstream) -> dict[str, Any]:
    """What the hidden states of a frozen upstream depend on: its config (less keys without effect) and
    a hash of every parameter and buffer."""
    config = {key: value for key, value in upstream_config.items() if key not in KEYS_WITHOUT_EFFECT}
    return {
        "name": upstream.name,
        "config": config,
        "weights_blake2b": weights_fingerprint(upstream),
        "num_layers": upstream.num_layers,
        "hidden_size": upstream.hidden_size,
    }


def weights_fingerprint(module: torch.nn.Module) -> str:
    """blake2b over every state-dict entry's name, dtype, shape and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def description(upstream_key: dict[str, Any], split: str, task: Task) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "upstream": upstream_key,
        "data_root": str(Path(task.data_root).resolve()),
        "split": split,
    }


def split_folder(
    directory: Path, split: str, upstream_key: dict[str, Any], task: Task, dataset: AudioDataset
) -> Path:
    """``<dir>/<split>-<hash of upstream, corpus, split and its utterances>``."""
    keyed = {
        **description(upstream_key, split, task),
        "utterances": [[utterance.id, utterance.num_samples] for utterance in dataset.utterances],
    }
    if dataset.gain_db:  # only when set, so that the caches of unscaled audio keep their folders
        keyed["gain_db"] = dataset.gain_db
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    return directory / f"{split}-{digest}"


def fill_split(
    folder: Path,
    dataset: AudioDataset,
    frames: np.ndarray,
    upstream: Upstream,
    settings: TrainerSettings,
    device: torch.device,
    about: dict[str, Any],
) -> None:
    """Run ``upstream`` over every utterance of ``dataset`` (length-sorted batches of the run's batch
    size) and write the float16 states to ``folder``, atomically."""
    layers, width = upstream.num_layers, upstream.hidden_size
    offsets = np.concatenate([[0], np.cumsum(frames[:-1] * layers * width)]).astype(np.int64)
    written = np.full(len(dataset), -1, dtype=np.int64)
    # its own generator (seed 0): never draws from the global RNG the run depends on
    loader = batch_loader(
        dataset, bucket_sampler(dataset, settings, shuffle=False), collate_wavs, settings, device, seed=0
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.partial-"))
    try:
        total = int(frames.sum()) * layers * width
        data = np.memmap(partial / "hidden_states.f16", dtype=np.float16, mode="w+", shape=(max(total, 1),))
        upstream.train(False)
        with torch.no_grad():
            for batch in loader:
                hidden_states, frame_lengths = upstream(
                    batch["wavs"].to(device, non_blocking=True),
                    batch["wav_lengths"].to(device, non_blocking=True),
                )
                stored = hidden_states.to(torch.float16)
                if not bool(torch.isfinite(stored).all()):
                    raise HiddenStateCacheError(
                        f"{upstream.name}'s hidden states reach {float(hidden_states.abs().amax()):.4g}, beyond "
                        f"float16's range ({FLOAT16_MAX:g}), so they cannot be cached; set cache.enabled=false"
                    )
                stored, frame_lengths = stored.cpu().numpy(), frame_lengths.cpu().numpy()
                for row, index in enumerate(batch["indices"].tolist()):
                    count = int(frame_lengths[row])
                    if count > frames[index]:
                        raise RuntimeError(
                            f"{upstream.name} returned {count} frames for utterance {dataset.utterances[index].id}, "
                            f"more than the {frames[index]} its frame_lengths predicts"
                        )
                    start = offsets[index]
                    data[start : start + layers * count * width] = stored[:, row, :count].reshape(-1)
                    written[index] = count
        data.flush()
        del data
        if (written < 0).any():
            raise RuntimeError(
                f"the cache fill missed {int((written < 0).sum())} utterances of {folder.name}"
            )
        index = {
            **about,
            "num_layers": layers,
            "hidden_size": width,
            "dtype": "float16",
            "ids": [utterance.id for utterance in dataset.utterances],
            "offsets": offsets.tolist(),
            "frames": written.tolist(),
        }
        (partial / "index.json").write_text(json.dumps(index))
        try:
            os.rename(partial, folder)
        except OSError:
            if not (folder / "index.json").is_file():
                raise
            log.info("hidden-state cache: another run completed %s first; using that one", folder)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)


def read_split(folder: Path, dataset: AudioDataset, layers: int, width: int) -> CachedSplit:
    index = json.loads((folder / "index.json").read_text())
    ids = [utterance.id for utterance in dataset.utterances]
    if index["ids"] != ids or (index["num_layers"], index["hidden_size"]) != (layers, width):
        raise HiddenStateCacheError(
            f"{folder} does not match this run's utterances or upstream (L, D); delete that folder"
        )
    return CachedSplit(
        ids=ids,
        offsets=np.asarray(index["offsets"], dtype=np.int64),
        frames=np.asarray(index["frames"], dtype=np.int64),
        data=np.memmap(folder / "hidden_states.f16", dtype=np.float16, mode="r"),
    )


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.3g} GB"
