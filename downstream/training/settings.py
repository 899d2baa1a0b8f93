"""The trainer's settings: configs/trainer/default.yaml as Hydra resolved it (the task schedule's values
where ``${schedule:<key>}`` stands), type-checked key by key."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ConfigValueError(ValueError):
    """A config key with a value of the wrong type or out of range; the message names the key, the value and
    what is allowed."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# What each key allows: (check, description). The check gets the value; None is allowed only where the
# description says so.
def _count(minimum: int, nullable: bool = False):
    def check(value: Any) -> bool:
        return (nullable and value is None) or (_is_int(value) and value >= minimum)

    return check, f"an integer >= {minimum}" + (" or null" if nullable else "")


def _number(minimum: float, strict: bool, nullable: bool = False):
    def check(value: Any) -> bool:
        if nullable and value is None:
            return True
        return _is_number(value) and (value > minimum if strict else value >= minimum)

    return check, f"a number {'>' if strict else '>='} {minimum:g}" + (" or null" if nullable else "")


def _choice(*allowed: Any):
    def check(value: Any) -> bool:
        return any(value == option and type(value) is type(option) for option in allowed)

    if allowed == (True, False):
        return check, "true or false"
    return check, "one of " + ", ".join(str(a).lower() if isinstance(a, bool) else str(a) for a in allowed)


ALLOWED: dict[str, tuple[Any, str]] = {
    "max_steps": _count(1),
    "eval_every": _count(1),
    "save_every": _count(1, nullable=True),
    "test_every": _count(1, nullable=True),
    "lr": _number(0, strict=True),
    "interface_lr": _number(0, strict=True, nullable=True),
    "batch_size": _count(1, nullable=True),
    "max_batch_seconds": _number(0, strict=True, nullable=True),
    "grad_accum": _count(1),
    "optimizer": _choice("adam", "adamw"),
    "weight_decay": _number(0, strict=False),
    "scheduler": _choice("none", "linear_warmup"),
    "warmup_steps": _count(0),
    "grad_clip": _number(0, strict=True),
    "precision": _choice(*PRECISIONS),
    "tf32": _choice(True, False),
    "device": _choice("auto", "cpu", "cuda"),
    "num_workers": (
        lambda value: value == "auto" or (_is_int(value) and value >= 0),
        "auto or an integer >= 0",
    ),
    "threads": (
        lambda value: value == "auto" or (_is_int(value) and value >= 1),
        "auto or an integer >= 1",
    ),
    "max_bad_steps": _count(0),
    "progress_bar": _choice("auto", True, False),
    "log_every": _count(1),
    "stop_after_steps": _count(1, nullable=True),
    "limit_eval_batches": _count(1, nullable=True),
}


@dataclass
class TrainerSettings:
    """Resolved trainer configuration (configs/trainer/default.yaml with the task schedule's values)."""

    max_steps: int
    eval_every: int
    lr: float
    batch_size: int | None
    grad_accum: int
    save_every: int | None = None
    test_every: int | None = None
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
    threads: int | str = "auto"
    max_bad_steps: int = 10
    progress_bar: str | bool = "auto"
    log_every: int = 50
    stop_after_steps: int | None = None
    limit_eval_batches: int | None = None
    halving_steps: list[int] | None = None  # successive halving (downstream/training/halving.py)

    @classmethod
    def from_config(cls, trainer_config: dict[str, Any]) -> TrainerSettings:
        """Settings from the resolved ``trainer`` node; ``ConfigValueError`` names any unknown key, or a key
        whose value has the wrong type or range, with the value and what is allowed."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(trainer_config) - known)
        if unknown:
            raise ConfigValueError(f"unknown trainer keys {unknown}; known keys: {sorted(known)}")
        missing = sorted(
            name for name in ("max_steps", "eval_every", "lr", "grad_accum") if name not in trainer_config
        )
        if missing:
            raise ConfigValueError(f"trainer keys {missing} are not set")
        settings = cls(**{"batch_size": None, **trainer_config})
        settings.validate()
        return settings

    def validate(self) -> None:
        """``ConfigValueError`` for the first key whose value is not allowed (``ALLOWED``)."""
        for name, (check, allowed) in ALLOWED.items():
            value = getattr(self, name)
            if not check(value):
                shown = "null" if value is None else repr(value)
                raise ConfigValueError(
                    f"trainer.{name}={shown} ({type(value).__name__}) is not allowed: trainer.{name} must be "
                    f"{allowed}"
                )
        if (self.batch_size is None) == (self.max_batch_seconds is None):
            raise ConfigValueError(
                f"set exactly one of trainer.batch_size (now {self.batch_size}) and trainer.max_batch_seconds "
                f"(now {self.max_batch_seconds})"
            )
        halving = self.halving_steps
        if halving is not None and (
            not isinstance(halving, list | tuple)
            or list(halving) != sorted(set(halving))
            or any(not _is_int(s) or s < 1 or s % self.eval_every or s >= self.max_steps for s in halving)
        ):
            raise ConfigValueError(
                "trainer.halving_steps must be increasing evaluation steps (multiples of trainer.eval_every="
                f"{self.eval_every}) below trainer.max_steps={self.max_steps}, got {halving!r}"
            )

    def record(self) -> dict[str, Any]:
        """Every setting as the run uses it (results.json ``trainer``): ``interface_lr`` and ``save_every``
        filled where null means 'the same as lr' / 'every eval_every'."""
        record = asdict(self)
        record["interface_lr"] = self.interface_lr or self.lr
        record["save_every"] = self.save_every or self.eval_every
        return record


def apply_tf32(enabled: bool) -> None:
    """trainer.tf32: let fp32 matrix products (and cuDNN convolutions) run on TF32 tensor cores (Ampere and
    newer GPUs; inputs rounded to a 10-bit mantissa, fp32 accumulation). False restores PyTorch's defaults:
    fp32 matrix products in full fp32 (``torch.set_float32_matmul_precision("highest")``), cuDNN convolutions
    allowed TF32 (``torch.backends.cudnn.allow_tf32``, PyTorch's default, left as it is). Process-wide."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    if enabled:
        torch.backends.cudnn.allow_tf32 = True
