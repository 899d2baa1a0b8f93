"""Build our interfaces from the config fields of SSL_Interface, the paper's own interface package.

SSL_Interface (github.com/atosystem/SSL_Interface, arXiv 2406.12209) configures its modules with dataclasses:
``WeightedSumInterfaceConfig``, ``HierarchicalConvInterfaceConfig`` and ``SingleLayerInterfaceConfig``, all with
``upstream_layer_num`` (default 13), ``upstream_feat_dim`` (768) and ``normalize`` (False); HConv adds
``conv_kernel_size`` (5), ``conv_kernel_stride`` (3), ``output_dim`` and ``channel_change_strategy``
("same_upstream", the only one); SingleLayer adds ``selected_layer`` (-1; SSL_Interface ships this config but
no module for it, so the index is read as ours: -1 is the last hidden state). A user of that package switches with
one line::

    interface = from_ssl_interface_config(config)   # was: HierarchicalConvInterface(config)

and loads a state dict saved from SSL_Interface's module with ``interface.load_state_dict(...)`` (the key map is
in each class: ``WeightedSum.ssl_interface_state_dict_keys``, ``HierarchicalConv.ssl_interface_key_map``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from interfaces.base import Interface
from interfaces.hconv import HierarchicalConv
from interfaces.single_layer import SingleLayer
from interfaces.weighted_sum import WeightedSum

#: SSL_Interface's config class name -> our class.
SSL_INTERFACE_CLASSES: dict[str, type[Interface]] = {
    "WeightedSumInterfaceConfig": WeightedSum,
    "HierarchicalConvInterfaceConfig": HierarchicalConv,
    "SingleLayerInterfaceConfig": SingleLayer,
}
#: SSL_Interface's defaults for the fields every config has.
BASE_DEFAULTS: dict[str, Any] = {"upstream_layer_num": 13, "upstream_feat_dim": 768, "normalize": False}
#: The fields each config class adds, with SSL_Interface's defaults.
EXTRA_DEFAULTS: dict[str, dict[str, Any]] = {
    "WeightedSumInterfaceConfig": {},
    "HierarchicalConvInterfaceConfig": {
        "conv_kernel_size": 5,
        "conv_kernel_stride": 3,
        "output_dim": None,
        "channel_change_strategy": "same_upstream",
    },
    "SingleLayerInterfaceConfig": {"selected_layer": -1},
}


def config_fields(config: object) -> dict[str, Any]:
    """The fields of an SSL_Interface config: a dataclass instance, a mapping, or an object with attributes."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)}
    if isinstance(config, Mapping):
        return dict(config)
    return dict(vars(config))


def config_class_name(fields: Mapping[str, Any]) -> str:
    """The SSL_Interface config class the fields belong to: its ``name`` field, else inferred from the keys
    (HConv's or SingleLayer's own keys; neither: the weighted sum)."""
    name = fields.get("name")
    if name is not None:
        if name not in SSL_INTERFACE_CLASSES:
            raise ValueError(
                f"SSL_Interface config name {name!r} has no counterpart here; expected one of "
                f"{sorted(SSL_INTERFACE_CLASSES)}"
            )
        return name
    for candidate in ("HierarchicalConvInterfaceConfig", "SingleLayerInterfaceConfig"):
        if fields.keys() & EXTRA_DEFAULTS[candidate].keys():
            return candidate
    return "WeightedSumInterfaceConfig"


def from_ssl_interface_config(config: object | None = None, /, **fields: Any) -> Interface:
    """Our module for an SSL_Interface config: ``WeightedSum``, ``HierarchicalConv`` or ``SingleLayer``.

    ``config`` is SSL_Interface's config object (or a mapping of its fields); keyword ``fields`` add to or
    override it, so ``from_ssl_interface_config(upstream_layer_num=13, upstream_feat_dim=768, conv_kernel_size=5,
    conv_kernel_stride=3, output_dim=768)`` also works. Fields left out take SSL_Interface's defaults. Raises
    ValueError naming any field SSL_Interface's config class does not have, an unknown config name, or a
    ``channel_change_strategy`` other than "same_upstream"; HConv's own checks (``output_dim`` must equal what
    the architecture produces) raise as usual.
    """
    given = {**(config_fields(config) if config is not None else {}), **fields}
    class_name = config_class_name(given)
    allowed = {**BASE_DEFAULTS, **EXTRA_DEFAULTS[class_name]}
    unknown = sorted(set(given) - set(allowed) - {"name"})
    if unknown:
        raise ValueError(
            f"from_ssl_interface_config: {class_name} has no field(s) {unknown}; its fields are {sorted(allowed)}"
        )
    values = {**allowed, **given}
    common = {
        "num_layers": values["upstream_layer_num"],
        "hidden_size": values["upstream_feat_dim"],
        "normalize": values["normalize"],
    }
    if class_name == "HierarchicalConvInterfaceConfig":
        if values["channel_change_strategy"] != "same_upstream":
            raise ValueError(
                "from_ssl_interface_config: channel_change_strategy must be 'same_upstream' (SSL_Interface's only "
                f"strategy), got {values['channel_change_strategy']!r}"
            )
        return HierarchicalConv(
            **common,
            kernel_size=values["conv_kernel_size"],
            stride=values["conv_kernel_stride"],
            output_dim=values["output_dim"],
        )
    if class_name == "SingleLayerInterfaceConfig":
        return SingleLayer(**common, layer=values["selected_layer"])
    return WeightedSum(**common)
