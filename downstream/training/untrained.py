"""The engine's path for tasks that train nothing (``Task.trains`` False: QbE).

The upstream encodes each evaluated split's utterances through the job's interface, which must have no
trainable parameter (single_layer, last_layer, or a fitted one such as pca_concat, fitted on the task's
``fit_utterances``); the task scores the features (``task.score(split, features_by_id)``) and turns the
result into metrics (``task.metrics``). results.json is written by the run's logger from the runner's
``build_results``, like a trained run's, with ``steps`` 0 and no best step.

With ``task.select_layer`` and ``interface=single_layer`` (its default layer) every layer is scored on dev
(one upstream pass per layer, so only one layer's features are held at a time) and the best dev layer is
tested: SUPERB's protocol for QbE. Its dev metrics then add ``layer`` and ``mtwv_layer<k>`` for every layer
k. Other interfaces (last_layer, pca_concat) are evaluated as they are.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import hydra.utils
import torch
from torch import nn

from downstream.data.corpus import Utterance
from downstream.data.dataset import AudioDataset, collate_wavs
from downstream.heads import count_parameters
from downstream.metrics.display import results_line
from downstream.training.distributed import rank_info
from downstream.training.integrity import check_integrity
from downstream.training.loading import batch_loader, bucket_sampler, pick_device
from downstream.training.settings import TrainerSettings
from interfaces.base import Interface
from interfaces.single_layer import SingleLayer
from upstream.base import Upstream

log = logging.getLogger(__name__)

#: hidden states [L, B, T, D] and frame lengths [B] -> features [B, T, D'] (an interface)
Transform = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EvaluatedInterface:
    """What ``build_results`` reads of a branch, for a job that trains nothing."""

    interface: Interface
    head: nn.Module


def check_untrainable(task_name: str, interface_name: str, interface: Interface, upstream: Upstream) -> None:
    """ValueError when the job would need training: a trainable interface or a fine-tuned upstream."""
    trainable = count_parameters(interface)
    if trainable:
        raise ValueError(
            f"task={task_name} trains nothing, so trainable interfaces do not apply: interface={interface_name} "
            f"has {trainable} trainable parameters. Use interface=single_layer (task.select_layer=true picks "
            "the best layer on dev), interface=last_layer or a fitted interface such as interface=pca_concat"
        )
    if upstream.trainable:
        raise ValueError(f"task={task_name} trains nothing: set upstream.trainable=false")


def _batches(
    utterances: list[Utterance],
    upstream: Upstream,
    settings: TrainerSettings,
    device: torch.device,
    seed: int,
    gain_db: float = 0.0,
) -> Iterator[dict[str, torch.Tensor]]:
    """Whole utterances in batches of trainer.batch_size; audio shorter than the upstream's ``min_samples``
    zero-padded to it, as the engine's data check does for trained tasks, and scaled by ``gain_db`` decibels
    (the task's ``gain_db``)."""
    dataset = AudioDataset(utterances, pad_to_samples=int(upstream.min_samples), gain_db=gain_db)
    sampler = bucket_sampler(dataset, settings, shuffle=False)
    yield from batch_loader(dataset, sampler, collate_wavs, settings, device, seed)


@torch.no_grad()
def encode(
    utterances: list[Utterance],
    upstream: Upstream,
    transform: Transform,
    settings: TrainerSettings,
    device: torch.device,
    seed: int,
    gain_db: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Utterance id -> its features [T, D'] (float16, on the CPU), batches of trainer.batch_size; audio
    scaled by ``gain_db`` decibels."""
    features: dict[str, torch.Tensor] = {}
    if not utterances:
        return features
    for batch in _batches(utterances, upstream, settings, device, seed, gain_db):
        hidden_states, frame_lengths = upstream(batch["wavs"].to(device), batch["wav_lengths"].to(device))
        encoded = transform(hidden_states.float(), frame_lengths).half().cpu()
        for row, index in enumerate(batch["indices"].tolist()):
            features[utterances[index].id] = encoded[row, : int(frame_lengths[row])].clone()
    return features


def _fit(
    interface: Interface, utterances: list[Utterance], upstream: Upstream, settings, device, seed, gain_db
) -> None:
    def hidden_state_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in _batches(utterances, upstream, settings, device, seed, gain_db):
            with torch.no_grad():
                hidden_states, frame_lengths = upstream(
                    batch["wavs"].to(device), batch["wav_lengths"].to(device)
                )
            yield hidden_states.float(), frame_lengths

    interface.fit(hidden_state_batches())
    log.info("fitted %s on %d utterances", type(interface).__name__, len(utterances))


def evaluate_untrained(
    cfg: Any,
    task: Any,
    upstream: Upstream,
    settings: TrainerSettings,
    log_run: Any,
) -> tuple[dict[str, Any], EvaluatedInterface, TrainerSettings]:
    """Evaluate one job without training. Returns (the outcome ``build_results`` reads, the interface it
    describes, settings as used: ``max_steps`` 0, no ``lr`` nor ``limit_eval_batches``). ``log_run`` is the job's logger
    (RunLog)."""
    if settings.limit_eval_batches is not None:
        log.warning("%s scores whole splits: trainer.limit_eval_batches is ignored", cfg.task_name)
    if rank_info().is_distributed:
        raise ValueError(f"task={cfg.task_name} trains nothing; run it in one process, not under torchrun")
    device = pick_device(settings.device)
    upstream = upstream.to(device).eval()
    interface: Interface = hydra.utils.instantiate(
        cfg.interface, num_layers=upstream.num_layers, hidden_size=upstream.hidden_size
    ).to(device)
    check_untrainable(cfg.task_name, cfg.interface_name, interface, upstream)
    interface.eval()
    if interface.needs_fit:
        _fit(interface, task.fit_utterances(), upstream, settings, device, cfg.seed, task.gain_db)

    def metrics_of(split: str, features: dict[str, torch.Tensor]) -> dict[str, float]:
        """Metrics of ``split`` with the interface as it is now; ``features`` caches what it encodes (the
        documents are shared by dev and test, so they are encoded once per interface setting)."""
        missing = [utterance for utterance in task.utterances(split) if utterance.id not in features]
        features.update(encode(missing, upstream, interface, settings, device, cfg.seed, task.gain_db))
        return task.metrics(task.score(split, features, device=device))

    features: dict[str, torch.Tensor] = {}
    if getattr(task, "select_layer", False) and type(interface) is SingleLayer:
        if interface.layer != upstream.num_layers - 1:
            raise ValueError(
                f"task.select_layer=true scores every layer and keeps the best on dev, so "
                f"interface.layer={cfg.interface.layer} would be ignored: set task.select_layer=false to "
                "evaluate that layer alone"
            )
        pick = max if task.higher_is_better else min
        layer_scores: dict[int, dict[str, float]] = {}
        best = None
        for layer in range(upstream.num_layers):
            interface.layer = layer  # the interface itself, so that its normalize option applies
            layer_features: dict[str, torch.Tensor] = {}
            layer_scores[layer] = metrics_of("dev", layer_features)
            log.info("layer %d dev: %s %.4f", layer, task.metric, layer_scores[layer][task.metric])
            if best is None or pick(best, layer, key=lambda k: layer_scores[k][task.metric]) == layer:
                best, features = layer, layer_features  # keep only the best layer's features
        interface.layer = best
        dev = {
            **layer_scores[best],
            "layer": float(best),
            **{f"{task.metric}_layer{k}": scores[task.metric] for k, scores in layer_scores.items()},
        }
    else:
        dev = metrics_of("dev", features)
    test = metrics_of("test", features)
    log_run.log(0, "dev", dev)
    log_run.log(0, "test", test)
    log.info("%s without training (every metric in results.json):", cfg.task_name)
    for split, metrics in (("dev", dev), ("test", test)):
        log.info("%s", results_line(split, metrics, task.metric))
    outcome = {"best_step": None, "dev": dev, "test": test, "bad_steps": 0, "too_long": None}
    head = task.build_head(interface.output_size, {})
    return (
        outcome,
        EvaluatedInterface(interface, head),
        dataclasses.replace(settings, max_steps=0, lr=None, limit_eval_batches=None),
    )


def run_untrained_jobs(
    jobs: list[Any],
    results: list[dict[str, Any] | None],
    pending: list[int],
    task: Any,
    settings: TrainerSettings,
    build_results: Callable[..., dict[str, Any]],
) -> list[dict[str, Any] | None]:
    """The runner's ``run_jobs`` for a task that trains nothing: each pending job evaluated on one shared
    upstream, its results.json written by its logger from ``build_results`` (the runner's)."""
    from omegaconf import OmegaConf

    task.check_data()
    data_policy = check_integrity(task)  # before any model: ids, leakage, rates, NaN audio
    upstream = hydra.utils.instantiate(jobs[pending[0]].cfg.upstream)
    for index in pending:
        job = jobs[index]
        torch.manual_seed(job.cfg.seed)
        job.run_dir.mkdir(parents=True, exist_ok=True)
        run_log = hydra.utils.instantiate(job.cfg.logger, run_dir=job.run_dir)
        run_log.start(OmegaConf.to_container(job.cfg, resolve=True))
        outcome, evaluated, used_settings = evaluate_untrained(job.cfg, task, upstream, settings, run_log)
        results[index] = build_results(
            job.cfg, task, upstream, evaluated, used_settings, outcome, job.overrides, data_policy
        )
        run_log.finish(results[index])
        log.info("results: %s", job.run_dir / "results.json")
    return results
