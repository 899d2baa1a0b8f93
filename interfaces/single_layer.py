"""Baselines without parameters: one chosen hidden state, or the last one."""

from __future__ import annotations

import torch

from interfaces.base import Interface, check_layer_index


class SingleLayer(Interface):
    """Use one hidden state as the features: y_t = h_{layer, t}; no trainable parameters.

    ``layer`` indexes the L hidden states as a Python list does: 0 is the transformer input, -1 the last
    layer. Output size D. ``layer_weights()`` is the one-hot vector of the chosen layer.
    """

    weighs_layers = True

    def __init__(self, num_layers: int, hidden_size: int, layer: int = -1, normalize: bool = False) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        self.layer = check_layer_index(type(self).__name__, "layer", layer, num_layers)
        self.output_size = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return hidden_states[self.layer]

    def layer_weights(self) -> torch.Tensor:
        weights = torch.zeros(self.num_layers)
        weights[self.layer] = 1.0
        return weights

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, layer={self.layer}"


class LastLayer(SingleLayer):
    """The final hidden state as the features: y_t = h_{L-1, t}; no trainable parameters."""

    def __init__(self, num_layers: int, hidden_size: int, normalize: bool = False) -> None:
        super().__init__(num_layers, hidden_size, layer=-1, normalize=normalize)
