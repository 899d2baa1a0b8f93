"""Several upstreams in one run: each member runs as it would alone, then their states are put on one grid.

The model fusion of Shih & Harwath, "Unifying Model and Layer Fusion for Speech Foundation Models" (ASRU
2025, arXiv 2511.08389): the hidden states of N upstreams are matched in layer count and in frame count,
and a fusion interface (``interfaces.fusion``: HConv fusion, CHConv, a weighted sum over every member's
layers) combines them. This module does the matching; the interfaces do the combining.

Output contract (the ``Upstream`` one, so the trainer, the shared-upstream launcher and the data check need
nothing new): hidden states [L, B, T, D] with D = D_1 + ... + D_N, the members' aligned states
concatenated along the feature axis in member order (``member_dims`` says where each begins), and valid
frame counts [B] on the common grid. An interface that knows ``member_dims`` splits them again.

Alignment (our reading; the paper states "interpolation" for both axes but not the exact variant):
- frames: every member is linearly interpolated to the frame grid of one member (``frame_grid``: the one
  with the highest frame rate, ``finest``, or one named). Utterance b of member i, valid frames m_b, becomes
  the grid member's n_b valid frames by ``torch.nn.functional.interpolate(mode="linear",
  align_corners=False)`` applied to that utterance's valid frames alone, so padding never reaches a valid
  frame: a padded utterance gives exactly what its single run gives (``interpolate_frames``). Frames past
  n_b are zero.
- layers: a member with L_i != L states is linearly interpolated along the layer axis to L (the largest
  L_i unless ``num_layers`` is given), the same linear rule over layer positions (``interpolate_layers``);
  ``layer_alignment=none`` refuses members of different L instead. The paper's Base pairs (13 each) need
  no layer interpolation.
- width: members keep their own D here; where widths differ, the fusion interfaces project (see
  ``interfaces.fusion``), as the issue describes the paper doing for 768- and 1024-wide models.

Each member is a complete upstream config (``upstream.members.<name>``: its own source, weights,
precision, padding rule, feature extractor, frame rule and Whisper window), built by Hydra before this class
sees it. Limits: members must be frozen (fine-tuning several upstreams at once is not supported: one
learning rate per upstream would be ambiguous); ``compile`` applies per member.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from upstream.base import Upstream

#: Joins the members' names into the fused upstream's name ("openai/whisper-small (hf) + wavlm_base_plus (s3prl)").
MEMBER_SEPARATOR = " + "
LAYER_ALIGNMENTS = ("interpolate", "none")


def linear_source_positions(out_size: int, in_size: int) -> tuple[torch.Tensor, ...]:
    """Indices and weights of 1-D linear interpolation from ``in_size`` to ``out_size`` points, as
    ``F.interpolate(mode="linear", align_corners=False, size=out_size)`` computes them: output j reads
    src = max((j + 0.5) * in / out - 0.5, 0) as (1 - w) x[i0] + w x[i1], i0 = floor(src) (at most in - 1),
    i1 = min(i0 + 1, in - 1), w = src - i0. Returns (i0, i1, w), each [out_size]."""
    steps = torch.arange(out_size, dtype=torch.float32)
    lower, upper, weight = _positions(steps, torch.tensor([float(in_size)]), torch.tensor([float(out_size)]))
    return lower[0], upper[0], weight[0]


def _positions(
    steps: torch.Tensor, in_size: torch.Tensor, out_size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``linear_source_positions`` for rows of lengths ``in_size`` [B] -> ``out_size`` [B] at ``steps`` [T]:
    (i0, i1, w), each [B, T]."""
    scale = (in_size / out_size.clamp(min=1))[..., None]
    source = ((steps + 0.5) * scale - 0.5).clamp(min=0)
    lower = source.floor().long()
    lower = torch.minimum(lower, (in_size.long() - 1).clamp(min=0)[..., None])
    upper = torch.minimum(lower + 1, (in_size.long() - 1).clamp(min=0)[..., None])
    return lower, upper, source - lower.float()


def interpolate_layers(hidden_states: torch.Tensor, num_layers: int) -> torch.Tensor:
    """[L_in, B, T, D] -> [num_layers, B, T, D] by linear interpolation along the layer axis (the rule of
    ``linear_source_positions``: the first and last states map to the first and last); unchanged when
    L_in == num_layers."""
    in_layers = hidden_states.shape[0]
    if in_layers == num_layers:
        return hidden_states
    lower, upper, weight = linear_source_positions(num_layers, in_layers)
    weight = weight.to(hidden_states.dtype)[:, None, None, None]
    return hidden_states[lower] * (1 - weight) + hidden_states[upper] * weight


