"""Grouped weighted sum: a weighted sum inside each contiguous group of layers, concatenated, projected."""

from __future__ import annotations

import torch
from torch import nn

from interfaces.base import Interface, check_int, check_output_dim, mix_layers
from interfaces.concat_proj import FeatureProjection


def contiguous_groups(owner: str, num_layers: int, num_groups: int) -> list[range]:
    """Split layers 0..L-1 into ``num_groups`` contiguous runs whose sizes differ by at most one,
    the earlier groups taking the extra layers: 13 layers in 3 groups -> 0-4, 5-8, 9-12."""
    check_int(owner, "num_groups", num_groups, 1, num_layers)
    base_size, extra = divmod(num_layers, num_groups)
    groups, start = [], 0
    for group in range(num_groups):
        size = base_size + (1 if group < extra else 0)
        groups.append(range(start, start + size))
        start += size
    return groups


class GroupedWeightedSum(Interface):
    """Split the L layers into G contiguous groups S_1..S_G, take a softmax-weighted sum inside each,
    concatenate the G sums and project:

        z_{g,t} = sum_{l in S_g} softmax_{S_g}(w)_l * n(h_{l,t}),     y_t = P([z_{1,t}; ...; z_{G,t}]),

    with one logit w_l per layer (initialised to 0, so each group starts as its mean), n the optional
    layer norm without affine (``normalize``), and P the projection G*D -> ``output_dim`` (default D) that
    concat + projection uses (LayerNorm(W x) by default; W x + b with ``output_norm`` false).
    Trainable parameters: L + G*D*D' + 2*D' (about 1.18M / 1.77M / 2.36M for G = 2 / 3 / 4, L=13, D=768).
    G = 1 is a weighted sum followed by a projection; G = L is concat + projection.
    """

    weighs_layers = True

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        num_groups: int = 2,
        output_dim: int | None = None,
        normalize: bool = False,
        output_norm: bool = True,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        owner = type(self).__name__
        self.groups = contiguous_groups(owner, num_layers, num_groups)
        self.num_groups = num_groups
        self.output_size = check_output_dim(owner, output_dim, hidden_size)
        self.output_norm = bool(output_norm)
        membership = torch.zeros(num_groups, num_layers, dtype=torch.bool)
        for group, layers in enumerate(self.groups):
            membership[group, layers.start : layers.stop] = True
        self.register_buffer("membership", membership, persistent=False)
        self.weight_logits = nn.Parameter(torch.zeros(num_layers))
        self.projection = FeatureProjection(num_groups * hidden_size, self.output_size, self.output_norm)

    def group_weights(self) -> torch.Tensor:
        """[G, L]: softmax of the logits within each group, 0 outside it (rows sum to 1)."""
        logits = self.weight_logits.float().expand(self.num_groups, -1)
        return torch.softmax(logits.masked_fill(~self.membership, float("-inf")), dim=-1)

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        group_sums = mix_layers(self.group_weights(), hidden_states)  # [B, T, G, D]
        return self.projection(group_sums.flatten(2))

    def layer_weights(self) -> torch.Tensor:
        return self.group_weights().detach()

    def extra_repr(self) -> str:
        spans = ", ".join(f"{layers.start}-{layers.stop - 1}" for layers in self.groups)
        return f"{super().extra_repr()}, groups=[{spans}], output_norm={self.output_norm}"
