"""SUPERB's FBANK baseline: log-mel filterbank features as a one-layer "upstream"."""

from __future__ import annotations

import torch
from torchaudio.compliance import kaldi
from torchaudio.functional import compute_deltas

from upstream.base import Upstream

WINDOW_SAMPLES = 400  # 25 ms at 16 kHz
HOP_SAMPLES = 160  # 10 ms
CMVN_EPS = 1e-10
# Standard deviations at or below this (log-mel units: natural log of energy) are float32 rounding of a
# constant dimension (silence, digital zero, DC), not signal: such dimensions come out 0. Speech has
# per-utterance standard deviations of order 1 in every bin.
CMVN_STD_FLOOR = 1e-3


class FbankUpstream(Upstream):
    """Kaldi-style log-mel filterbank (torchaudio.compliance.kaldi.fbank: 25 ms Povey window, 10 ms hop,
    pre-emphasis 0.97, no dither, snip_edges so T = floor((n - 400) / 160) + 1), computed on each
    utterance's valid samples.

    L = 1, D = num_mel_bins * (delta_order + 1): 80 by default. ``delta_order=2`` appends deltas and
    delta-deltas (window 5), as s3prl's ``fbank`` upstream does (D = 240). With ``cmvn=True`` (default)
    each utterance is mean/variance normalised per dimension over its own valid frames:
    (x - mean) / (std + 1e-10), std the unbiased standard deviation; a dimension whose std is at most
    ``CMVN_STD_FLOOR`` (constant up to float rounding: an all-zero or constant file, a one-frame
    utterance) is 0 instead of rounding noise divided by ~1e-10. No trainable weights; always fp32.
    """

    def __init__(self, num_mel_bins: int = 80, delta_order: int = 0, cmvn: bool = True) -> None:
        if num_mel_bins < 1:
            raise ValueError(f"upstream.num_mel_bins must be >= 1, got {num_mel_bins}")
        if delta_order < 0:
            raise ValueError(f"upstream.delta_order must be >= 0, got {delta_order}")
        suffix = f"+{delta_order} deltas" if delta_order else ""
        super().__init__(trainable=False, name=f"fbank {num_mel_bins}{suffix}{' cmvn' if cmvn else ''}")
        self.num_mel_bins = num_mel_bins
        self.delta_order = delta_order
        self.cmvn = cmvn
        self.num_layers = 1
        self.hidden_size = num_mel_bins * (delta_order + 1)
        self.downsample_rate = HOP_SAMPLES
        self.conv_kernels = (WINDOW_SAMPLES,)
        self.conv_strides = (HOP_SAMPLES,)
        self.finalize_setup()

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """[n] samples -> [T, D] features for one unpadded utterance."""
        feats = kaldi.fbank(
            wav.float()[None],
            num_mel_bins=self.num_mel_bins,
            frame_length=1000 * WINDOW_SAMPLES / self.sample_rate,
            frame_shift=1000 * HOP_SAMPLES / self.sample_rate,
            sample_frequency=self.sample_rate,
            dither=0.0,
        )
        orders = [feats]
        for _ in range(self.delta_order):
            orders.append(compute_deltas(orders[-1].T[None], win_length=5)[0].T)
        feats = torch.cat(orders, dim=-1)
        if self.cmvn:
            std = feats.std(dim=0, keepdim=True) if feats.shape[0] > 1 else torch.zeros_like(feats[:1])
            normalized = (feats - feats.mean(dim=0, keepdim=True)) / (std + CMVN_EPS)
            feats = torch.where(std > CMVN_STD_FLOOR, normalized, torch.zeros_like(normalized))
        return feats

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        frames = self.frame_lengths(wav_lengths)
        out = wavs.new_zeros(1, wavs.shape[0], int(frames.max()), self.hidden_size, dtype=torch.float32)
        for index, length in enumerate(wav_lengths.tolist()):
            feats = self.features(wavs[index, :length])
            out[0, index, : feats.shape[0]] = feats
        return out