def interpolate_frames(
    hidden_states: torch.Tensor, lengths: torch.Tensor, target_lengths: torch.Tensor, num_frames: int
) -> torch.Tensor:
    """[L, B, T_in, D] with ``lengths`` [B] valid frames -> [L, B, num_frames, D] with ``target_lengths``
    [B] valid frames: row b's first lengths[b] frames linearly interpolated to target_lengths[b] frames
    (``F.interpolate(mode="linear", align_corners=False)`` on that row alone), zeros beyond. Frames past
    lengths[b] are never read, so the result does not depend on the padding. Identity when every length
    equals its target."""
    layers, batch, _, width = hidden_states.shape
    if batch == 0 or num_frames == 0:
        return hidden_states.new_zeros(layers, batch, num_frames, width)
    lengths = lengths.to(hidden_states.device).long().clamp(min=1)
    target_lengths = target_lengths.to(hidden_states.device).long()
    steps = torch.arange(num_frames, dtype=torch.float32, device=hidden_states.device)
    lower, upper, weight = _positions(steps, lengths.float(), target_lengths.float())  # [B, T]
    rows = torch.arange(batch, device=hidden_states.device)[:, None]
    weight = weight.to(hidden_states.dtype)[None, :, :, None]
    out = hidden_states[:, rows, lower] * (1 - weight) + hidden_states[:, rows, upper] * weight
    valid = steps[None, :] < target_lengths[:, None]
    return out.masked_fill(~valid[None, :, :, None], 0.0)


