"""A run's identity: the resolved settings that can change its result, the short hash that names its folder,
and the check that a relaunch into a folder continues or skips only a run of the same settings.

Torch-free on purpose: ``run_downstream.py`` skips a finished run with this module alone (no torch import).

- ``identity_config(cfg)``: the resolved job config as flat dotted keys, without ``EXCLUDED_KEYS`` (the one
  list of settings that never change a result), paths inside the repository written relative to it.
- ``config_hash(identity)``: 8 hex digits of its SHA-256; the ``${run_hash:}`` resolver puts it in
  ``hydra.run.dir`` and ``${job_dirname:}`` in a sweep job's folder name.
- ``check_run_dir``: compares with the folder's ``identity.json``; a run of other settings is refused with
  ``RunConfigMismatchError`` naming every differing key with both values.
- ``${schedule:<key>}``: the trainer keys' defaults, the task schedule's value (``schedule_of``);
  ``${schedule:<key>,<default>}`` where a schedule may leave the key out.
- ``${protocol:<key>}``: a task key that differs between protocols, its value in the task's
  ``protocols.<protocol.name>`` map (configs/protocol/, docs/protocols.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from downstream.files import write_atomically
from downstream.results import RESULTS_FILE, ResultsFileError, RunResults

log = logging.getLogger(__name__)

#: Settings that never change a run's numbers, left out of its identity (folder name, identity.json, the
#: skip and resume check) and of a sweep job's folder name. A key covers everything below it.
EXCLUDED_KEYS = (
    "overwrite",  # what to do with a finished run, not how to train it
    "adopt",  # re-adopting a finished run whose identity.json is damaged (adopt.py)
    "debug",  # show tracebacks
    "logger",  # where records go (curve.jsonl and results.json are always written)
    "paths",  # only feed interpolations; the resolved values (task.data_root, ...) are part of the identity
    "task.schedules",  # the chosen schedule's values are in trainer.*
    "task.protocols",  # the chosen protocol's values are in the task keys that read ${protocol:<key>}
    "task.protocol_sources",  # where each protocol value comes from (docs only)
    "trainer.num_workers",  # data order and crops do not depend on the worker count
    "trainer.threads",  # torch's CPU threads: speed (sums may differ in the last bits, as across machines)
    "trainer.progress_bar",
    "trainer.save_every",  # resuming is exact, so checkpoint spacing does not change results
    "trainer.stop_after_steps",  # ends a launch, not the run
    "cache.dir",  # where the hidden-state cache lives (cache.enabled and cache.splits do count: fp16 states)
    "cache.max_gb",
    "upstream.cache_dir",  # where downloaded weights are looked for; the model is named by upstream.model
    "lr_search",  # experiment=lr_search's grid: which jobs the sweep has (each job's trainer.lr counts)
)

IDENTITY_FILE = "identity.json"
#: What to do about a folder whose identity.json is damaged or missing (``stored_identity``, ``check_run_dir``).
ADOPT_HINT = (
    "If the run finished (results.json intact), relaunch this command with adopt=true: it checks this launch's "
    f"settings against those results.json recorded and writes {IDENTITY_FILE} again (downstream/training/"
    "adopt.py); otherwise add overwrite=true to train it anew (this deletes the folder's outputs)."
)
#: Files that hold a run's state: a folder with any of them is a run that a relaunch would continue or skip.
RUN_STATE_FILES = ("results.json", "last.pt", "last.pt.previous", "best.pt", "best.pt.previous", "average.pt")
SCHEDULES = ("auto", "superb", "demo")
_MAX_READABLE = 200  # characters of a sweep job's readable folder name before the hash


class RunConfigMismatchError(ValueError):
    """A relaunch into a run folder whose stored settings differ from this launch's."""


