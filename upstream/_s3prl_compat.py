"""The one compatibility shim that lets s3prl 0.4.18 import under torchaudio 2.9+.

Why: importing ``s3prl.nn``/``s3prl.hub`` imports every s3prl upstream, and some of them call
``torchaudio.set_audio_backend(...)`` at import time (byol_a/byol_s) or import ``torchaudio.sox_effects``
(mos_prediction). torchaudio 2.9 removed both (its I/O moved to TorchCodec), so the import fails before
any model is loaded. The shim adds a no-op ``set_audio_backend`` and a ``torchaudio.sox_effects`` module
whose ``apply_effects_tensor`` raises if an upstream actually calls it; nothing that the wav2vec 2.0 /
HuBERT / WavLM family uses is touched. Only ``upstream/s3prl_hub.py`` uses this module: it calls
``install()`` right before importing s3prl.
"""

from __future__ import annotations

import importlib
import sys
import types

import torchaudio


def _set_audio_backend_removed(backend: str | None) -> None:
    """torchaudio >= 2.9 has no backend switch; s3prl only calls this at import time."""


def _apply_effects_tensor_removed(*args: object, **kwargs: object) -> None:
    raise RuntimeError(
        "torchaudio.sox_effects was removed in torchaudio 2.9; this s3prl upstream needs torchaudio < 2.9"
    )


def install() -> None:
    """Idempotently add the two names s3prl needs to torchaudio."""
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = _set_audio_backend_removed
    if "torchaudio.sox_effects" not in sys.modules:
        try:
            importlib.import_module("torchaudio.sox_effects")
        except ImportError:
            sox_effects = types.ModuleType("torchaudio.sox_effects")
            sox_effects.apply_effects_tensor = _apply_effects_tensor_removed
            sys.modules["torchaudio.sox_effects"] = sox_effects
            torchaudio.sox_effects = sox_effects
