"""Interfaces: modules that combine an upstream's layer-wise hidden states into one feature sequence.

Each is built as ``Class(num_layers, hidden_size, **hyperparameters)`` (configs/interface/<name>.yaml) and maps
hidden states [L, B, T, D] and valid-frame counts [B] to features [B, T, output_size].
``from_ssl_interface_config`` builds them from the config fields of the paper's own SSL_Interface package.
"""

from interfaces.base import Interface, NotFittedError, frame_mask, zero_padded_frames
from interfaces.cls_pooling import CLSPooling
from interfaces.concat_proj import ConcatProjection
from interfaces.group_ws import GroupedWeightedSum
from interfaces.hconv import HierarchicalConv
from interfaces.layer_attention import LayerAttention
from interfaces.pca_concat import PCAConcat
from interfaces.single_layer import LastLayer, SingleLayer
from interfaces.ssl_interface import from_ssl_interface_config
from interfaces.weighted_sum import WeightedSum

__all__ = [
    "CLSPooling",
    "ConcatProjection",
    "GroupedWeightedSum",
    "HierarchicalConv",
    "Interface",
    "LastLayer",
    "LayerAttention",
    "NotFittedError",
    "PCAConcat",
    "SingleLayer",
    "WeightedSum",
    "frame_mask",
    "from_ssl_interface_config",
    "zero_padded_frames",
]