def is_excluded(key: str) -> bool:
    """Whether dotted ``key`` is one of ``EXCLUDED_KEYS`` or lies below one; a fused upstream's member keys
    (``upstream.members.<name>.<key>``) count as the same ``upstream.<key>``."""
    parts = key.split(".")
    if len(parts) > 3 and parts[:2] == ["upstream", "members"]:
        key = ".".join(["upstream", *parts[3:]])
    return any(key == excluded or key.startswith(excluded + ".") for excluded in EXCLUDED_KEYS)


def resolved_job_config(cfg: DictConfig) -> DictConfig:
    """The job's config with every interpolation resolved now, while HydraConfig is this job's (the
    ``${hydra:...}`` names), and without the hydra node."""
    without_hydra = cfg.copy()
    with open_dict(without_hydra):
        without_hydra.pop("hydra", None)
    return OmegaConf.create(OmegaConf.to_container(without_hydra, resolve=True))


def _flatten(node: Any, prefix: str, into: dict[str, Any]) -> None:
    if isinstance(node, Mapping) and node:
        for key, value in node.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), into)
    else:
        into[prefix] = node


def identity_config(cfg: DictConfig) -> dict[str, Any]:
    """The result-affecting settings of a job config: resolved, as {dotted key: value} in key order, without
    ``EXCLUDED_KEYS``. Paths inside the repository (``paths.root``) are written as ``${paths.root}/...`` so
    that another checkout of the same code and data has the same identity."""
    resolved = OmegaConf.to_container(resolved_job_config(cfg))
    flat: dict[str, Any] = {}
    _flatten(resolved, "", flat)
    root = str(flat.get("paths.root") or os.environ.get("SSL_BENCH_ROOT", "")).rstrip("/")

    def relative(value: Any) -> Any:
        if isinstance(value, str) and root and (value == root or value.startswith(root + "/")):
            return "${paths.root}" + value[len(root) :]
        if isinstance(value, list):
            return [relative(item) for item in value]
        return value

    return {key: relative(flat[key]) for key in sorted(flat) if not is_excluded(key)}


def config_hash(identity: Mapping[str, Any]) -> str:
    """8 hex digits of the SHA-256 of ``identity`` (``identity_config``) as canonical JSON."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def choose_schedule(schedule: str, data_root: str, mini_corpus: str) -> str:
    """superb or demo: ``schedule=auto`` means demo exactly when ``data_root`` lies inside the shipped mini
    corpus. ValueError for another name."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule={schedule!r} is not a schedule; allowed: {', '.join(SCHEDULES)}")
    if schedule != "auto":
        return schedule
    return "demo" if Path(data_root).resolve().is_relative_to(Path(mini_corpus).resolve()) else "superb"


def schedule_of(cfg: DictConfig) -> str:
    """The schedule a job config trains with (demo or superb)."""
    return choose_schedule(cfg.schedule, cfg.task.data_root, cfg.paths.mini_superb)


# -- resolvers: the trainer's schedule defaults, and the folder names -----------------------------------
_NO_DEFAULT = object()


def _schedule_value(key: str, default: Any = _NO_DEFAULT, *, _root_: DictConfig) -> Any:
    """``${schedule:lr}``: the value of ``key`` in the task schedule this job trains with;
    ``${schedule:optimizer,adam}``: ``adam`` where the schedule does not set ``optimizer``."""
    if key == "batch_size" and _root_.trainer.get("max_batch_seconds") is not None:
        return None  # batches filled up to trainer.max_batch_seconds of audio instead
    name = schedule_of(_root_)
    schedules = _root_.task.get("schedules") or {}
    if name in schedules and key in schedules[name]:
        return schedules[name][key]
    if default is not _NO_DEFAULT:
        return default
    raise ValueError(
        f"the task's {name!r} schedule (task.schedules.{name}) does not set {key}; "
        f"set trainer.{key}=<value> on the command line"
    )


