"""A small randomly initialised HuBERT-architecture upstream, built locally: the offline demo's and tests' default."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchaudio.models import wav2vec2_model

from upstream.base import LayerSelection
from upstream.torchaudio_bundle import TorchaudioModelUpstream

# The wav2vec 2.0 / HuBERT CNN's kernels and strides (T = floor((n - 400) / 320) + 1), with few channels.
CNN_KERNELS = (10, 3, 3, 3, 3, 2, 2)
CNN_STRIDES = (5, 2, 2, 2, 2, 2, 2)


class TinyUpstream(TorchaudioModelUpstream):
    """HuBERT Base's architecture scaled down: the same CNN kernels and strides (50 Hz frames) with
    ``conv_channels`` channels, a post-LN transformer of ``num_transformer_layers`` layers of width
    ``hidden_size`` with ``num_heads`` heads and an FFN of 2 x hidden_size. Weights are drawn from
    ``seed`` without touching the caller's random state, so the same arguments give the same model.

    L = num_transformer_layers + 1 (the ``num_layers`` attribute). The CNN uses per-frame layer norm
    (``extractor_mode="layer_norm"``) by default, so a padded batch equals single runs at valid frames;
    ``extractor_mode="group_norm"`` has the Base models' first-layer group norm (see ``padding_mode`` in
    TorchaudioModelUpstream).

    ``checkpoint``: a torchaudio state dict for exactly this architecture (e.g. the one shipped in
    data/tiny_hubert/, pretrained on the mini corpus by scripts/pretrain_tiny_hubert.py) replaces the
    random weights; ``upstream=tiny_pretrained`` selects it.
    """

    def __init__(
        self,
        num_transformer_layers: int = 6,
        hidden_size: int = 192,
        seed: int = 0,
        num_heads: int = 4,
        conv_channels: int = 32,
        extractor_mode: str = "layer_norm",
        layer_norm_first: bool = False,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        checkpoint: str | None = None,
        padding_mode: str = "exact",
        layers: LayerSelection = None,
    ) -> None:
        if num_transformer_layers < 1:
            raise ValueError(f"upstream.num_transformer_layers must be >= 1, got {num_transformer_layers}")
        if hidden_size < 1 or hidden_size % num_heads != 0:
            raise ValueError(
                f"upstream.hidden_size must be a positive multiple of num_heads={num_heads}, got {hidden_size}"
            )
        if extractor_mode not in ("layer_norm", "group_norm"):
            raise ValueError(f"extractor_mode must be 'layer_norm' or 'group_norm', got {extractor_mode!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = wav2vec2_model(
                extractor_mode=extractor_mode,
                extractor_conv_layer_config=[
                    (conv_channels, k, s) for k, s in zip(CNN_KERNELS, CNN_STRIDES, strict=True)
                ],
                extractor_conv_bias=extractor_mode == "layer_norm",
                encoder_embed_dim=hidden_size,
                encoder_projection_dropout=0.1,
                encoder_pos_conv_kernel=32,
                encoder_pos_conv_groups=math.gcd(16, hidden_size),
                encoder_num_layers=num_transformer_layers,
                encoder_num_heads=num_heads,
                encoder_attention_dropout=0.1,
                encoder_ff_interm_features=2 * hidden_size,
                encoder_ff_interm_dropout=0.0,
                encoder_dropout=0.1,
                encoder_layer_norm_first=layer_norm_first,
                encoder_layer_drop=0.0,
                aux_num_out=None,
            )
        name = f"tiny-hubert L{num_transformer_layers + 1} D{hidden_size}"
        if checkpoint is not None:
            load_tiny_checkpoint(model, Path(checkpoint))
            name += f" ({Path(checkpoint).stem})"
        super().__init__(
            model,
            name=name,
            trainable=trainable,
            lr=lr,
            precision=precision,
            compile=compile,
            padding_mode=padding_mode,
            layers=layers,
        )


def load_tiny_checkpoint(model: torch.nn.Module, path: Path) -> None:
    """Load a state dict saved for the same tiny architecture, with a clear error when it is not."""
    if not path.is_file():
        raise FileNotFoundError(
            f"upstream.checkpoint: no file at {path}; expected a tiny upstream state dict "
            "(scripts/pretrain_tiny_hubert.py writes one), or upstream.checkpoint=null for random weights"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    mismatched = sorted(
        key
        for key in own.keys() | state.keys()
        if key not in own or key not in state or own[key].shape != state[key].shape
    )
    if mismatched:
        raise ValueError(
            f"upstream.checkpoint {path} was saved for another tiny architecture ({len(mismatched)} tensors "
            f"differ, e.g. {mismatched[0]}); use the num_transformer_layers / hidden_size / conv_channels / "
            "num_heads it was made with, or upstream.checkpoint=null"
        )
    model.load_state_dict({key: value.to(own[key].dtype) for key, value in state.items()})
