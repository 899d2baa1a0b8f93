"""Per-run records: the training curve (curve.jsonl), results.json, and optionally Weights & Biases."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from downstream.files import write_atomically

log = logging.getLogger(__name__)


#: The ``LogRecord`` attribute that names the run folder a log line is about, for lines whose text does not
#: name it (``about_run``); the shared-upstream launcher routes such a line to that run's log file only.
RUN_DIR_FIELD = "run_dir"


def about_run(run_dir: Path) -> dict[str, str]:
    """``extra=`` for ``log.info(...)``: marks the line as being about the run folder ``run_dir`` alone
    (``RUN_DIR_FIELD``), e.g. a results line ``test: PER 37.76 %`` of one of several runs trained together."""
    return {RUN_DIR_FIELD: str(run_dir)}


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` (``downstream.files.write_atomically``)."""
    text = json.dumps(payload, indent=2) + "\n"
    write_atomically(path, lambda stream: stream.write(text.encode()))


def read_curve(path: Path) -> list[dict[str, Any]]:
    """The records of a curve.jsonl (one JSON object with an integer ``step`` per line), read tolerantly: a
    torn last line (no newline at its end: a launch killed while appending it) is dropped with a warning,
    and a damaged line elsewhere (bad JSON or encoding, no step) is reported by its number and skipped."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("not a record with an integer step")
        except ValueError as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(lines):  # the file does not end with a newline
                log.warning("%s: dropped its torn last line %d (%s)", path, number, error)
            else:
                log.warning("%s: line %d is damaged (%s); skipped", path, number, error)
            continue
        records.append(record)
    return records


class RunLog(Protocol):
    """What the trainer needs of a run's logger (``RunLogger``; ``SilentRunLogger`` on ranks other than 0)."""

    def start(self, config: dict[str, Any], resume_step: int = 0) -> None:
        """Open the run (``config``: the resolved job config); a resumed run restarts at ``resume_step``."""
        ...

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Record ``metrics`` of ``split`` (train, dev, test, layer_weights) at optimizer step ``step``."""
        ...

    def finish(self, results: dict[str, Any] | None) -> None:
        """Close the run; ``results`` is the results.json record of a finished run, None after an early stop."""
        ...


class SilentRunLogger:
    """The logger of ranks other than 0: the ``RunLog`` interface, writing nothing."""

    def start(self, config: dict[str, Any], resume_step: int = 0) -> None:
        pass

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        pass

    def finish(self, results: dict[str, Any] | None) -> None:
        pass


#: Packages whose versions results.json records (``environment_record``).
RECORDED_PACKAGES = ("torch", "torchaudio", "transformers", "s3prl", "hydra-core", "numpy")


def environment_record(device: Any) -> dict[str, Any]:
    """Where a run ran (results.json ``environment``, W&B config): package versions (None where not
    installed), Python, torch's intra-op thread count, and the device (with its name on CUDA)."""
    import torch

    versions = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or None
    return {
        "packages": versions,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": name,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
    }


def _wandb_reachable(timeout: float) -> bool:
    """Whether a TCP connection to the W&B server (WANDB_BASE_URL, default api.wandb.ai) opens within
    ``timeout`` seconds: a node without network answers in at most that, instead of wandb's long retries."""
    url = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "api.wandb.ai", port), timeout=timeout):
            return True
    except OSError:
        return False