def _protocol_value(key: str, *, _root_: DictConfig) -> Any:
    """``${protocol:<key>}``: ``task.protocols.<protocol.name>.<key>``, the task's value of ``key`` under the
    job's protocol (configs/protocol/). ValueError naming the map and key when the task does not set it."""
    name = _root_.protocol.name
    protocols = _root_.task.get("protocols") or {}
    if name not in protocols or key not in protocols[name]:
        raise ValueError(
            f"protocol={name}: the task's protocols.{name} map does not set {key!r} "
            f"(task {_root_.task_name}; known protocols: {', '.join(protocols) or 'none'})"
        )
    return protocols[name][key]


#: The folder-name hash of a config that does not resolve: the launch then reports the error itself, in one
#: message, when it resolves the config (instead of Hydra failing while it names the folder).
UNRESOLVED = "unresolved"


def _run_hash(*, _root_: DictConfig) -> str:
    """``${run_hash:}``: ``config_hash`` of the job's identity (``UNRESOLVED`` if it does not resolve)."""
    try:
        return config_hash(identity_config(_root_))
    except Exception:  # noqa: BLE001 - reported by the launch with the key that fails
        return UNRESOLVED


def _readable_override(override: str) -> str:
    """``key=value`` for a folder name: a path value (with ``/``) becomes its last two parts joined by ``_``
    (``task.data_root=/data/LibriSpeech`` reads ``task.data_root=data_LibriSpeech``; the hash tells paths apart)."""
    key, separator, value = override.partition("=")
    if "/" in value or "\\" in value:
        parts = [part for part in re.split(r"[/\\]+", value) if part]
        value = "_".join(parts[-2:])
    return re.sub(r"[/\\\x00]", "_", key + separator + value)


#: What ends a sweep job's readable folder name when overrides were left out to keep it short.
DROPPED_MARKER = ",..."


def _override_order(readable: str) -> tuple[int, str]:
    """Short overrides first: group choices and top-level keys (``interface=``, ``task=``, ``seed=``), then
    keys by their depth (``trainer.lr=`` before ``upstream.members.random.hidden_size=``; a package override
    ``+upstream@upstream.members.random=`` counts its package's parts), then by text."""
    key = readable.split("=", 1)[0].lstrip("+~")
    return len(re.split(r"[.@]", key)), readable


def job_dirname(overrides: list[str], identity_hash: str) -> str:
    """A sweep job's folder name: its result-affecting overrides (``_readable_override``: no path
    separators), short ones first (``_override_order``: ``interface=``, ``seed=``, ``task=`` before
    ``trainer.lr=`` before ``+upstream@upstream.members.<m>=...``), ``,``-joined, then ``-<hash>``.

    Overrides are never cut: when the name would exceed ``_MAX_READABLE`` bytes, whole overrides are left out
    from the end and ``DROPPED_MARKER`` (``,...``) says so (``...`` alone when even the first is too long);
    the hash still tells such folders apart. The same overrides, in any order, give the same name."""
    kept = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("hydra") or is_excluded(key):
            continue
        kept.append(_readable_override(override))
    kept.sort(key=_override_order)
    readable = ",".join(kept)
    if len(readable.encode()) > _MAX_READABLE:
        budget = _MAX_READABLE - len(DROPPED_MARKER.encode())
        shown: list[str] = []
        for override in kept:
            if len(",".join([*shown, override]).encode()) > budget:
                break
            shown.append(override)
        readable = ",".join(shown) + DROPPED_MARKER if shown else DROPPED_MARKER.lstrip(",")
    return f"{readable}-{identity_hash}" if readable else identity_hash


def _job_dirname(*, _root_: DictConfig) -> str:
    """``${job_dirname:}``: ``job_dirname`` of the job's command-line overrides and identity."""
    return job_dirname(list(_root_.hydra.overrides.task), _run_hash(_root_=_root_))


#: Upstream config keys that name the model, in order of precedence (a local ``path`` wins where it is set).
_MODEL_KEYS = ("path", "model", "name", "bundle")


