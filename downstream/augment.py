"""SpecAugment of the interface output during training (s3prl's ``downstream/specaug.py``, ESPnet's
``espnet2/layers/{time_warp,mask_along_axis}.py``, and this project's within-length variant).

Keys of a task's ``spec_augment`` config node (``spec_augment(features, lengths, **node)``):

- ``num_freq_masks``, ``max_freq_width``: frequency masks over the feature channels D'.
- ``num_time_masks`` and either ``max_time_width`` (frames) or ``max_time_ratio`` (a fraction of the length:
  ESPnet's ``time_mask_width_ratio_range: [0, ratio]``, as ML-SUPERB's recipe sets it).
- ``time_warp_window`` (frames, 0 = off): s3prl's/ESPnet's time warp, applied first, to each utterance's valid
  frames.
- ``widths``: ``exclusive`` draws every width as ``randint(0, W)``, so 0..W-1 (s3prl ``specaug.py``
  ``MaskAlongAxis.mask_along_axis``; ESPnet ``mask_along_axis``); ``inclusive`` draws 0..W.
- ``positions``: ``padded`` draws every start in ``[0, max(1, L - w_max))``, L the padded length (the longest
  valid length of the batch for time, D' for frequency) and w_max the widest mask of the whole batch, as s3prl
  and ESPnet do (a time mask may then fall on padding and mask nothing); ``valid`` draws each mask inside its own
  utterance's valid frames (this project's rule; a mask never falls on padding).

With ``max_time_ratio``, W is ``floor(ratio * L)`` with L the padded length under ``positions: padded`` (ESPnet's
``MaskAlongAxisVariableMaxWidth``: no time mask at all when W is 0 under ``widths: exclusive``) and each
utterance's own valid length under ``positions: valid``.

Time warp draws its centre per utterance, as s3prl does (ESPnet draws one warp for the whole batch when every
utterance has the same length); it reads the lengths on the host (one synchronisation per training step).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WIDTH_RULES = ("exclusive", "inclusive")
POSITION_RULES = ("padded", "valid")
#: s3prl's and ESPnet's interpolation for time warp
TIME_WARP_MODE = "bicubic"


def time_warp(features: torch.Tensor, lengths: torch.Tensor, window: int) -> torch.Tensor:
    """Time warp of each utterance's valid frames of ``features`` [B, T, D] (``lengths`` [B] valid frames); the
    padding is left as it is. As s3prl ``specaug.py`` ``TimeWarp`` (and ESPnet's ``time_warp``): for an
    utterance of t > 2 * window frames, a centre c is drawn in [window, t - window) and a new position w in
    [c - window + 1, c + window]; frames [0, c) are resized to w frames and [c, t) to t - w frames by bicubic
    interpolation (align_corners False); shorter utterances are left as they are. Returns a new tensor."""
    out = features.clone()
    for index, length in enumerate(lengths.tolist()):
        length = min(int(length), features.shape[1])
        if length - window <= window:
            continue
        centre = int(torch.randint(window, length - window, (1,)))
        warped = int(torch.randint(centre - window, centre + window, (1,))) + 1
        image = features[index, :length][None, None]  # [1, 1, t, D]
        if image.dtype in (torch.float16, torch.bfloat16):
            image = image.float()
        left = F.interpolate(
            image[:, :, :centre], (warped, image.shape[3]), mode=TIME_WARP_MODE, align_corners=False
        )
        right = F.interpolate(
            image[:, :, centre:], (length - warped, image.shape[3]), mode=TIME_WARP_MODE, align_corners=False
        )
        out[index, :length] = torch.cat([left, right], dim=2)[0, 0].to(features.dtype)
    return out


def _band_mask(
    count: int,
    widths: torch.Tensor,
    extent: torch.Tensor,
    size: int,
    positions: str,
) -> torch.Tensor:
    """[B, size] bool: ``count`` bands per row with the drawn ``widths`` [B, count], placed by ``positions``
    (``padded``: start in [0, max(1, size - widths.max())); ``valid``: start in [0, extent - width], widths cut
    to the row's ``extent`` [B])."""
    batch, device = widths.shape[0], widths.device
    if positions == "padded":
        high = max(1, size - int(widths.max()) if widths.numel() else size)
        starts = torch.randint(0, high, (batch, count), device=device)
    else:
        widths = torch.minimum(widths, extent.unsqueeze(1))
        starts = (torch.rand(batch, count, device=device) * (extent.unsqueeze(1) - widths + 1)).long()
    grid = torch.arange(size, device=device).view(1, 1, size)
    inside = (grid >= starts.unsqueeze(-1)) & (grid < (starts + widths).unsqueeze(-1))
    return inside.any(dim=1)


def _draw_widths(count: int, bound: torch.Tensor, widths: str) -> torch.Tensor:
    """Widths [B, count] drawn uniformly in [0, bound) (``exclusive``) or [0, bound] (``inclusive``) per row of
    ``bound`` [B] (long)."""
    high = bound if widths == "exclusive" else bound + 1
    draws = torch.rand(bound.shape[0], count, device=bound.device)
    return (draws * high.unsqueeze(1).clamp(min=0)).long()


def spec_augment(
    features: torch.Tensor,
    lengths: torch.Tensor,
    num_freq_masks: int = 0,
    max_freq_width: int = 0,
    num_time_masks: int = 0,
    max_time_width: int | None = None,
    max_time_ratio: float | None = None,
    time_warp_window: int = 0,
    widths: str = "inclusive",
    positions: str = "valid",
) -> torch.Tensor:
    """SpecAugment of ``features`` [B, T, D] with valid frame counts ``lengths`` [B]: time warp
    (``time_warp_window`` > 0), then ``num_freq_masks`` channel bands and ``num_time_masks`` frame spans set to
    zero, each drawn per utterance (the module docstring gives every key's meaning and source). Returns a tensor
    of the same shape and dtype; the input is not modified.

    Raises ValueError for an unknown ``widths``/``positions`` rule, or unless exactly one of ``max_time_width``
    and ``max_time_ratio`` is given when ``num_time_masks`` > 0.
    """
    if widths not in WIDTH_RULES:
        raise ValueError(f"spec_augment.widths={widths!r}: expected one of {', '.join(WIDTH_RULES)}")
    if positions not in POSITION_RULES:
        raise ValueError(f"spec_augment.positions={positions!r}: expected one of {', '.join(POSITION_RULES)}")
    if num_time_masks and (max_time_width is None) == (max_time_ratio is None):
        raise ValueError(
            "spec_augment: give exactly one of max_time_width (frames) and max_time_ratio (fraction of the "
            f"length) for the {num_time_masks} time masks (got {max_time_width=}, {max_time_ratio=})"
        )
    batch, frames, channels = features.shape
    device = features.device
    lengths = lengths.to(device).clamp(max=frames)
    if time_warp_window > 0:
        features = time_warp(features, lengths, time_warp_window)
    drop = torch.zeros(batch, frames, channels, dtype=torch.bool, device=device)
    if num_freq_masks:
        bound = torch.full((batch,), max_freq_width, dtype=torch.long, device=device)
        extent = torch.full((batch,), channels, dtype=torch.long, device=device)
        freq_widths = _draw_widths(num_freq_masks, bound, widths)
        drop |= _band_mask(num_freq_masks, freq_widths, extent, channels, positions).unsqueeze(1)
    if num_time_masks:
        padded = int(lengths.max()) if batch else 0
        if max_time_ratio is None:
            bound = torch.full((batch,), int(max_time_width), dtype=torch.long, device=device)
        elif positions == "padded":
            bound = torch.full((batch,), math.floor(padded * max_time_ratio), dtype=torch.long, device=device)
        else:
            bound = torch.floor(lengths.double() * max_time_ratio).long()
        time_widths = _draw_widths(num_time_masks, bound, widths)
        span = _band_mask(num_time_masks, time_widths, lengths.long(), padded, positions)
        drop[:, :padded] |= span.unsqueeze(2)
    return features.masked_fill(drop, 0.0)