def wandb_run_id(run_dir: Path) -> str:
    """This run folder's W&B run id: made once (random), kept in ``<run_dir>/wandb/run_id.txt`` so that a
    resumed launch continues the same W&B run, and two folders (other settings, another seed, another
    machine) never share one. ``overwrite=true`` removes the file, so a rerun starts a new W&B run."""
    path = run_dir / "wandb" / "run_id.txt"
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = f"{run_dir.name[:40]}-{uuid.uuid4().hex[:12]}"
    write_atomically(path, lambda stream: stream.write(run_id.encode() + b"\n"))
    return run_id


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class RunLogger:
    """Appends every logged record to ``<run_dir>/curve.jsonl`` and, with ``wandb=true``, to W&B.

    W&B ``mode: auto`` goes online only when credentials are configured (WANDB_API_KEY or a netrc
    entry) and the server answers within ``probe_timeout`` seconds, and falls back to offline mode when
    the online start fails (within ``init_timeout`` seconds); WANDB_MODE in the environment wins over this
    setting. A W&B call that fails later is logged once and W&B is left off for the rest of the run:
    curve.jsonl and results.json are always written.
    """

    def __init__(
        self,
        run_dir: str | Path,
        wandb: bool = False,
        project: str = "ssl-interface-bench",
        entity: str | None = None,
        group: str | None = None,
        name: str | None = None,
        mode: str = "auto",
        probe_timeout: float = 5.0,
        init_timeout: float = 60.0,
    ) -> None:
        if mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"logger.mode must be auto, online, offline or disabled, got {mode!r}")
        self.run_dir = Path(run_dir)
        self.curve_path = self.run_dir / "curve.jsonl"
        self.use_wandb = wandb
        self.wandb_settings = {
            "project": project,
            "entity": entity,
            "group": group,
            "name": name,
            "mode": mode,
        }
        self.probe_timeout = probe_timeout
        self.init_timeout = init_timeout
        self._wandb_run = None

    def start(self, config: dict[str, Any], resume_step: int = 0) -> None:
        """Open the run; on resume, drop curve records past ``resume_step`` (they will be redone)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.curve_path.exists():
            kept = [record for record in read_curve(self.curve_path) if record["step"] <= resume_step]
            text = "".join(json.dumps(record) + "\n" for record in kept)
            write_atomically(self.curve_path, lambda stream: stream.write(text.encode()))
        if self.use_wandb:
            self._wandb_run = self._start_wandb(config)

    def _start_wandb(self, config: dict[str, Any]):
        import wandb

        settings = dict(self.wandb_settings)
        mode = os.environ.get("WANDB_MODE") or settings.pop("mode")
        settings.pop("mode", None)
        if mode == "auto":
            if not _wandb_has_credentials():
                mode = "offline"
            elif not _wandb_reachable(self.probe_timeout):
                log.warning(
                    "wandb: %s does not answer; logging offline (upload later with `wandb sync %s`)",
                    os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai",
                    self.run_dir / "wandb" / "offline-run-*",
                )
                mode = "offline"
            else:
                mode = "online"
        init = dict(
            settings, config=config, dir=str(self.run_dir), id=wandb_run_id(self.run_dir), resume="allow"
        )
        try:
            return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=self.init_timeout), **init)
        except Exception as error:  # noqa: BLE001 - any failure to reach W&B must not stop the run
            if mode != "online":
                log.warning(
                    "wandb could not start (%s: %s); only curve.jsonl is written", type(error).__name__, error
                )
                return None
            log.warning("wandb online start failed (%s); logging offline instead", error)
        try:
            return wandb.init(mode="offline", **init)
        except Exception as error:  # noqa: BLE001
            log.warning(
                "wandb could not start offline either (%s: %s); only curve.jsonl is written",
                type(error).__name__,
                error,
            )
            return None

    def _wandb_call(self, call) -> None:
        """Run ``call(run)`` on the W&B run; a failure turns W&B off for the rest of the run, with a warning."""
        if self._wandb_run is None:
            return
        try:
            call(self._wandb_run)
        except Exception as error:  # noqa: BLE001 - W&B must never stop a run
            log.warning(
                "wandb failed (%s: %s); W&B logging is off for the rest of this run",
                type(error).__name__,
                error,
            )
            self._wandb_run = None

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, **metrics}
        try:
            with self.curve_path.open("a") as stream:
                stream.write(json.dumps(record) + "\n")
        except OSError as error:  # a side file never ends a run: results.json is still written
            log.warning("could not append to %s (%s); this record is missing from it", self.curve_path, error)
        self._wandb_call(
            lambda run: run.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)
        )

    def finish(self, results: dict[str, Any] | None) -> None:
        """Write results.json (a complete run) and close W&B."""
        if results is not None:
            write_json_atomically(self.run_dir / "results.json", results)

        def summarize_and_finish(run) -> None:
            if results is not None:
                for split in ("dev", "test", "test_selected"):
                    for key, value in (results.get(split) or {}).items():
                        run.summary[f"final/{split}/{key}"] = value
                # the config holds protocol.name too; the summary makes runs filterable by it
                run.summary["protocol"] = results.get("protocol")
                if results.get("layer_weights") is not None:
                    run.summary["layer_weights"] = results["layer_weights"]
                if results.get("members") is not None:  # a fused upstream: each member's layers and rate
                    run.summary["members"] = results["members"]
            run.finish()

        self._wandb_call(summarize_and_finish)
        self._wandb_run = None
