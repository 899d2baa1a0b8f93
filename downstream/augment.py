"""Feature augmentation applied to the interface output during training."""

from __future__ import annotations

import torch


def spec_augment(
    features: torch.Tensor,
    lengths: torch.Tensor,
    num_freq_masks: int,
    max_freq_width: int,
    num_time_masks: int,
    max_time_width: int,
) -> torch.Tensor:
    """SpecAugment on features [B, T, D]: zero ``num_freq_masks`` bands of up to ``max_freq_width`` feature
    channels and ``num_time_masks`` spans of up to ``max_time_width`` frames (within each valid length),
    independently per utterance. Vectorised: masks are built from random starts/widths, no Python loop
    over the batch.
    """
    batch, frames, channels = features.shape
    device = features.device

    def band_mask(count: int, max_width: int, extent: torch.Tensor, size: int) -> torch.Tensor:
        widths = torch.randint(0, max_width + 1, (batch, count), device=device)
        widths = torch.minimum(widths, extent.unsqueeze(1))
        starts = (torch.rand(batch, count, device=device) * (extent.unsqueeze(1) - widths + 1)).long()
        positions = torch.arange(size, device=device).view(1, 1, size)
        inside = (positions >= starts.unsqueeze(-1)) & (positions < (starts + widths).unsqueeze(-1))
        return inside.any(dim=1)

    channel_extent = torch.full((batch,), channels, device=device)
    freq = band_mask(num_freq_masks, max_freq_width, channel_extent, channels)
    time = band_mask(num_time_masks, max_time_width, lengths.to(device), frames)
    drop = freq.unsqueeze(1) | time.unsqueeze(2)
    return features.masked_fill(drop, 0.0)
