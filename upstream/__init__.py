"""Upstreams: self-supervised speech models that return all their layer-wise hidden states."""

from upstream.base import Upstream, conv_frame_lengths

__all__ = ["Upstream", "conv_frame_lengths"]
