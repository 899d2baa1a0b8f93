"""Hierarchical convolution (HConv) over the layer axis."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from interfaces.base import Interface, check_int


def conv_output_length(length: int, kernel_size: int, stride: int, padding: int) -> int:
    """Positions a Conv1d produces from ``length`` inputs: floor((length + 2p - k) / s) + 1."""
    return (length + 2 * padding - kernel_size) // stride + 1


def log_floor(value: int, base: int) -> int:
    """floor(log_base(value)) in exact integer arithmetic (0 when value < base)."""
    exponent, power = 0, base
    while power <= value:
        exponent, power = exponent + 1, power * base
    return exponent


class HierarchicalConv(Interface):
    """Convolutions along the layer axis, shrinking L layers to a few, then flattening (HConv).

    Each frame's hidden states form a length-L sequence with D channels. K = floor(log_stride L) Conv1d
    layers (kernel 5, stride 3 by default; padding kernel_size // 2 unless ``padding`` is given), each
    followed by ReLU, take the layer count L = L_0 -> L_1 -> ... -> L_K with
    L_{k+1} = floor((L_k + 2*padding - kernel) / stride) + 1. Every conv keeps D channels except the last,
    which has C = D // L_K, so each frame's features are

        y_t = flatten(ReLU(conv_K(... ReLU(conv_1(h_{:, t})) ...)))   in R^{C * L_K},

    about D of them. Layout (channel-major, as SSL_Interface's ``view(B*T, -1)`` of the [B*T, C, L_K]
    output): y_t[c * L_K + j] is channel c at remaining layer j, i.e. the L_K positions of channel 0, then
    those of channel 1, ... (Before this was matched to SSL_Interface the layout was layer-major.)

    L=13, D=768: 13 -> 5 -> 2 layers, 384 x 2 = 768 features, 4,424,832 parameters.
    L=25, D=1024: 25 -> 9 -> 3 layers, 341 x 3 = 1023 features, 6,990,165 parameters.
    kernel 3, stride 2 at L=13, D=768: 13 -> 7 -> 4 -> 2 layers, 768 features, 4,425,600 parameters.

    This is SSL_Interface's ``HierarchicalConvInterface`` (arXiv 2406.12209): same architecture, padding
    rule, parameters (its state dict loads: ``transforms.{2k}`` is our ``convs.{k}``) and outputs. K is
    computed exactly; SSL_Interface's floating-point floor(log L / log s) gives one conv less only for
    L = 243, stride 3 among L < 2000, strides 2..7. All B*T frames go through the convolutions as one batch.

    ``output_dim`` (optional, as in SSL_Interface) must equal C * L_K; ValueError names both otherwise.

    State dicts carry version 2 (torch's per-module metadata). Loading one of ours saved at version 1 (the
    layer-major layout) raises ValueError: its head would read permuted features. SSL_Interface's state dicts
    (keys ``transforms.*``) and dicts without metadata load.
    """

    #: torch's state-dict version of this module: 2 = channel-major flatten (1: layer-major, before).
    _version = 2

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        kernel_size: int = 5,
        stride: int = 3,
        padding: int | None = None,
        output_dim: int | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        owner = type(self).__name__
        self.kernel_size = check_int(owner, "kernel_size", kernel_size, 1)
        self.stride = check_int(owner, "stride", stride, 2)
        if padding is None:
            padding = kernel_size // 2
        self.padding = check_int(owner, "padding", padding, 0, kernel_size - 1)
        if num_layers < stride:
            raise ValueError(
                f"{owner}: num_layers must be >= {stride} (the stride) for one convolution step, got {num_layers}"
            )
        self.num_convs = log_floor(num_layers, stride)
        layer_counts = [num_layers]
        for _ in range(self.num_convs):
            layer_counts.append(conv_output_length(layer_counts[-1], kernel_size, stride, padding))
            if layer_counts[-1] < 1:
                raise ValueError(
                    f"{owner}: kernel_size={kernel_size}, stride={stride}, padding={padding} shrink "
                    f"num_layers={num_layers} to nothing ({' -> '.join(map(str, layer_counts))}); "
                    f"need kernel_size <= layers + 2 * padding at every step"
                )
        self.layer_counts = layer_counts
        self.out_channels = hidden_size // layer_counts[-1]
        if self.out_channels < 1:
            raise ValueError(
                f"{owner}: hidden_size={hidden_size} leaves no channels for the {layer_counts[-1]} "
                f"remaining layers; need hidden_size >= {layer_counts[-1]}"
            )
        self.output_size = self.out_channels * layer_counts[-1]
        if output_dim is not None and output_dim != self.output_size:
            raise ValueError(
                f"{owner}: output_dim={output_dim!r} but kernel_size={kernel_size}, stride={stride}, "
                f"padding={padding} at num_layers={num_layers}, hidden_size={hidden_size} produce "
                f"{self.out_channels} channels x {layer_counts[-1]} layers = {self.output_size} features "
                f"({' -> '.join(map(str, layer_counts))} layers); set output_dim={self.output_size} or null"
            )
        channels = [hidden_size] * self.num_convs + [self.out_channels]
        self.convs = nn.ModuleList(
            nn.Conv1d(channels[k], channels[k + 1], kernel_size, stride=stride, padding=padding)
            for k in range(self.num_convs)
        )

    def ssl_interface_key_map(self) -> dict[str, str]:
        """SSL_Interface's ``transforms`` is an nn.Sequential of Conv1d, ReLU, Conv1d, ReLU, ...: its conv k is
        ``transforms.{2k}``, our ``convs.{k}``."""
        return {
            f"transforms.{2 * k}.{name}": f"convs.{k}.{name}"
            for k in range(self.num_convs)
            for name in ("weight", "bias")
        }

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Mapping[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        if local_metadata.get("version") == 1 and any(
            key.startswith(prefix + "convs.") for key in state_dict
        ):
            raise ValueError(
                f"HierarchicalConv.load_state_dict: {prefix or 'the state dict'} was saved by this project's "
                "HConv before its output was flattened channel-major (state-dict version 1, layer-major); a head "
                "trained on it would read permuted features. Retrain (start a new run directory)."
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        num_layers, batch_size, num_frames, hidden_size = hidden_states.shape
        # [L, B, T, D] -> [B*T, D, L]: every frame is one sample, the layers its sequence axis.
        features = hidden_states.permute(1, 2, 3, 0).reshape(batch_size * num_frames, hidden_size, num_layers)
        for conv in self.convs:
            features = torch.relu(conv(features))
        # [B*T, C, L_K] flattened channel-major, as SSL_Interface does.
        return features.reshape(batch_size, num_frames, self.output_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, layers={' -> '.join(map(str, self.layer_counts))}, "
            f"output={self.out_channels}x{self.layer_counts[-1]} (channel-major)"
        )
