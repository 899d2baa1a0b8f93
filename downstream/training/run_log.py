"""Per-run records: the training curve (curve.jsonl), results.json, and optionally Weights & Biases."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Protocol

from downstream.files import write_atomically

log = logging.getLogger(__name__)


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` (``downstream.files.write_atomically``)."""
    text = json.dumps(payload, indent=2) + "\n"
    write_atomically(path, lambda stream: stream.write(text.encode()))


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


def _wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class RunLogger:
    """Appends every logged record to ``<run_dir>/curve.jsonl`` and, with ``wandb=true``, to W&B.

    W&B ``mode: auto`` goes online only when credentials are configured (WANDB_API_KEY or a netrc
    entry) and falls back to offline mode when the online start fails, so a run never blocks on it;
    WANDB_MODE in the environment wins over this setting.
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
        self._wandb_run = None

    def start(self, config: dict[str, Any], resume_step: int = 0) -> None:
        """Open the run; on resume, drop curve records past ``resume_step`` (they will be redone)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.curve_path.exists():
            kept = [
                line
                for line in self.curve_path.read_text().splitlines()
                if line and json.loads(line)["step"] <= resume_step
            ]
            self.curve_path.write_text("".join(line + "\n" for line in kept))
        if self.use_wandb:
            self._wandb_run = self._start_wandb(config)

    def _start_wandb(self, config: dict[str, Any]):
        import wandb

        settings = dict(self.wandb_settings)
        mode = os.environ.get("WANDB_MODE") or settings.pop("mode")
        settings.pop("mode", None)
        if mode == "auto":
            mode = "online" if _wandb_has_credentials() else "offline"
        init = dict(
            settings,
            config=config,
            dir=str(self.run_dir),
            id=self.run_dir.name.replace("/", "-"),
            resume="allow",
        )
        try:
            return wandb.init(mode=mode, settings=wandb.Settings(init_timeout=60), **init)
        except Exception as error:  # noqa: BLE001 - any failure to reach W&B must not stop the run
            if mode != "online":
                raise
            log.warning("wandb online start failed (%s); logging offline instead", error)
            return wandb.init(mode="offline", **init)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, **metrics}
        with self.curve_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log({f"{split}/{key}": value for key, value in metrics.items()}, step=step)

    def finish(self, results: dict[str, Any] | None) -> None:
        """Write results.json (a complete run) and close W&B."""
        if results is not None:
            write_json_atomically(self.run_dir / "results.json", results)
        if self._wandb_run is not None:
            if results is not None:
                for split in ("dev", "test"):
                    for key, value in results[split].items():
                        self._wandb_run.summary[f"final/{split}/{key}"] = value
                if results.get("layer_weights") is not None:
                    self._wandb_run.summary["layer_weights"] = results["layer_weights"]
            self._wandb_run.finish()
            self._wandb_run = None
