"""Export interface features: ``python -m downstream.extract run_dir=<run> inputs=<audio> output=<folder>``, or
without a run, ``python -m downstream.extract upstream=<name> interface=<name> inputs=... output=...`` (any
other ``key=value`` is a Hydra override of the project's config, as for run_downstream.py) for the features
of an untrained interface (SUPERB's weighted sum starts from equal weights).

Keys: ``run_dir``, ``inputs`` (as for predict), ``output`` (a folder), ``format`` (npy | safetensors),
``hidden_states`` (positions in the upstream's hidden states to save as well, e.g. ``[0,12]``, or ``all``),
``device`` (auto | cpu | cuda), ``debug``.

Written: ``<output>/features/<id>.npy`` (float32 [T, D']) and ``<output>/hidden_states/<k>/<id>.npy``
(float32 [T, D]) with format=npy, or ``<output>/<id>.safetensors`` holding ``features`` and
``hidden_state_<k>`` with format=safetensors; and ``<output>/manifest.json``: the source (run folder or
config), frame_rate (Hz), feature_size, layer_ids, layer_weights, the input report, and per utterance its
id, path, file, frames and samples (16 kHz).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from downstream.files import write_atomically
from downstream.inference.cli import main_wrapper, parse_arguments
from downstream.inference.inputs import InputReport, check_inputs, inside, list_inputs
from downstream.inference.pipeline import Pipeline

log = logging.getLogger("downstream.extract")

KEYS = ("run_dir", "inputs", "output", "format", "hidden_states", "device")
FORMATS = ("npy", "safetensors")
REPO_ROOT = Path(__file__).resolve().parent.parent


def untrained_pipeline(overrides: list[str], device: str = "auto") -> tuple[Pipeline, dict[str, Any]]:
    """The upstream and interface of the project's config with ``overrides`` (Hydra syntax), the interface
    as the runner builds it before training (``runner.build_interface``); returns (pipeline, a description
    for the manifest). Raises ValueError for an interface that must be fitted on a corpus first."""
    import hydra.utils
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    import downstream.training.identity  # noqa: F401 - registers the config's resolvers
    from downstream.training.loading import pick_device
    from downstream.training.runner import build_interface, resolve_trainer_settings

    os.environ.setdefault("SSL_BENCH_ROOT", str(REPO_ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    settings = resolve_trainer_settings(cfg)
    upstream = hydra.utils.instantiate(cfg.upstream)
    interface = build_interface(cfg, upstream)
    if interface.needs_fit:
        raise ValueError(
            f"interface={cfg.interface_name} is fitted on training data; train a run and use run_dir=... instead"
        )
    source = {
        "upstream": OmegaConf.to_container(cfg.upstream, resolve=True),
        "interface": OmegaConf.to_container(cfg.interface, resolve=True),
        "overrides": list(overrides),
    }
    pipeline = Pipeline(upstream, interface, None, settings, pick_device(device, setting="device"), cfg.seed)
    return pipeline, source


def _hidden_positions(selection: Any, count: int) -> list[int]:
    if selection in (None, "", []):
        return []
    if selection == "all":
        return list(range(count))
    positions = [selection] if isinstance(selection, int) else list(selection)
    bad = [p for p in positions if not isinstance(p, int) or not 0 <= p < count]
    if bad:
        raise ValueError(
            f"hidden_states={selection}: positions must be integers in 0..{count - 1}, got {bad}"
        )
    return positions


def extract(
    pipeline: Pipeline,
    inputs: str | Path,
    output: str | Path,
    format: str = "npy",
    hidden_states: Any = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every input's interface features (and the chosen hidden states) under ``output`` with a
    manifest; returns the manifest."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; expected one of {', '.join(FORMATS)}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    upstream = pipeline.upstream
    positions = _hidden_positions(hidden_states, upstream.num_layers)
    layer_ids = list(upstream.layer_ids) or list(range(upstream.num_layers))
    report = InputReport()
    utterances = check_inputs(list_inputs(inputs), int(upstream.min_samples), upstream.max_samples, report)
    entries: dict[str, dict[str, Any]] = {}
    for forward in pipeline.batches(utterances, report, desc="extract"):
        features = forward.features.float().cpu()
        hidden = forward.hidden_states.float().cpu() if positions else None
        for row, utterance in enumerate(forward.utterances):
            frames = int(forward.frame_lengths[row])
            arrays = {"features": features[row, :frames].numpy()}
            for position in positions:
                arrays[f"hidden_state_{layer_ids[position]}"] = hidden[position, row, :frames].numpy()
            entries[utterance.id] = {
                "id": utterance.id,
                "path": str(utterance.path),
                "frames": frames,
                "samples": utterance.num_samples,
                **_save(output, utterance.id, arrays, format),
            }
    weights = pipeline.interface.layer_weights()
    manifest = {
        "source": source,
        "format": format,
        "frame_rate": float(upstream.frame_rate),
        "feature_size": int(pipeline.interface.output_size),
        "hidden_size": int(upstream.hidden_size),
        "layer_ids": layer_ids,
        "hidden_states": [layer_ids[p] for p in positions],
        "layer_weights": None if weights is None else weights.detach().float().cpu().tolist(),
        "inputs": report.to_dict(),
        "utterances": [entries[u.id] for u in utterances if u.id in entries],
    }
    text = json.dumps(manifest, indent=1)
    write_atomically(output / "manifest.json", lambda stream: stream.write(text.encode()))
    log.info("%s; features of %d utterances in %s", report.summary(), len(entries), output)
    return manifest


def _save(output: Path, utterance_id: str, arrays: dict[str, np.ndarray], format: str) -> dict[str, Any]:
    """Write one utterance's arrays; returns the manifest's file fields (paths relative to ``output``)."""
    if format == "safetensors":
        from safetensors.numpy import save_file

        path = inside(output, f"{utterance_id}.safetensors")
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: np.ascontiguousarray(a) for name, a in arrays.items()}, str(path))
        return {"file": path.relative_to(output.resolve()).as_posix()}
    files = {}
    for name, array in arrays.items():
        folder = "features" if name == "features" else f"hidden_states/{name.removeprefix('hidden_state_')}"
        path = inside(output / folder, f"{utterance_id}.npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, array)
        files[name] = path.relative_to(output.resolve()).as_posix()
    return {"file": files.pop("features"), **({"hidden_state_files": files} if files else {})}


def main(argv: list[str]) -> None:
    values, overrides = parse_arguments(
        argv, KEYS, ("inputs", "output"), "downstream.extract", pass_through=True
    )
    device = str(values.get("device", "auto"))
    if values.get("run_dir"):
        if overrides:
            raise ValueError(
                f"downstream.extract: {overrides} change a config, but run_dir=... uses the run's recorded "
                "settings; drop them, or drop run_dir for an untrained interface"
            )
        from downstream.inference.run import load_run

        run = load_run(values["run_dir"], device=device)
        pipeline, source = run.pipeline, {"run_dir": str(run.run_dir)}
    else:
        pipeline, source = untrained_pipeline(overrides, device)
    extract(
        pipeline,
        values["inputs"],
        values["output"],
        format=str(values.get("format", "npy")),
        hidden_states=values.get("hidden_states"),
        source=source,
    )


if __name__ == "__main__":
    main_wrapper(main)
