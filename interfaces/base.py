"""The interface contract: layer-wise hidden states in, one feature sequence out.

Also the small helpers every interface shares: frame masks, hyperparameter checks that fail at
construction time with the parameter, the value and the allowed range, SUPERB's per-layer
normalisation (``normalize``, applied by the base class for every interface), and loading state dicts
saved by the paper's own interface code (SSL_Interface, github.com/atosystem/SSL_Interface) through a
per-class key map.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn


class NotFittedError(RuntimeError):
    """Raised when an interface that needs ``fit`` is used before it was fitted (or loaded)."""


def frame_mask(lengths: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Boolean mask [B, T] that is True at valid frames (t < lengths[b])."""
    steps = torch.arange(max_frames, device=lengths.device)
    return steps.unsqueeze(0) < lengths.to(steps.device).unsqueeze(1)


def zero_padded_frames(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Return features [B, T, D'] with every frame at or past lengths[b] set to zero."""
    mask = frame_mask(lengths, features.shape[1]).unsqueeze(-1)
    return features.masked_fill(~mask, 0.0)


def normalize_layers(hidden_states: torch.Tensor) -> torch.Tensor:
    """Layer norm without affine over the feature axis of every layer and frame (SUPERB's ``normalize``).

    For each vector h in hidden_states [L, B, T, D]: (h - mean(h)) / sqrt(var(h) + 1e-5).
    """
    return F.layer_norm(hidden_states, hidden_states.shape[-1:])


def mix_layers(weights: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """Weighted sums over layers: weights [G, L], hidden_states [L, B, T, D] -> [B, T, G, D].

    out[b, t, g] = sum_l weights[g, l] * hidden_states[l, b, t]; one matrix product, no per-layer loop.
    """
    return torch.einsum("gl,lbtd->btgd", weights.to(hidden_states.dtype), hidden_states)


def check_int(owner: str, name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """Return ``value`` if it is an int in [minimum, maximum] (maximum None: no upper bound), else ValueError."""
    allowed = f"in [{minimum}, {maximum}]" if maximum is not None else f">= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{owner}: {name} must be an integer {allowed}, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value}")
    return value


def check_layer_index(owner: str, name: str, index: object, num_layers: int) -> int:
    """Resolve a layer index (negative counts from the end, as in Python) to [0, num_layers - 1]."""
    if isinstance(index, bool) or not isinstance(index, int) or not -num_layers <= index < num_layers:
        raise ValueError(
            f"{owner}: {name} must be a layer index in [{-num_layers}, {num_layers - 1}] "
            f"(num_layers={num_layers}), got {index!r}"
        )
    return index % num_layers


def check_layer_subset(owner: str, name: str, layers: Sequence[int] | None, num_layers: int) -> list[int]:
    """Resolve an optional list of layer indexes (None: all layers) to distinct non-negative ones, in the given order."""
    if layers is None:
        return list(range(num_layers))
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise ValueError(f"{owner}: {name} must be a list of layer indexes or null, got {layers!r}")
    resolved = [check_layer_index(owner, name, index, num_layers) for index in layers]
    if not resolved:
        raise ValueError(f"{owner}: {name} must name at least one layer in [0, {num_layers - 1}], got []")
    if len(set(resolved)) != len(resolved):
        raise ValueError(
            f"{owner}: {name} must not repeat a layer, got {list(layers)} (resolved to {resolved})"
        )
    return resolved


def check_output_dim(owner: str, output_dim: object, hidden_size: int) -> int:
    """``output_dim`` None means hidden_size; otherwise an int >= 1."""
    if output_dim is None:
        return hidden_size
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise ValueError(
            f"{owner}: output_dim must be an integer >= 1 (or null for hidden_size={hidden_size}), got {output_dim!r}"
        )
    return output_dim


class Interface(nn.Module):
    """Maps hidden states [L, B, T, D] and valid-frame counts [B] to features [B, T, D'].

    Subclasses set ``output_size`` (D') in ``__init__`` and implement ``combine``; ``forward``
    validates the input, applies ``normalize`` and zeroes padded frames, so every interface honours the
    padding rule: frames past ``lengths[b]`` never change the output at valid frames, and padded outputs are 0.

    ``normalize`` (every interface, default False): before combining, each layer's vector of each frame is
    layer-normed over its D features without affine parameters, (h - mean(h)) / sqrt(var(h) + 1e-5), as
    SUPERB's featurizer and SSL_Interface's base class do. ``fit`` of interfaces that need it sees the
    same normalised features.
    """

    #: True for interfaces that must see training features (``fit``) before the first step.
    needs_fit: ClassVar[bool] = False
    #: True for interfaces whose ``layer_weights()`` returns weights over layers (False: it returns None).
    weighs_layers: ClassVar[bool] = False
    #: State-dict keys of SSL_Interface's module (relative to this module) -> this class's keys; see
    #: ``ssl_interface_key_map``. Empty for interfaces that SSL_Interface does not have.
    ssl_interface_state_dict_keys: ClassVar[dict[str, str]] = {}

    def __init__(self, num_layers: int, hidden_size: int, normalize: bool = False) -> None:
        super().__init__()
        owner = type(self).__name__
        self.num_layers = check_int(owner, "num_layers", num_layers, 1)
        self.hidden_size = check_int(owner, "hidden_size", hidden_size, 1)
        if not isinstance(normalize, bool):
            raise ValueError(f"{owner}: normalize must be true or false, got {normalize!r}")
        self.normalize = normalize
        self.output_size: int = hidden_size

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[L, B, T, D] (already normalised when ``normalize``) -> [B, T, D']; padded frames may hold
        anything, ``forward`` zeroes them."""
        raise NotImplementedError

    def normalize_input(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """hidden_states [L, B, T, D], layer-normed per layer and frame (no affine) when ``normalize``, else unchanged."""
        return normalize_layers(hidden_states) if self.normalize else hidden_states

    def check_inputs(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> None:
        """ValueError unless hidden_states is [L, B, T, D] with this interface's L and D and lengths is [B]."""
        if hidden_states.dim() != 4:
            raise ValueError(f"hidden_states must be [L, B, T, D], got shape {tuple(hidden_states.shape)}")
        num_layers, batch_size, _, hidden_size = hidden_states.shape
        if num_layers != self.num_layers or hidden_size != self.hidden_size:
            raise ValueError(
                f"{type(self).__name__} was built for L={self.num_layers}, D={self.hidden_size}, "
                f"got hidden_states with L={num_layers}, D={hidden_size}"
            )
        if lengths.shape != (batch_size,):
            raise ValueError(f"lengths must be [B] with B={batch_size}, got shape {tuple(lengths.shape)}")

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states [L, B, T, D], lengths [B] (valid frames per sequence; None: all T frames valid,
        as SSL_Interface's ``forward(stacked_hs)`` assumes) -> features [B, T, output_size], 0 past lengths.

        Raises ValueError for shapes that do not match this interface, NotFittedError before ``fit``
        for interfaces that need it."""
        if lengths is None and hidden_states.dim() == 4:
            batch_size, num_frames = hidden_states.shape[1:3]
            lengths = torch.full((batch_size,), num_frames, dtype=torch.long, device=hidden_states.device)
        self.check_inputs(hidden_states, lengths)
        if not self.is_fitted:
            raise NotFittedError(
                f"{type(self).__name__} must be fitted on training features (interface.fit(batches)) "
                "or loaded from a fitted state dict before forward"
            )
        features = self.combine(self.normalize_input(hidden_states), lengths)
        return zero_padded_frames(features, lengths)

    @property
    def is_fitted(self) -> bool:
        """False only for an interface that needs ``fit`` and has neither been fitted nor loaded fitted state."""
        return not self.needs_fit

    def extra_repr(self) -> str:
        """Subclasses append their hyperparameters to this: ``f"{super().extra_repr()}, name=value"``."""
        return (
            f"num_layers={self.num_layers}, hidden_size={self.hidden_size}, "
            f"output_size={self.output_size}, normalize={self.normalize}"
        )

    def layer_weights(self) -> torch.Tensor | None:
        """Normalised weights over layers ([L] or [groups, L]) when ``weighs_layers``, else None."""
        return None

    def layer_weight_labels(self, layer_ids: Sequence[int]) -> list[str]:
        """Log names of a 1-D ``layer_weights()``'s entries, given the upstream's ``layer_ids``: layer_<id>."""
        return [f"layer_{index}" for index in layer_ids]

    def ssl_interface_key_map(self) -> dict[str, str]:
        """SSL_Interface state-dict key -> this module's key, for the keys this instance has.

        ``load_state_dict`` renames these keys before loading, so a state dict saved from SSL_Interface's
        module loads here (as the whole dict, or under a prefix inside a larger model's dict). Default: the
        class's ``ssl_interface_state_dict_keys``, restricted to keys this instance has; subclasses whose keys depend
        on the architecture (HConv's number of convolutions) override it."""
        if not self.ssl_interface_state_dict_keys:
            return {}
        own = set(self.state_dict())
        return {theirs: ours for theirs, ours in self.ssl_interface_state_dict_keys.items() if ours in own}

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: Mapping[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # state_dict is load_state_dict's own copy (documented by torch), so renaming in place is safe; the
        # children (convolutions, ...) load after this and find their keys under our names. SSL_Interface keys
        # that this instance has no place for stay as they are, so a strict load names them as unexpected.
        for their_key, our_key in self.ssl_interface_key_map().items():
            if prefix + their_key not in state_dict:
                continue
            if prefix + our_key in state_dict:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: both {prefix + their_key!r} (SSL_Interface's key) "
                    f"and {prefix + our_key!r} (ours) are present; pass a state dict from one of the two"
                )
            state_dict[prefix + our_key] = state_dict.pop(prefix + their_key)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fit non-trainable state on training features; ``batches`` yields (hidden_states, lengths)."""
        if self.needs_fit:
            raise NotImplementedError(f"{type(self).__name__} needs fit() but does not implement it")