def upstream_label(config_name: str, upstream: Mapping[str, Any]) -> str:
    """The run folder's upstream part: ``<config>-<model>`` where the upstream config names a model
    (``hf`` + ``model: facebook/hubert-base-ls960`` reads ``hf-hubert-base-ls960``; ``s3prl`` +
    ``name: wavlm_large`` reads ``s3prl-wavlm_large``; ``torchaudio`` + ``bundle: HUBERT_BASE`` reads
    ``torchaudio-hubert_base``; a local ``path`` gives its last part), else the config name (``tiny``)."""
    for key in _MODEL_KEYS:
        value = upstream.get(key)
        if isinstance(value, str) and value:
            model = [part for part in re.split(r"[/\\]+", value) if part][-1].lower()
            model = re.sub(r"[^a-z0-9._-]+", "-", model).strip("-.")
            return f"{config_name}-{model}" if model else config_name
    return config_name


def _upstream_label(*, _root_: DictConfig) -> str:
    """``${upstream_label:}``: ``upstream_label`` of the job's upstream config choice and node."""
    return upstream_label(str(_root_.upstream_config), _root_.upstream)


def _protocol_tag(*, _root_: DictConfig) -> str:
    """``${protocol_tag:}``: ``<protocol>-`` for a protocol other than the default superb, else empty, so
    that a folder of protocol=exact says so (``seed0-exact-<hash>``)."""
    name = str(_root_.protocol.name)
    return "" if name == "superb" else f"{name}-"


def sweep_values(grid: Any) -> str:
    """``lr_search.grid`` (a list of learning rates) as the comma-separated values of a Hydra sweep.

    ValueError naming the key unless it is a non-empty list of positive finite numbers."""
    values = list(grid) if isinstance(grid, list | tuple | ListConfig) else None
    if not values or any(
        isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0
        for v in values
    ):
        raise ValueError(f"lr_search.grid must be a non-empty list of positive learning rates, got {grid!r}")
    return ",".join(repr(float(v)) for v in values)


def register_resolvers() -> None:
    """Register ``schedule``, ``protocol``, ``sweep_values`` (experiment=lr_search's grid), ``run_hash``,
    ``job_dirname``, ``upstream_label`` and ``protocol_tag`` with OmegaConf (idempotent); call before
    composing the project's config."""
    for name, function in (
        ("schedule", _schedule_value),
        ("protocol", _protocol_value),
        ("sweep_values", sweep_values),
        ("run_hash", _run_hash),
        ("job_dirname", _job_dirname),
        ("upstream_label", _upstream_label),
        ("protocol_tag", _protocol_tag),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, function)


register_resolvers()


# -- the check at launch -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunIdentity:
    """A job's identity: its result-affecting settings (``identity_config``) and their hash."""

    config: dict[str, Any]
    hash: str

    @classmethod
    def of(cls, cfg: DictConfig) -> RunIdentity:
        config = identity_config(cfg)
        return cls(config, config_hash(config))

    def to_json(self) -> str:
        return json.dumps({"hash": self.hash, "config": self.config}, indent=2, default=str) + "\n"


def stored_identity(run_dir: Path) -> dict[str, Any] | None:
    """The settings recorded in ``<run_dir>/identity.json`` (None without one; ValueError if unreadable)."""
    path = run_dir / IDENTITY_FILE
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text(encoding="utf-8"))["config"])
    except (ValueError, KeyError, TypeError) as error:  # bad JSON or encoding (both ValueErrors), truncated
        raise RunConfigMismatchError(
            f"{path} is unreadable ({type(error).__name__}: {error}), so this folder's settings cannot be "
            f"checked. {ADOPT_HINT}"
        ) from error


