"""The trainer's settings: configs/trainer/default.yaml with its nulls filled from the task's schedule."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainerSettings:
    """Resolved trainer configuration (configs/trainer/default.yaml, nulls filled from the task schedule)."""

    max_steps: int
    eval_every: int
    lr: float
    batch_size: int | None
    grad_accum: int
    save_every: int | None = None
    interface_lr: float | None = None
    max_batch_seconds: float | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    scheduler: str = "none"
    warmup_steps: int = 0
    grad_clip: float = 1.0
    precision: str = "fp32"
    tf32: bool = False
    device: str = "auto"
    num_workers: int | str = 0
    max_bad_steps: int = 10
    progress_bar: str | bool = "auto"
    log_every: int = 50
    stop_after_steps: int | None = None
    limit_eval_batches: int | None = None
    halving_steps: list[int] | None = None  # successive halving (downstream/training/halving.py)

    @classmethod
    def resolve(cls, trainer_config: dict[str, Any], schedule: dict[str, Any]) -> TrainerSettings:
        """Trainer keys left null take the task schedule's value; unknown keys are errors."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(trainer_config) - known)
        if unknown:
            raise ValueError(f"unknown trainer keys {unknown}; known keys: {sorted(known)}")
        values = {key: value for key, value in trainer_config.items() if value is not None}
        for key, value in schedule.items():
            values.setdefault(key, value)
        missing = [name for name in ("max_steps", "eval_every", "lr", "grad_accum") if name not in values]
        if missing:
            raise ValueError(f"trainer keys {missing} are null and the task schedule does not set them")
        values.setdefault("batch_size", None)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("max_steps", "eval_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"trainer.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"trainer.lr must be > 0, got {self.lr}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"trainer.precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.tf32, bool):
            raise ValueError(f"trainer.tf32 must be true or false, got {self.tf32!r}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"trainer.optimizer must be adam or adamw, got {self.optimizer!r}")
        if self.scheduler not in ("none", "linear_warmup"):
            raise ValueError(f"trainer.scheduler must be none or linear_warmup, got {self.scheduler!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"trainer.device must be auto, cpu or cuda, got {self.device!r}")
        if (self.batch_size is None) == (self.max_batch_seconds is None):
            raise ValueError("set exactly one of trainer.batch_size and trainer.max_batch_seconds")
        halving = self.halving_steps
        if halving is not None and (
            list(halving) != sorted(set(halving))
            or any(
                not isinstance(s, int) or s < 1 or s % self.eval_every or s >= self.max_steps for s in halving
            )
        ):
            raise ValueError(
                "trainer.halving_steps must be increasing evaluation steps (multiples of trainer.eval_every="
                f"{self.eval_every}) below trainer.max_steps={self.max_steps}, got {list(halving)}"
            )
        workers = self.num_workers
        if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ValueError(f"trainer.num_workers must be a count >= 0 or 'auto', got {workers!r}")


def apply_tf32(enabled: bool) -> None:
    """trainer.tf32: let fp32 matrix products (and cuDNN convolutions) run on TF32 tensor cores (Ampere and
    newer GPUs; inputs rounded to a 10-bit mantissa, fp32 accumulation). False restores PyTorch's defaults:
    fp32 matrix products in full fp32 (``torch.set_float32_matmul_precision("highest")``), cuDNN convolutions
    allowed TF32 (``torch.backends.cudnn.allow_tf32``, PyTorch's default, left as it is). Process-wide."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    if enabled:
        torch.backends.cudnn.allow_tf32 = True
