"""A finished run rebuilt from its folder: ``load_run(path)`` -> ``TrainedRun`` with ``predict`` and
``features`` on one waveform, and the batched file paths ``predict``/``extract`` use.

What is read: ``.hydra/config.yaml`` (the resolved settings the run trained with: upstream, interface,
head, task, protocol, trainer precision and batching), ``identity.json`` and ``results.json`` (their
settings hash must be the config's), and ``best.pt`` (the best dev model, through
``checkpoint.load_model_file``; ``average.pt`` instead where the run tested an average of checkpoints,
``training.averaging``; it records the name of each head output, so the training corpus is not
needed). Everything is built by the runner's own builders (``build_task``, ``build_model``, the upstream's
``_target_``) from those recorded values, never from today's config defaults.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hydra.utils
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from downstream.data.corpus import Utterance
from downstream.heads import head_output_lengths
from downstream.inference.inputs import InputReport
from downstream.inference.pipeline import Forward, Pipeline
from downstream.results import HYDRA_DIR, RESULTS_FILE
from downstream.tasks.base import Task
from downstream.training.averaging import AVERAGE_MODEL
from downstream.training.checkpoint import load_model_file
from downstream.training.identity import IDENTITY_FILE, RunIdentity
from downstream.training.loading import pick_device
from downstream.training.runner import (
    build_interface,
    build_model,
    build_task,
    resolve_trainer_settings,
    seed_everything,
)

log = logging.getLogger(__name__)

BEST_MODEL = "best.pt"


class RunLoadError(ValueError):
    """A run folder that cannot be used: missing files, or a checkpoint that does not match its settings
    (the message names the file and the key)."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise RunLoadError(
            f"{path} is missing: {path.parent} is not a finished run (its training has not ended)"
        )
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise RunLoadError(f"{path} is unreadable: {error}") from None


def recorded_config(run_dir: Path) -> DictConfig:
    """The resolved settings of the run (``.hydra/config.yaml``), checked against the settings hash that
    identity.json and results.json record: RunLoadError naming the differing keys when the file was edited."""
    path = run_dir / HYDRA_DIR / "config.yaml"
    if not path.is_file():
        raise RunLoadError(f"{path} is missing: the run's recorded settings are needed to rebuild it")
    cfg = OmegaConf.load(path)
    results = _read_json(run_dir / RESULTS_FILE)
    identity = RunIdentity.of(cfg)
    stored = _read_json(run_dir / IDENTITY_FILE) if (run_dir / IDENTITY_FILE).is_file() else None
    if stored is not None and stored.get("hash") != identity.hash:
        config = stored.get("config", {})
        differing = sorted(
            key
            for key in set(config) | set(identity.config)
            if config.get(key, "<unset>") != identity.config.get(key, "<unset>")
        )
        raise RunLoadError(
            f"{path} does not hold the settings the run trained with ({run_dir / IDENTITY_FILE}): "
            + "; ".join(
                f"{key}: {config.get(key)!r} then, {identity.config.get(key)!r} in config.yaml"
                for key in differing
            )
        )
    recorded_hash = results.get("config_hash")
    if recorded_hash is not None and recorded_hash != identity.hash:
        raise RunLoadError(
            f"{path} hashes to {identity.hash} but {run_dir / RESULTS_FILE} records config_hash {recorded_hash}"
        )
    return cfg


def load_state_checked(module: nn.Module, state: Mapping[str, torch.Tensor], part: str, path: Path) -> None:
    """``module.load_state_dict(state)`` after checking that every key and shape matches; RunLoadError
    naming the first key that is missing, unexpected or of another shape."""
    own = module.state_dict()
    for key, tensor in own.items():
        if key not in state:
            raise RunLoadError(f"{path}: {part}.{key} is missing; the run's recorded settings build it")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise RunLoadError(
                f"{path}: {part}.{key} has shape {list(state[key].shape)} but the run's recorded settings build "
                f"{list(tensor.shape)}: the checkpoint does not match .hydra/config.yaml"
            )
    extra = sorted(set(state) - set(own))
    if extra:
        raise RunLoadError(
            f"{path}: {part}.{extra[0]} is in the checkpoint but not in the model the settings build"
        )
    module.load_state_dict(state)


