"""Measurement inside a runner's process, identical for s3prl and this project (see vs_s3prl.py)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(REPO_ROOT))
SAMPLE_RATE = 16000


# -- measurement inside a runner's process --------------------------------------------------------------
class Meter:
    """Timestamps optimizer updates and counts the audio the upstream receives, for both runners alike.

    The window is updates (warmup, total]; the device is synchronised at its two ends only. ``on_done``
    runs after the last update of the window (writes the result, then exits unless told to finish).
    """

    def __init__(
        self, warmup: int, total: int, device: str, on_done: Callable[[dict[str, Any]], None]
    ) -> None:
        self.warmup, self.total, self.device, self.on_done = warmup, total, device, on_done
        self.started = time.perf_counter()
        self.updates = 0
        self.first_update_s: float | None = None
        self.t0 = 0.0
        self.counting = False
        self.real_samples: Any = 0  # int, or a device tensor for batches whose lengths live on the device
        self.padded_samples = 0
        self.upstream_calls = 0

    def _sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def count_audio(self, real: Any, padded: int) -> None:
        if self.counting:
            self.real_samples = self.real_samples + real
            self.padded_samples += padded
            self.upstream_calls += 1

    def after_update(self, *_: Any) -> None:
        self.updates += 1
        if self.updates == 1:
            self.first_update_s = time.perf_counter() - self.started
        if self.updates == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()
            self.real_samples, self.padded_samples, self.upstream_calls = 0, 0, 0
            self.counting = True
        elif self.updates == self.total:
            self._sync()
            seconds = time.perf_counter() - self.t0
            self.counting = False
            real = self.real_samples
            real = float(real.item()) if hasattr(real, "item") else float(real)
            self.on_done(self.result(seconds, real))

    def result(self, seconds: float, real_samples: float) -> dict[str, Any]:
        import torch

        updates = self.total - self.warmup
        if self.device.startswith("cuda"):
            peak_mib = torch.cuda.max_memory_allocated() / 2**20
            memory = "CUDA max_memory_allocated"
        else:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            memory = "peak RSS"
        return {
            "updates": updates,
            "seconds": seconds,
            "updates_per_s": updates / seconds,
            "audio_s_per_s": real_samples / SAMPLE_RATE / seconds,
            "audio_s_per_update": real_samples / SAMPLE_RATE / updates,
            "padded_s_per_update": self.padded_samples / SAMPLE_RATE / updates,
            "upstream_calls": self.upstream_calls,
            "peak_mib": peak_mib,
            "memory": memory,
            "first_update_s": self.first_update_s,
        }


def start_meter(spec: dict[str, Any]) -> Meter:

    def done(result: dict[str, Any]) -> None:
        Path(spec["result"]).write_text(json.dumps(result, indent=1))
        if not spec["finish"]:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)

    meter = Meter(spec["warmup"], spec["updates"], spec["device"], done)
    from torch.optim.optimizer import register_optimizer_step_post_hook

    register_optimizer_step_post_hook(meter.after_update)
    return meter
