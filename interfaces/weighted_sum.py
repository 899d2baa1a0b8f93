"""SUPERB's weighted sum of layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from interfaces.base import Interface, check_layer_subset, mix_layers


class WeightedSum(Interface):
    """Softmax-weighted sum of hidden states, SUPERB's default interface.

    With S the used layers (``layers``, default all L) and one logit w_l per used layer, initialised to 0:

        y_t = sum_{l in S} softmax(w)_l * n(h_{l,t}),

    where n is layer norm without affine over the D features when ``normalize`` is true, else the identity.
    At initialisation every used layer weighs 1/|S|, so y is the mean of the used layers.
    Trainable parameters: |S| (13 for HuBERT Base). Output size D.

    Equal to SSL_Interface's ``WeightSumInterface`` and s3prl's featurizer; a state dict saved from
    SSL_Interface loads directly (its ``weighte_sum_weights`` [sic] is our ``weight_logits``).
    """

    weighs_layers = True
    ssl_interface_state_dict_keys = {"weighte_sum_weights": "weight_logits"}

    def __init__(
        self, num_layers: int, hidden_size: int, normalize: bool = False, layers: Sequence[int] | None = None
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        self.layers = check_layer_subset(type(self).__name__, "layers", layers, num_layers)
        self.uses_all_layers = self.layers == list(range(num_layers))
        self.register_buffer("layer_index", torch.tensor(self.layers, dtype=torch.long), persistent=False)
        self.weight_logits = nn.Parameter(torch.zeros(len(self.layers)))
        self.output_size = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if not self.uses_all_layers:
            hidden_states = hidden_states.index_select(0, self.layer_index)
        weights = torch.softmax(self.weight_logits.float(), dim=0)
        return mix_layers(weights.unsqueeze(0), hidden_states).squeeze(2)

    def layer_weights(self) -> torch.Tensor:
        """softmax(w) placed at the used layers, 0 at the others: [L]."""
        weights = torch.zeros(self.num_layers, device=self.weight_logits.device)
        weights[self.layer_index] = torch.softmax(self.weight_logits.detach().float(), dim=0)
        return weights

    def extra_repr(self) -> str:
        layers = "all" if self.uses_all_layers else self.layers
        return f"{super().extra_repr()}, layers={layers}"