class TrainedRun:
    """A finished run, ready to use. Attributes: ``run_dir``, ``config`` (the recorded settings),
    ``results`` (results.json), ``task``, ``pipeline`` (upstream, interface and head on ``device``),
    ``outputs`` (the name of each head output), ``frame_rate`` (feature frames per second, Hz)."""

    def __init__(
        self,
        run_dir: Path,
        config: DictConfig,
        results: dict[str, Any],
        task: Task,
        pipeline: Pipeline,
        outputs: list[str],
    ) -> None:
        self.run_dir, self.config, self.results, self.task = run_dir, config, results, task
        self.pipeline, self.outputs = pipeline, outputs
        self.frame_rate = float(pipeline.upstream.frame_rate)

    def __repr__(self) -> str:
        return f"TrainedRun({self.run_dir}: {self.results.get('task')} / {self.results.get('interface')})"

    def features(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """The trained interface's output for one waveform: float32 [T, D'] on the CPU, T frames at
        ``frame_rate`` Hz, D' the interface's ``output_size``. ``wav``: [N] or [channels, N] float samples
        (channels are averaged) at ``sample_rate`` Hz (resampled to 16 kHz as files are)."""
        forward = self.pipeline.one(wav, sample_rate)
        return forward.features[0, : int(forward.frame_lengths[0])].float().cpu()

    def predict(self, wav: torch.Tensor | np.ndarray, sample_rate: int) -> dict[str, Any]:
        """The task's prediction for one waveform (arguments as ``features``): PR/ASR/ML-SUPERB
        ``hypothesis`` (ml_multi adds ``language``), SF ``hypothesis``, ``text`` and ``slots``;
        SID/ER/KS ``label`` and ``probabilities`` (class -> probability); IC ``label``, ``slots`` and
        per-slot ``probabilities``; SV ``embedding`` (numpy float32 [E]); SD ``turns`` ([speaker, start s,
        end s]). QbE has no per-waveform prediction (``downstream.inference.qbe.search``)."""
        forward = self.pipeline.one(wav, sample_rate)
        return self.records(forward)[0]

    def records(self, forward: Forward) -> list[dict[str, Any]]:
        """The task's prediction of every utterance of a batch (``Task.predictions``)."""
        samples = [utterance.num_samples for utterance in forward.utterances]
        lengths = head_output_lengths(self.pipeline.head, forward.frame_lengths, forward.features.shape[1])
        return self.task.predictions(forward.logits, lengths, samples, self.outputs)

    def predict_files(
        self, utterances: list[Utterance], report: InputReport
    ) -> Iterator[tuple[Utterance, dict]]:
        """(input, prediction) of every checked input, in the trainer's evaluation batches."""
        for forward in self.pipeline.batches(utterances, report, desc="predict"):
            yield from zip(forward.utterances, self.records(forward), strict=True)


def _qbe_interface_config(cfg: DictConfig, results: dict[str, Any]) -> DictConfig:
    """QbE with layer selection tested the best dev layer (results.json dev.layer): that layer's config."""
    interface_cfg = cfg.interface.copy()
    layer = results.get("dev", {}).get("layer")
    if cfg.task.get("select_layer") and layer is not None:
        with open_dict(interface_cfg):
            interface_cfg.layer = int(layer)
    return interface_cfg


def load_run(path: str | Path, device: str = "auto") -> TrainedRun:
    """Rebuild the finished run in ``path`` (a run folder with results.json) on ``device`` (auto | cpu |
    cuda). Raises RunLoadError naming the file and key when the folder is incomplete or its checkpoint
    does not match its recorded settings, and ``checkpoint.ModelFormatError`` naming both versions when
    best.pt was written in a format this code cannot read."""
    run_dir = Path(path)
    cfg = recorded_config(run_dir)
    results = _read_json(run_dir / RESULTS_FILE)
    settings = resolve_trainer_settings(cfg)
    torch_device = pick_device(device, setting="device")
    seed_everything(cfg.seed)
    task = build_task(cfg.task)
    upstream = hydra.utils.instantiate(cfg.upstream)
    if not task.trains:  # QbE: nothing trained; the interface the run tested
        with open_dict(cfg):
            cfg.interface = _qbe_interface_config(cfg, results)
        interface = build_interface(cfg, upstream)
        if interface.needs_fit:
            raise RunLoadError(
                f"{run_dir}: interface={cfg.interface_name} is fitted on the corpus when the run is scored and "
                "its fit is not saved; QbE search needs single_layer or last_layer"
            )
        pipeline = Pipeline(upstream, interface, None, settings, torch_device, cfg.seed, task)
        pipeline.autocast_dtype = None  # QbE runs are scored without autocast (training.untrained.encode)
        return TrainedRun(run_dir, cfg, results, task, pipeline, [])
    # a run that tested the average of its best checkpoints (ML-SUPERB under protocol=superb) reports that one
    model_path = run_dir / AVERAGE_MODEL if (run_dir / AVERAGE_MODEL).is_file() else run_dir / BEST_MODEL
    state = load_model_file(model_path, "cpu")
    outputs = state.get("outputs")
    if outputs is None:
        log.info(
            "%s records no output names (written before format 1): reading them from the corpus", model_path
        )
        outputs = task.output_names()
    interface, head = build_model(cfg, upstream, task, num_outputs=len(outputs) or None)
    load_state_checked(interface, state["interface"], "interface", model_path)
    load_state_checked(head, state["head"], "head", model_path)
    if "upstream" in state:
        if not cfg.upstream.get("trainable", False):
            raise RunLoadError(
                f"{model_path} holds upstream weights but upstream.trainable is false in the settings"
            )
        load_state_checked(upstream, state["upstream"], "upstream", model_path)
    elif cfg.upstream.get("trainable", False):
        raise RunLoadError(
            f"{model_path} has no upstream weights but upstream.trainable is true in the settings"
        )
    pipeline = Pipeline(upstream, interface, head, settings, torch_device, cfg.seed, task)
    return TrainedRun(run_dir, cfg, results, task, pipeline, list(outputs))
