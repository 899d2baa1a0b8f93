"""Concatenate all layers per frame and project them back to one feature vector."""

from __future__ import annotations

import torch
from torch import nn

from interfaces.base import Interface, check_output_dim


class FeatureProjection(nn.Module):
    """x [..., in] -> [..., out]: LayerNorm(W x) when ``output_norm`` (W without bias), else W x + b.

    A LayerNorm's own shift makes a bias before it redundant, so the normalised variant drops it.
    Parameters: in*out + 2*out with ``output_norm``, in*out + out without.
    """

    def __init__(self, in_features: int, out_features: int, output_norm: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=not output_norm)
        self.norm = nn.LayerNorm(out_features) if output_norm else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(features))


class ConcatProjection(Interface):
    """Concatenate the L hidden states of each frame and project them linearly:

        y_t = LayerNorm(W [h_{0,t}; h_{1,t}; ...; h_{L-1,t}])   (W: output_dim x L*D, no bias), or
        y_t = W [h_{0,t}; ...; h_{L-1,t}] + b                   with output_norm=false.

    The default (``output_norm`` true) has L*D*D' + 2*D' trainable parameters: 7,669,248 for L=13,
    D=D'=768, the paper's figure for concat + projection. Output size ``output_dim`` (default D).
    """

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        output_dim: int | None = None,
        output_norm: bool = True,
        normalize: bool = False,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        self.output_size = check_output_dim(type(self).__name__, output_dim, hidden_size)
        self.output_norm = bool(output_norm)
        self.projection = FeatureProjection(num_layers * hidden_size, self.output_size, self.output_norm)

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        num_layers, batch_size, num_frames, hidden_size = hidden_states.shape
        concatenated = hidden_states.permute(1, 2, 0, 3).reshape(
            batch_size, num_frames, num_layers * hidden_size
        )
        return self.projection(concatenated)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_norm={self.output_norm}"
