"""The upstream contract: waveforms in, every layer's hidden states out."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def conv_frame_lengths(
    wav_lengths: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]
) -> torch.Tensor:
    """Frames produced by a stack of unpadded 1-D convolutions: n -> floor((n - k) / s) + 1 per layer."""
    lengths = wav_lengths.long()
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


class Upstream(nn.Module):
    """Maps wavs [B, N] (16 kHz floats) and wav_lengths [B] to (hidden_states [L, B, T, D], frame_lengths [B]).

    Subclasses set ``num_layers`` (L, the transformer input plus every transformer layer),
    ``hidden_size`` (D) and ``downsample_rate`` in ``__init__`` and implement ``extract``.

    Frozen (``trainable=False``, the SUPERB default): the model stays in eval mode whatever
    ``.train()`` is called with, its parameters have requires_grad=False, and the forward runs
    under ``torch.no_grad``. ``trainable=True`` fine-tunes it end to end with learning rate ``lr``.
    """

    sample_rate: int = 16000

    def __init__(self, trainable: bool = False, lr: float = 1e-5, name: str = "upstream") -> None:
        super().__init__()
        self.trainable = trainable
        self.lr = lr
        self.name = name
        self.num_layers: int = 0
        self.hidden_size: int = 0
        self.downsample_rate: int = 320

    def freeze_if_needed(self) -> None:
        """Call at the end of a subclass ``__init__``: applies the frozen mode to the built model."""
        if not self.trainable:
            for parameter in self.parameters():
                parameter.requires_grad_(False)
            super().train(False)

    def train(self, mode: bool = True) -> Upstream:
        return super().train(mode and self.trainable)

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames for each waveform length; subclasses with exact conv arithmetic override this."""
        return torch.div(wav_lengths.long(), self.downsample_rate, rounding_mode="floor")

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Return hidden states [L, B, T, D] for the padded batch."""
        raise NotImplementedError

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be [B, N] at {self.sample_rate} Hz, got shape {tuple(wavs.shape)}")
        grad_context = contextlib.nullcontext() if self.trainable else torch.no_grad()
        with grad_context:
            hidden_states = self.extract(wavs, wav_lengths)
        frame_lengths = self.frame_lengths(wav_lengths).clamp(max=hidden_states.shape[2])
        return hidden_states, frame_lengths