def differing_keys(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys whose value differs (or that only one side has), sorted."""
    return sorted(
        key for key in set(stored) | set(current) if stored.get(key, "<unset>") != current.get(key, "<unset>")
    )


def _value(mapping: Mapping[str, Any], key: str) -> str:
    return json.dumps(mapping[key], default=str) if key in mapping else "(not set)"


def check_run_dir(identity: RunIdentity, run_dir: Path) -> dict[str, Any] | None:
    """Whether ``run_dir`` may hold this run: the finished results to reuse (same settings, complete
    results.json), or None (nothing there yet, or a checkpoint of the same settings to resume).

    Raises ``RunConfigMismatchError`` when the folder holds a run (results.json or checkpoints) whose
    identity.json differs, listing every differing key with both values, or that has no identity.json
    (written before identities were recorded). ``overwrite=true`` is handled by the caller, before this."""
    has_run = any((run_dir / name).exists() for name in RUN_STATE_FILES)
    if not has_run:
        return None
    stored = stored_identity(run_dir)
    how = (
        "Relaunch without hydra.run.dir / with another hydra.sweep.dir so that these settings get a folder "
        "of their own, or add overwrite=true to discard the run in this folder and train it anew here."
    )
    if stored is None:
        raise RunConfigMismatchError(
            f"{run_dir} holds a run without {IDENTITY_FILE} (written by an older version, or removed), so its "
            f"settings cannot be checked against this launch's. {ADOPT_HINT} {how}"
        )
    differing = differing_keys(stored, identity.config)
    if differing:
        lines = [
            f"  {key}: {_value(stored, key)} in the folder, {_value(identity.config, key)} now"
            for key in differing
        ]
        raise RunConfigMismatchError(
            f"{run_dir} holds a run with other settings ({len(differing)} differ):\n"
            + "\n".join(lines)
            + f"\n{how}"
        )
    try:
        return RunResults.load(run_dir).to_dict()
    except ResultsFileError as error:
        if (run_dir / RESULTS_FILE).exists():
            log.warning(
                "%s; the run is not taken as finished: it continues from its checkpoint and writes results.json "
                "again",
                error,
            )
        return None


def nearest_run(identity: RunIdentity, run_dir: Path) -> tuple[Path, list[str]] | None:
    """The other run folder beside ``run_dir`` (same task, upstream and interface folder, or the same sweep)
    whose identity.json differs from ``identity`` in the fewest keys, and those keys; None without one.
    Unreadable identity files are passed over."""
    best: tuple[Path, list[str]] | None = None
    if not run_dir.parent.is_dir():
        return None
    for folder in sorted(run_dir.parent.iterdir()):
        if folder == run_dir or not (folder / IDENTITY_FILE).is_file():
            continue
        try:
            stored = stored_identity(folder)
        except RunConfigMismatchError:
            continue
        differing = differing_keys(stored or {}, identity.config)
        if best is None or len(differing) < len(best[1]):
            best = (folder, differing)
    return best


def describe_difference(identity: RunIdentity, folder: Path, differing: list[str], shown: int = 8) -> str:
    """``<folder> differs in N settings: key: old -> new, ...`` (the first ``shown`` keys)."""
    stored = stored_identity(folder) or {}
    parts = [f"{key}: {_value(stored, key)} -> {_value(identity.config, key)}" for key in differing[:shown]]
    more = f", and {len(differing) - shown} more" if len(differing) > shown else ""
    return f"{folder.name} differs in {len(differing)} setting(s): " + "; ".join(parts) + more


def write_identity(identity: RunIdentity, run_dir: Path) -> None:
    """Record ``identity`` in ``<run_dir>/identity.json`` (atomically; unchanged files are not rewritten)."""
    path = run_dir / IDENTITY_FILE
    text = identity.to_json()
    if path.is_file() and path.read_text() == text:
        return
    write_atomically(path, lambda stream: stream.write(text.encode()))


def write_resolved_hydra_config(cfg: DictConfig, run_dir: Path) -> None:
    """Replace Hydra's ``.hydra/config.yaml`` (saved with its interpolations) by the resolved values the run
    uses: the schedule's lr, batch size, steps, the corpus path, ... (only where Hydra made ``.hydra/``)."""
    folder = run_dir / ".hydra"
    if not folder.is_dir():
        return
    text = "# resolved by run_downstream.py: the values this run uses\n" + OmegaConf.to_yaml(
        resolved_job_config(cfg)
    )
    write_atomically(folder / "config.yaml", lambda stream: stream.write(text.encode()))
