"""Per-frame, input-dependent attention over layers (beyond the paper)."""

from __future__ import annotations

import torch
from torch import nn

from interfaces.base import Interface, check_int, frame_mask


class LayerAttention(Interface):
    """A weighted sum of layers whose weights depend on the frame:

        s_{l,t} = v^T tanh(W n(h_{l,t}) + b) + c_l,    a_{:,t} = softmax_l(s_{:,t}),    y_t = sum_l a_{l,t} n(h_{l,t}),

    with one scorer (W: ``scorer_dim`` x D, b, v) shared by all layers, a per-layer bias c (initialised to
    0, a learnable prior like the weighted sum's logits) and n the optional layer norm without affine
    (``normalize``). v starts small (N(0, 0.02^2)), so at initialisation every frame takes close to the mean
    of the layers. Trainable parameters: D*scorer_dim + 2*scorer_dim + L (49,293 for L=13, D=768, 64).
    Output size D. ``layer_weights()`` reports a_{:,t} averaged over the valid frames of the latest forward.
    """

    weighs_layers = True

    def __init__(
        self, num_layers: int, hidden_size: int, scorer_dim: int = 64, normalize: bool = False
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        self.scorer_dim = check_int(type(self).__name__, "scorer_dim", scorer_dim, 1)
        self.scorer_hidden = nn.Linear(hidden_size, scorer_dim)
        # No output bias: a constant added to every layer's score cancels in the softmax.
        self.scorer_out = nn.Linear(scorer_dim, 1, bias=False)
        nn.init.normal_(self.scorer_out.weight, std=0.02)
        self.layer_bias = nn.Parameter(torch.zeros(num_layers))
        self.register_buffer("mean_weights", torch.full((num_layers,), 1.0 / num_layers), persistent=False)
        self.output_size = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        scores = self.scorer_out(torch.tanh(self.scorer_hidden(hidden_states))).squeeze(-1)  # [L, B, T]
        weights = torch.softmax(scores.float() + self.layer_bias.float()[:, None, None], dim=0)
        self._record_mean_weights(weights.detach(), lengths)
        # Per frame: y[b, t] = sum_l weights[l, b, t] * h[l, b, t].
        return (weights.to(hidden_states.dtype).unsqueeze(-1) * hidden_states).sum(0)

    def _record_mean_weights(self, weights: torch.Tensor, lengths: torch.Tensor) -> None:
        valid = frame_mask(lengths, weights.shape[-1]).to(weights.dtype)  # [B, T]
        self.mean_weights.copy_((weights * valid).sum((1, 2)) / valid.sum().clamp_min(1.0))

    def layer_weights(self) -> torch.Tensor:
        """Mean of the per-frame weights a_{:,t} over the valid frames of the latest forward ([L]);
        uniform before the first forward."""
        return self.mean_weights.clone()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scorer_dim={self.scorer_dim}"
