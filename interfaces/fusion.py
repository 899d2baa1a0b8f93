"""Fusion interfaces: combine the aligned hidden states of several upstreams (``upstream=fusion``).

From Shih & Harwath, "Unifying Model and Layer Fusion for Speech Foundation Models" (ASRU 2025, arXiv
2511.08389). The fused upstream (``upstream.fusion.FusedUpstream``) hands over [L, B, T, D_1 + ... + D_N]:
the N members' states, already on one frame grid and one layer count L, side by side along the feature
axis; ``member_dims`` (passed by the runner from the upstream) says how to split them. Without
``member_dims`` (a single upstream) the input is one member and each interface reduces to its single-model
counterpart exactly (ws_fusion = weighted_sum, hconv_fusion = hconv).

- ``FusionWeightedSum`` (ws_fusion, the baseline): one softmax over all N x L layer vectors, summed.
- ``HConvFusion`` (hconv_fusion): the members' states added per layer and frame, then HConv (R^{L x T x D}).
- ``CHConv`` (chconv): the members' states concatenated per layer (R^{L x T x N D}), projected by a Linear
  to ``proj_dim`` (default: the widest member's D), then HConv.

Widths: where members differ in D (768 vs 1024), ws_fusion and hconv_fusion project each narrower member
with a Linear (with bias) to the common width ``proj_dim`` (default: the widest member's D) before adding;
members already that wide are not projected. The paper describes a projection for this case; the exact
placement (here: per member, before the sum) is our reading. ``normalize`` layer-norms each member's
vectors over that member's own D.

Parameters, Whisper Small + WavLM Base+ (both 13 x 768): ws_fusion 26, hconv_fusion 4,424,832 (HConv's),
chconv 5,605,248 (1536 x 768 + 768 projection, then HConv). docs/fusion.md lists more pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from interfaces.base import Interface, check_int
from interfaces.hconv import HierarchicalConv


class FusionInterface(Interface):
    """Base of the fusion interfaces: validates ``member_dims``, splits the input and normalises per member."""

    #: The runner passes a fused upstream's ``member_dims`` to interfaces that set this.
    takes_member_dims: ClassVar[bool] = True

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        member_dims: Sequence[int] | None = None,
        proj_dim: int | None = None,
        normalize: bool = False,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        owner = type(self).__name__
        dims = tuple(member_dims) if member_dims is not None else (hidden_size,)
        for dim in dims:
            check_int(owner, "member_dims[i]", dim, 1)
        if sum(dims) != hidden_size:
            raise ValueError(
                f"{owner}: member_dims={list(dims)} sum to {sum(dims)}, but the upstream's hidden_size is "
                f"{hidden_size} (the members' widths side by side)"
            )
        self.member_dims = dims
        self.proj_dim = check_int(owner, "proj_dim", proj_dim if proj_dim is not None else max(dims), 1)

    def split(self, hidden_states: torch.Tensor) -> list[torch.Tensor]:
        """[L, B, T, sum D_i] -> the members' [L, B, T, D_i], in order."""
        return list(torch.split(hidden_states, list(self.member_dims), dim=-1))

    def normalize_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Layer norm (no affine) of each member's vectors over its own D, when ``normalize``."""
        if not self.normalize:
            return hidden_states
        return torch.cat([F.layer_norm(part, part.shape[-1:]) for part in self.split(hidden_states)], dim=-1)

    def width_projections(self) -> nn.ModuleList:
        """Per member: Identity when its D equals ``proj_dim``, else Linear(D_i, proj_dim) with bias."""
        return nn.ModuleList(
            nn.Identity() if dim == self.proj_dim else nn.Linear(dim, self.proj_dim)
            for dim in self.member_dims
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, member_dims={list(self.member_dims)}, proj_dim={self.proj_dim}"


class FusionWeightedSum(FusionInterface):
    """Weighted sum over every member's layers (the fusion baseline): softmax over N x L logits (zeros at
    start, so equal weights), y_t = sum_i sum_l w_{i,l} P_i h^{(i)}_{l,t}, P_i the width projection (identity
    for members of width ``proj_dim``). Output width ``proj_dim``; N x L parameters plus projections.
    ``layer_weights()`` is [N x L], member 0's layers first."""

    weighs_layers = True

    def __init__(self, num_layers: int, hidden_size: int, **fusion: Any) -> None:
        super().__init__(num_layers, hidden_size, **fusion)  # member_dims, proj_dim, normalize
        self.projections = self.width_projections()
        self.weight_logits = nn.Parameter(torch.zeros(len(self.member_dims) * num_layers))
        self.output_size = self.proj_dim

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        stacked = torch.cat(
            [project(part) for project, part in zip(self.projections, self.split(hidden_states), strict=True)]
        )  # [N*L, B, T, proj_dim]
        weights = torch.softmax(self.weight_logits, dim=0).to(stacked.dtype)
        return torch.einsum("l,lbtd->btd", weights, stacked)

    def layer_weights(self) -> torch.Tensor:
        return torch.softmax(self.weight_logits.detach(), dim=0)

    def layer_weight_labels(self, layer_ids: Sequence[int]) -> list[str]:
        """member<m>_layer_<id> for each member m (in order) and each of the L layer ids."""
        return [
            f"member{member}_layer_{index}" for member in range(len(self.member_dims)) for index in layer_ids
        ]


class FusedHConv(FusionInterface):
    """Shared by HConv fusion and CHConv: ``HierarchicalConv`` over L layers of width ``proj_dim`` (kernel,
    stride, padding and ``output_dim`` as configs/interface/hconv.yaml); subclasses map the members' states
    to those L layers (``merge``)."""

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        kernel_size: int = 5,
        stride: int = 3,
        padding: int | None = None,
        output_dim: int | None = None,
        **fusion: Any,
    ) -> None:
        super().__init__(num_layers, hidden_size, **fusion)  # member_dims, proj_dim, normalize
        self.hconv = HierarchicalConv(num_layers, self.proj_dim, kernel_size, stride, padding, output_dim)
        self.output_size = self.hconv.output_size

    def merge(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """[L, B, T, sum D_i] -> [L, B, T, proj_dim]."""
        raise NotImplementedError

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.hconv.combine(self.merge(hidden_states), lengths)


class HConvFusion(FusedHConv):
    """HConv fusion: the members' (width-projected) states summed, sum_i P_i h^{(i)} in R^{L x T x proj_dim},
    then ``HierarchicalConv`` (its parameters and output size, plus the projections of narrower members)."""

    def __init__(self, num_layers: int, hidden_size: int, **hyperparameters: object) -> None:
        super().__init__(num_layers, hidden_size, **hyperparameters)
        self.projections = self.width_projections()

    def merge(self, hidden_states: torch.Tensor) -> torch.Tensor:
        parts = self.split(hidden_states)
        summed = self.projections[0](parts[0])
        for project, part in zip(self.projections[1:], parts[1:], strict=True):
            summed = summed + project(part)
        return summed


class CHConv(FusedHConv):
    """CHConv: the members' states concatenated per layer and frame (R^{L x T x sum D_i}), a Linear(sum D_i,
    proj_dim) with bias, then ``HierarchicalConv`` over the L projected layers."""

    def __init__(self, num_layers: int, hidden_size: int, **hyperparameters: object) -> None:
        super().__init__(num_layers, hidden_size, **hyperparameters)
        self.projection = nn.Linear(hidden_size, self.proj_dim)

    def merge(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.projection(hidden_states)
