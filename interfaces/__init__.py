"""Interfaces: modules that combine an upstream's layer-wise hidden states into one feature sequence."""

from interfaces.base import Interface, frame_mask, zero_padded_frames

__all__ = ["Interface", "frame_mask", "zero_padded_frames"]
