"""Checkpoint averaging: keep the n best dev models by a dev number and test their parameter average, as
ESPnet does for ML-SUPERB (``keep_nbest_models: 5``, ``best_model_criterion: [valid, loss, min]``, tested
model ``valid.loss.ave.pth``: espnet2/main_funcs/average_nbest_models.py).

A run directory then holds ``nbest/step<k>.pt`` (one model per kept evaluation, written and read with
``checkpoint.save_best_model`` / ``load_model_file``) and, after training, ``average.pt`` (``AVERAGE_MODEL``,
the tested model, which ``downstream.inference`` loads instead of best.pt). The ranking (value, step) travels in
the branch's resumable checkpoint; a model file is deleted only at the next evaluation after the one that
pushed it out of the n best, when the checkpoint that forgot it has been written (every evaluation is
followed by a checkpoint), so a launch killed at any point resumes with every file its ranking names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from downstream.training.checkpoint import load_model_file, save_best_model
from downstream.training.distributed import rank_info

log = logging.getLogger(__name__)

#: The tested model of a run that averages checkpoints (what ``downstream.inference`` loads for it).
AVERAGE_MODEL = "average.pt"


def average_states(states: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The element-wise mean of model states with the same keys (nested dicts of tensors, as
    ``Branch.model_state``): floating tensors are averaged in float64 and cast back; integer tensors (e.g.
    batch-norm counters) are summed and floor-divided, as ESPnet's average_nbest_models does. Other values
    come from the first state. Raises ValueError for no states or mismatched keys."""
    if not states:
        raise ValueError("average_states needs at least one state")
    first = states[0]
    for other in states[1:]:
        if set(other) != set(first):
            raise ValueError(f"model states differ in their keys: {sorted(set(other) ^ set(first))}")
    averaged: dict[str, Any] = {}
    for key, value in first.items():
        values = [state[key] for state in states]
        if isinstance(value, Mapping):
            averaged[key] = average_states(values)
        elif isinstance(value, torch.Tensor) and value.is_floating_point():
            total = torch.stack([v.to(torch.float64) for v in values]).sum(dim=0)
            averaged[key] = (total / len(values)).to(value.dtype)
        elif isinstance(value, torch.Tensor):
            averaged[key] = torch.stack(values).sum(dim=0) // len(values)
        else:
            averaged[key] = value
    return averaged


class BestCheckpoints:
    """The ``n`` best evaluations of a branch by a dev number (lower is better unless ``higher_is_better``),
    each with its model file under ``folder``.

    ``update`` after every dev evaluation; ``state``/``load_state`` go into and out of the resumable
    checkpoint; ``average`` gives the mean model of the kept files. Ties keep the earlier evaluation.
    Only rank 0 writes or deletes files.
    """

    def __init__(self, folder: Path, n: int, higher_is_better: bool = False) -> None:
        if n < 1:
            raise ValueError(f"BestCheckpoints needs n >= 1, got {n}")
        self.folder = Path(folder)
        self.n = n
        self.higher_is_better = higher_is_better
        #: (value, step) of the kept evaluations, best first
        self.ranking: list[tuple[float, int]] = []
        #: steps pushed out of the ranking whose files go at the next update (see the module docstring)
        self.evicted: list[int] = []

    def path(self, step: int) -> Path:
        return self.folder / f"step{step}.pt"

    def update(self, value: float, step: int, model_state: Callable[[], dict[str, Any]]) -> bool:
        """Rank the evaluation of ``step`` with dev ``value``; when it is among the n best, write
        ``model_state()`` to its file. Returns whether it was kept."""
        self._delete(self.evicted)
        self.evicted = []
        sign = -1.0 if self.higher_is_better else 1.0
        ranking = sorted([*self.ranking, (value, step)], key=lambda entry: (sign * entry[0], entry[1]))
        kept, dropped = ranking[: self.n], ranking[self.n :]
        self.ranking = kept
        self.evicted = [s for _, s in dropped if s != step]
        is_kept = any(s == step for _, s in kept)
        if is_kept and rank_info().is_main:
            save_best_model(model_state(), self.path(step), step)
        return is_kept

    def state(self) -> dict[str, Any]:
        return {"ranking": [list(entry) for entry in self.ranking], "evicted": list(self.evicted)}

    def load_state(self, state: Mapping[str, Any] | None) -> None:
        """Resume the ranking of a checkpoint; model files it does not name (written by an interrupted
        launch after its last checkpoint) are deleted, named files that are missing are dropped from the
        ranking with a warning."""
        state = state or {}
        self.ranking = [(float(value), int(step)) for value, step in state.get("ranking", [])]
        self.evicted = [int(step) for step in state.get("evicted", [])]
        missing = [step for _, step in self.ranking if not self.path(step).exists()]
        if missing:
            log.warning("checkpoint averaging: model files of steps %s are missing; left out", missing)
            self.ranking = [entry for entry in self.ranking if entry[1] not in missing]
        named = {step for _, step in self.ranking} | set(self.evicted)
        strays = [int(p.stem[4:]) for p in self.folder.glob("step*.pt") if p.stem[4:].isdigit()]
        self._delete([step for step in strays if step not in named])

    def steps(self) -> list[int]:
        """The kept steps, best first."""
        return [step for _, step in self.ranking]

    def average(self, device: torch.device | str = "cpu") -> dict[str, Any]:
        """The mean model state of the kept files (``average_states``); ValueError when none is kept."""
        if not self.ranking:
            raise ValueError(f"no checkpoint to average under {self.folder}")
        states = []
        for step in self.steps():
            state = load_model_file(self.path(step), device)
            state.pop("step", None)
            states.append(state)
        return average_states(states)

    def finish(self) -> None:
        """Delete the files of evicted evaluations (after training)."""
        self._delete(self.evicted)
        self.evicted = []

    def _delete(self, steps: list[int]) -> None:
        if not rank_info().is_main:
            return
        for step in steps:
            self.path(step).unlink(missing_ok=True)
