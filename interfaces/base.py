"""The interface contract: layer-wise hidden states in, one feature sequence out."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def frame_mask(lengths: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Boolean mask [B, T] that is True at valid frames (t < lengths[b])."""
    steps = torch.arange(max_frames, device=lengths.device)
    return steps.unsqueeze(0) < lengths.to(steps.device).unsqueeze(1)


def zero_padded_frames(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Return features [B, T, D'] with every frame at or past lengths[b] set to zero."""
    mask = frame_mask(lengths, features.shape[1]).unsqueeze(-1)
    return features.masked_fill(~mask, 0.0)


class Interface(nn.Module):
    """Maps hidden states [L, B, T, D] and valid-frame counts [B] to features [B, T, D'].

    Subclasses set ``output_size`` (D') in ``__init__`` and implement ``combine``; ``forward``
    validates the input and zeroes padded frames, so every interface honours the padding rule:
    frames past ``lengths[b]`` never change the output at valid frames, and padded outputs are 0.
    """

    #: True for interfaces that must see training features (``fit``) before the first step.
    needs_fit: bool = False

    def __init__(self, num_layers: int, hidden_size: int) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.output_size: int = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[L, B, T, D] -> [B, T, D']; padded frames may hold anything, ``forward`` zeroes them."""
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if hidden_states.dim() != 4:
            raise ValueError(f"hidden_states must be [L, B, T, D], got shape {tuple(hidden_states.shape)}")
        num_layers, _, _, hidden_size = hidden_states.shape
        if num_layers != self.num_layers or hidden_size != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__} was built for L={self.num_layers}, D={self.hidden_size}, "
                f"got hidden_states with L={num_layers}, D={hidden_size}"
            )
        return zero_padded_frames(self.combine(hidden_states, lengths), lengths)

    def layer_weights(self) -> torch.Tensor | None:
        """Normalised weights over layers ([L] or [groups, L]) for interfaces that weigh layers, else None."""
        return None

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fit non-trainable state on training features; ``batches`` yields (hidden_states, lengths)."""
        if self.needs_fit:
            raise NotImplementedError(f"{type(self).__name__} needs fit() but does not implement it")
