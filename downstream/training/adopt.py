"""Re-adopting a finished run whose identity.json is damaged or missing: ``adopt=true``.

    python run_downstream.py <the run's command> adopt=true          # one run
    python run_downstream.py -m <the sweep's command> hydra.sweep.dir=<folder> adopt=true   # every job of a sweep

A finished run's folder whose identity.json cannot be read (bad JSON or encoding, truncated) or is missing is
refused by every launch (``identity.check_run_dir``), so that a launch of other settings never takes it over.
``adopt=true`` gives it back to the launch whose settings it holds, without training: it checks that
results.json is intact and records the ``config_hash`` of exactly this launch's result-affecting settings,
that best.pt (the finished model) is intact, then writes identity.json from the launch's settings; the
damaged file is kept as ``identity.json.damaged``. Nothing is deleted. The launch then ends; relaunching
without ``adopt=true`` skips the finished run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from downstream.results import ResultsFileError, RunResults
from downstream.training.checkpoint import CheckpointUnreadableError, read_checkpoint
from downstream.training.identity import (
    IDENTITY_FILE,
    RunConfigMismatchError,
    RunIdentity,
    differing_keys,
    schedule_of,
    stored_identity,
    write_identity,
)

log = logging.getLogger(__name__)


class AdoptError(ValueError):
    """A run folder that ``adopt=true`` cannot give back to this launch (the message says why and what to do)."""


def _comparable(
    task: str, interface: str, upstream: Any, seed: Any, schedule: Any, protocol: Any, trainer: dict[str, Any]
) -> dict[str, Any]:
    """The settings results.json records, as {config key: value}, to compare a launch with key by key."""
    settings = {
        "task_name": task,
        "interface_name": interface,
        "upstream_config": upstream,
        "seed": seed,
        "schedule": schedule,
        "protocol.name": protocol,
        **{f"trainer.{key}": value for key, value in trainer.items()},
    }
    return {key: value for key, value in settings.items() if value is not None}


def _differences(results: RunResults, cfg: DictConfig) -> str:
    """``key: recorded, now`` for each setting results.json records that this launch sets otherwise."""
    from downstream.training.runner import resolve_trainer_settings

    recorded = _comparable(
        results.task,
        results.interface,
        results.upstream_config,
        results.seed,
        results.schedule,
        results.protocol,
        results.trainer or {},
    )
    launch = _comparable(
        cfg.task_name,
        cfg.interface_name,
        cfg.upstream_config,
        cfg.seed,
        schedule_of(cfg),
        cfg.protocol.name,
        resolve_trainer_settings(cfg).record(),
    )
    differing = [key for key in recorded if key in launch and recorded[key] != launch[key]]
    return "; ".join(f"{key}: {recorded[key]!r} recorded, {launch[key]!r} now" for key in differing)


def adopt_run(cfg: DictConfig, run_dir: Path) -> None:
    """Rewrite ``run_dir``'s identity.json from this launch's settings ``cfg`` after checking them against
    results.json (module doc). ``AdoptError`` naming the file and the check that failed."""
    identity = RunIdentity.of(cfg)
    redo = "add overwrite=true instead of adopt=true to train it anew (this deletes its outputs)"
    try:
        results = RunResults.load(run_dir)
    except ResultsFileError as error:
        raise AdoptError(
            f"cannot re-adopt {run_dir}: {error}. Only a finished run with an intact results.json can be "
            f"re-adopted; {redo}"
        ) from error
    try:
        stored = stored_identity(run_dir)
    except RunConfigMismatchError:
        stored = None  # damaged: what adopt is for
    else:
        if stored is not None:
            if not differing_keys(stored, identity.config):
                log.info("%s: %s already holds these settings; nothing to re-adopt", run_dir, IDENTITY_FILE)
                return
            raise AdoptError(
                f"cannot re-adopt {run_dir}: its {IDENTITY_FILE} is intact and holds other settings; a launch "
                "without adopt=true lists them"
            )
    if results.config_hash is None:
        raise AdoptError(
            f"cannot re-adopt {run_dir}: its results.json records no config_hash (written by an older "
            f"version), so its settings cannot be checked against this launch's; {redo}"
        )
    if results.config_hash != identity.hash:
        detail = _differences(results, cfg)
        raise AdoptError(
            f"cannot re-adopt {run_dir}: its results.json records the settings hash {results.config_hash}, this "
            f"launch's is {identity.hash}, so they are not the same run ("
            + (detail or "the differing settings are among those results.json does not record one by one")
            + "). Relaunch with the settings that trained it"
        )
    best = run_dir / "best.pt"
    try:
        read_checkpoint(best, "cpu")
    except CheckpointUnreadableError as error:
        raise AdoptError(
            f"cannot re-adopt {run_dir}: its finished model is unusable ({error}); {redo}"
        ) from error
    damaged = run_dir / IDENTITY_FILE
    kept = ""
    if damaged.exists():
        damaged.replace(damaged.with_name(IDENTITY_FILE + ".damaged"))
        kept = f" (the damaged one kept as {IDENTITY_FILE}.damaged)"
    write_identity(identity, run_dir)
    log.info(
        "re-adopted %s: this launch's settings have the hash results.json recorded (%s) and best.pt is intact; "
        "%s written again%s. Relaunching without adopt=true now skips this finished run",
        run_dir,
        identity.hash,
        IDENTITY_FILE,
        kept,
    )