class FusedUpstream(Upstream):
    """N upstreams run on the same waveforms; their states aligned to one grid and concatenated along D.

    Args:
        members: name -> a built ``Upstream`` (Hydra builds ``upstream.members.<name>`` configs first), in
            the order their features are concatenated. At least one.
        frame_grid: ``finest`` (the member with the highest ``frame_rate``; the first such on a tie) or a
            member's name: whose frames (and ``frame_lengths`` rule) the output uses.
        num_layers: the common layer count L; None: the largest member's.
        layer_alignment: ``interpolate`` (members with another L are interpolated along the layer axis) or
            ``none`` (all members must have L states).
        name: for logs and results; None: the members' names joined by `` + ``.

    Properties: ``num_layers`` (L), ``hidden_size`` (sum of the members' D), ``member_dims``,
    ``member_names``, ``downsample_rate``/``frame_rate``/``frame_lengths`` of the grid member,
    ``min_samples`` the largest of the members' (the strictest), ``max_samples`` the smallest that is
    set, ``window_samples`` the smallest that is set (Whisper's 30 s). ``member_records()`` is what
    results.json's ``members`` holds. Raises ValueError (naming the key) for no members, an unknown
    ``frame_grid``, a trainable member, or members of different L under ``layer_alignment=none``.
    """

    def __init__(
        self,
        members: Mapping[str, Upstream],
        frame_grid: str = "finest",
        num_layers: int | None = None,
        layer_alignment: str = "interpolate",
        name: str | None = None,
    ) -> None:
        built = dict(members.items()) if members is not None else {}
        if not built:
            raise ValueError(
                "upstream.members is empty: a fused upstream needs at least one member, e.g. "
                "+upstream@upstream.members.whisper=hf upstream.members.whisper.model=openai/whisper-small"
            )
        for key, member in built.items():
            if not isinstance(member, Upstream):
                raise ValueError(
                    f"upstream.members.{key} is not an upstream config (it needs a _target_, e.g. from "
                    f"+upstream@upstream.members.{key}=hf), got {type(member).__name__}"
                )
            if member.trainable:
                raise ValueError(
                    f"upstream.members.{key}.trainable=true: members of a fused upstream must be frozen "
                    "(fine-tuning several upstreams at once is not supported)"
                )
        super().__init__(name=name or MEMBER_SEPARATOR.join(member.name for member in built.values()))
        self.members = nn.ModuleDict(built)
        keys = list(built)
        if frame_grid == "finest":
            rates = [member.frame_rate for member in built.values()]
            self.grid_member = keys[rates.index(max(rates))]
        elif frame_grid in built:
            self.grid_member = frame_grid
        else:
            raise ValueError(
                f"upstream.frame_grid={frame_grid!r} must be 'finest' or one of the members {keys}"
            )
        if layer_alignment not in LAYER_ALIGNMENTS:
            raise ValueError(
                f"upstream.layer_alignment={layer_alignment!r} must be one of {list(LAYER_ALIGNMENTS)}"
            )
        counts = {key: member.num_layers for key, member in built.items()}
        if layer_alignment == "none" and len(set(counts.values())) > 1:
            raise ValueError(
                f"upstream.layer_alignment=none needs members with equal layer counts, got {counts}; "
                "use layer_alignment=interpolate or upstream.members.<name>.layers to pick equal subsets"
            )
        if num_layers is None:
            num_layers = max(counts.values())
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"upstream.num_layers must be a positive integer or null, got {num_layers!r}")
        if layer_alignment == "none" and num_layers != next(iter(counts.values())):
            raise ValueError(
                f"upstream.num_layers={num_layers} with layer_alignment=none: the members have "
                f"{next(iter(counts.values()))} states"
            )
        self.frame_grid = frame_grid
        self.layer_alignment = layer_alignment
        self.member_names = tuple(keys)
        self.member_dims = tuple(member.hidden_size for member in built.values())
        self.num_layers = self.total_layers = num_layers
        self.layer_ids = tuple(range(num_layers))
        self.hidden_size = sum(self.member_dims)
        grid = built[self.grid_member]
        self.downsample_rate = grid.downsample_rate
        self.sample_rate = grid.sample_rate
        windows = [member.window_samples for member in built.values() if member.window_samples is not None]
        self.window_samples = min(windows) if windows else None

    @property
    def min_samples(self) -> int:
        """The strictest of the members' ``min_samples`` (the input every member gives a frame for)."""
        return max(member.min_samples for member in self.members.values())

    @property
    def max_samples(self) -> int | None:
        """The smallest ``max_samples`` a member sets (None when none refuses long input)."""
        limits = [member.max_samples for member in self.members.values() if member.max_samples is not None]
        return min(limits) if limits else None

    @property
    def frame_rate(self) -> float:
        return self.members[self.grid_member].frame_rate

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """The grid member's valid frames for each waveform length."""
        return self.members[self.grid_member].frame_lengths(wav_lengths)

    def train(self, mode: bool = True) -> FusedUpstream:
        return super().train(False)  # members are frozen (checked in __init__)

    def member_records(self) -> list[dict[str, Any]]:
        """Per member (in order): name (the config key), upstream (its own name), num_layers, total_layers,
        layer_ids, hidden_size, frame_rate (Hz), downsample_rate, and whether its frames are the grid."""
        return [
            {
                "name": key,
                "upstream": member.name,
                "num_layers": member.num_layers,
                "total_layers": member.total_layers,
                "layer_ids": list(member.layer_ids),
                "hidden_size": member.hidden_size,
                "frame_rate": member.frame_rate,
                "downsample_rate": member.downsample_rate,
                "frame_grid": key == self.grid_member,
            }
            for key, member in self.members.items()
        ]

    def align(
        self, outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' (hidden_states [L_i, B, T_i, D_i], frame_lengths [B]) in member order -> the fused
        (hidden_states [L, B, T, sum D_i], frame_lengths [B]) on the grid member's frames, T = the longest
        utterance's frames. Used on fresh forwards and on states read back from per-member caches alike."""
        if len(outputs) != len(self.members):
            raise ValueError(f"align needs {len(self.members)} member outputs, got {len(outputs)}")
        target = outputs[self.member_names.index(self.grid_member)][1].long()
        num_frames = int(target.max()) if len(target) else 0
        aligned = []
        for (hidden_states, lengths), key in zip(outputs, self.member_names, strict=True):
            hidden_states = interpolate_layers(hidden_states.float(), self.num_layers)
            if key == self.grid_member:
                hidden_states = hidden_states[:, :, :num_frames]
            else:
                hidden_states = interpolate_frames(
                    hidden_states, lengths, target.to(lengths.device), num_frames
                )
            aligned.append(hidden_states)
        return torch.cat(aligned, dim=-1), target

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wavs [B, N] at 16 kHz, wav_lengths [B] -> (hidden_states [L, B, T, sum D_i], frame_lengths [B]).
        Each member checks and encodes the batch by its own rules; input shorter than the strictest
        ``min_samples`` raises ValueError naming the utterance."""
        self._check_inputs(wavs, wav_lengths)
        return self.align([member(wavs, wav_lengths) for member in self.members.values()])
