"""The front of ML-SUPERB's encoder as ESPnet runs it: utterance mean (and variance) normalisation of the
features, and ESPnet's conv2d2 input layer (2x time subsampling), with the valid frame counts after it.

ESPnet's order (espnet2/asr/espnet_model.py ``encode``): frontend (the weighted sum) -> SpecAugment ->
normalize (``utterance_mvn``) -> preencoder (Linear to 80) -> encoder (conv2d2, then the transformer blocks).
``length_rule`` chooses how padding is treated:

- ``espnet``: as ESPnet does it. ``UtteranceMVN`` subtracts the mean from the padded frames too (they become
  -mean), and Conv2dSubsampling2's mask ``x_mask[:, :, :-2:2][:, :, :-2:1]`` gives an utterance of L valid
  frames in a batch padded to T frames min(ceil(min(L, T - 2) / 2), (T - 1) // 2 - 2) output frames: a
  shorter utterance of the batch keeps up to 3 output frames that the convolutions computed partly from
  padding, so its output depends on the batch it is in.
- ``exact``: an utterance keeps the (L - 1) // 2 - 2 output frames whose receptive field lies within its own
  L frames (the count the longest utterance of a batch gets under ESPnet's rule), so what the padding holds
  never reaches a valid frame and the output is the same in any batch; the normalisation leaves padded
  frames at zero.
"""

from __future__ import annotations

import torch
from torch import nn

from interfaces.base import frame_mask

LENGTH_RULES = ("espnet", "exact")


def utterance_mvn(
    features: torch.Tensor,
    lengths: torch.Tensor,
    norm_vars: bool = False,
    eps: float = 1.0e-20,
    zero_padding: bool = True,
) -> torch.Tensor:
    """Per-utterance normalisation of ``features`` [B, T, D] over each one's ``lengths`` [B] valid frames:
    subtract the mean over the valid frames, and with ``norm_vars`` divide by the standard deviation over
    them (population, clamped at ``eps``). ESPnet's ``UtteranceMVN`` (espnet2/layers/utterance_mvn.py) with
    its defaults ``norm_means=True, norm_vars=False``, which asr.sh's ``--feats_normalize utterance_mvn``
    uses (it passes a normalize_conf only for global_mvn). ``zero_padding``: padded frames are zero in the
    output; False keeps ESPnet's (zero minus the mean, divided by the deviation). Same shape out."""
    valid = frame_mask(lengths.to(features.device), features.shape[1]).unsqueeze(-1)
    count = lengths.to(features.device, features.dtype).clamp(min=1).view(-1, 1, 1)
    features = features.masked_fill(~valid, 0.0)
    mean = features.sum(dim=1, keepdim=True) / count
    centred = features - mean
    if norm_vars:
        variance = centred.masked_fill(~valid, 0.0).pow(2).sum(dim=1, keepdim=True) / count
        centred = centred / variance.sqrt().clamp(min=eps)
    return centred.masked_fill(~valid, 0.0) if zero_padding else centred


def conv2d2_lengths(lengths: torch.Tensor, frames: int, rule: str = "exact") -> torch.Tensor:
    """Valid output frames [B] of ``Conv2dSubsampling2`` for ``lengths`` [B] valid input frames in a batch
    padded to ``frames``, under ``rule`` (module docstring). Never negative."""
    if rule not in LENGTH_RULES:
        raise ValueError(f"head.length_rule must be one of {', '.join(LENGTH_RULES)}, got {rule!r}")
    output_frames = max((frames - 1) // 2 - 2, 0)
    if rule == "exact":
        return ((lengths - 1) // 2 - 2).clamp(min=0)
    kept = torch.clamp(lengths, max=max(frames - 2, 0))
    return torch.clamp((kept + 1) // 2, max=output_frames)


def conv2d2_min_input_frames(output_frames: int) -> int:
    """The fewest input frames that give ``output_frames`` valid outputs after conv2d2 (the inverse of
    ``conv2d2_lengths``' exact rule, which ESPnet's rule equals for the longest utterance of a batch)."""
    return 2 * output_frames + 5 if output_frames > 0 else 0


class Conv2dSubsampling2(nn.Module):
    """ESPnet's conv2d2 input layer (espnet/nets/pytorch_backend/transformer/subsampling.py): Conv2d(1, C,
    3, stride 2) -> ReLU -> Conv2d(C, C, 3, stride 1) -> ReLU over (time, feature) of [B, T, D], then
    Linear(C * ((D - 1) // 2 - 2), C). Output [B, (T - 1) // 2 - 2, C] (the positional encoding that ESPnet
    appends is the head's). Raises ValueError when D < 7 (no feature column left)."""

    def __init__(self, input_size: int, output_size: int) -> None:
        super().__init__()
        columns = (input_size - 1) // 2 - 2
        if columns < 1:
            raise ValueError(
                f"conv2d2 needs at least 7 input features (head.bottleneck_size), got {input_size}"
            )
        self.conv = nn.Sequential(
            nn.Conv2d(1, output_size, 3, 2),
            nn.ReLU(),
            nn.Conv2d(output_size, output_size, 3, 1),
            nn.ReLU(),
        )
        self.out = nn.Linear(output_size * columns, output_size)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, rule: str = "exact") -> tuple:
        """(features [B, T', C], valid frames [B]) for features [B, T, D] with ``lengths`` [B]; an input of
        fewer than 7 frames is padded with zeros to 7 (one output frame, valid for none of them)."""
        frames = features.shape[1]
        if frames < 7:
            features = nn.functional.pad(features, (0, 0, 0, 7 - frames))
        hidden = self.conv(features.unsqueeze(1))
        batch, channels, steps, columns = hidden.shape
        hidden = self.out(hidden.transpose(1, 2).reshape(batch, steps, channels * columns))
        return hidden, conv2d2_lengths(lengths, max(frames, 7), rule).to(hidden.device)
