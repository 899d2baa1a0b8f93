"""Hugging Face transformers models (HuBERT, WavLM, wav2vec 2.0, data2vec-audio) with all hidden states out."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

from upstream._offline import (
    CheckpointNotFoundError,
    missing_checkpoint_message,
    network_unreachable_reason,
)
from upstream.base import Upstream

# Wav2Vec2FeatureExtractor's do_normalize: (x - mean) / sqrt(var + 1e-7) per utterance.
HF_WAVEFORM_NORM_EPS = 1e-7
PREPROCESSOR_FILE = "preprocessor_config.json"


def _looks_like_path(model: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else that points at the filesystem is a path."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _waveform_norm_eps(model: str, cache_dir: str | None, local_only: bool) -> float | None:
    """HF_WAVEFORM_NORM_EPS if the checkpoint's feature extractor normalises the waveform, else None.

    Reads ``do_normalize`` from preprocessor_config.json; a checkpoint without that file declares no
    preprocessing and gets none.
    """
    if os.path.isdir(model):
        config_path: str | None = os.path.join(model, PREPROCESSOR_FILE)
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(
                model, PREPROCESSOR_FILE, cache_dir=cache_dir, local_files_only=local_only
            )
        except Exception:  # no such file in the repo, or not cached while offline
            config_path = None
    if config_path is None or not os.path.isfile(config_path):
        return None
    with open(config_path) as handle:
        do_normalize = json.load(handle).get("do_normalize", False)
    return HF_WAVEFORM_NORM_EPS if do_normalize else None


def _tie_last_hidden_state(model: nn.Module) -> nn.Module:
    """Make hidden_states[-1] the encoder's output. transformers 5 records the last layer's raw output
    instead, which for pre-LN ("stable layer norm", Large) models lacks the encoder's final layer norm that
    s3prl/fairseq and transformers 4 include; for post-LN models the two are the same tensor."""
    model.config.tie_last_hidden_states = True
    return model


def load_hf_model(model: str, cache_dir: str | None) -> tuple[nn.Module, float | None]:
    """Load a transformers speech encoder offline-first: a local directory, else the HF cache, else (online
    only) the Hub. Returns (model in fp32 with layerdrop and SpecAugment-style masking off, waveform-norm eps
    or None). Attention is transformers' default: PyTorch SDPA for the families that support it."""
    from transformers import AutoModel

    overrides = {"dtype": torch.float32, "layerdrop": 0.0, "apply_spec_augment": False}
    model = os.path.expanduser(model) if model.startswith("~") else model
    if os.path.isdir(model):
        if not (Path(model) / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"upstream.model={model!r} is a directory without config.json; expected a directory written "
                "by save_pretrained (config.json + model.safetensors or pytorch_model.bin)"
            )
        loaded = AutoModel.from_pretrained(model, local_files_only=True, **overrides)
        return _tie_last_hidden_state(loaded), _waveform_norm_eps(model, cache_dir, local_only=True)
    if _looks_like_path(model):
        raise CheckpointNotFoundError(
            f"upstream.model={model!r} looks like a local path but is not an existing directory; expected a "
            "directory written by save_pretrained, or a Hugging Face id such as facebook/hubert-base-ls960"
        )
    try:
        loaded = AutoModel.from_pretrained(model, cache_dir=cache_dir, local_files_only=True, **overrides)
        return _tie_last_hidden_state(loaded), _waveform_norm_eps(model, cache_dir, local_only=True)
    except OSError:
        pass
    from huggingface_hub import constants

    reason = network_unreachable_reason(constants.ENDPOINT)
    if reason is not None:
        repo_folder = "models--" + model.replace("/", "--")
        cache = _hf_cache_dir(cache_dir)
        raise CheckpointNotFoundError(
            missing_checkpoint_message(
                model=f"{model} (hf)",
                looked_in=[f"Hugging Face cache {os.path.join(cache, repo_folder)}"],
                needs=f"{constants.ENDPOINT}/{model} (config.json, model.safetensors or pytorch_model.bin, "
                f"{PREPROCESSOR_FILE})",
                put_it=f"run `hf download {model}` where there is internet and copy {repo_folder} into {cache} "
                "(set HF_HOME or upstream.cache_dir to move it), or save the files in a directory and pass "
                "upstream.model=<that directory>",
                reason=reason,
            )
        )
    loaded = AutoModel.from_pretrained(model, cache_dir=cache_dir, **overrides)
    return _tie_last_hidden_state(loaded), _waveform_norm_eps(model, cache_dir, local_only=False)


class HfUpstream(Upstream):
    """A transformers speech encoder: ``model`` is a Hugging Face id or a save_pretrained directory.

    hidden_states are transformers' ``output_hidden_states``: the transformer input, then each layer's
    output (the last one after the final layer norm for "stable layer norm" Large models), so L =
    num_hidden_layers + 1 and the order matches the s3prl and torchaudio sources. The waveform attention
    mask is always passed; see TorchaudioModelUpstream for what padding does to group-norm (Base) CNNs.
    Weights are cached by huggingface_hub ($HF_HOME/hub, default ~/.cache/huggingface/hub, or
    ``cache_dir``); a fine-tuned checkpoint (e.g. ...ForCTC) loads as its base encoder.
    """

    def __init__(
        self,
        model: str = "facebook/hubert-base-ls960",
        cache_dir: str | None = None,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        super().__init__(
            trainable=trainable, lr=lr, name=f"{model} (hf)", precision=precision, compile=compile
        )
        self.model, self.waveform_norm_eps = load_hf_model(str(model), cache_dir)
        config = self.model.config
        if not hasattr(config, "conv_kernel") or not hasattr(config, "num_hidden_layers"):
            raise ValueError(
                f"upstream.model={model!r} is a {type(self.model).__name__}; expected a wav2vec 2.0-style "
                "speech encoder (HuBERT, WavLM, wav2vec 2.0, data2vec-audio) with a CNN front end"
            )
        self.conv_kernels = tuple(config.conv_kernel)
        self.conv_strides = tuple(config.conv_stride)
        self.downsample_rate = math.prod(self.conv_strides)
        self.num_layers = config.num_hidden_layers + 1
        self.hidden_size = config.hidden_size
        self.finalize_setup()

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        attention_mask = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < wav_lengths[:, None]
        output = self.model(wavs, attention_mask=attention_mask.long(), output_hidden_states=True)
        return torch.stack(output.hidden_states)
