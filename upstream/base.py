"""The upstream contract: waveforms in, every layer's hidden states out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def conv_frame_lengths(
    wav_lengths: torch.Tensor, kernels: tuple[int, ...], strides: tuple[int, ...]
) -> torch.Tensor:
    """Frames produced by a stack of unpadded 1-D convolutions: n -> floor((n - k) / s) + 1 per layer.

    For the wav2vec 2.0 CNN (kernels 10,3,3,3,3,2,2; strides 5,2,2,2,2,2,2) this is
    T = floor((n - 400) / 320) + 1 for n >= 400 samples.
    """
    lengths = wav_lengths.long()
    for kernel, stride in zip(kernels, strides, strict=True):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def receptive_field(kernels: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Samples that the first output frame of an unpadded conv stack sees (400 for the wav2vec 2.0 CNN)."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides, strict=True):
        field += (kernel - 1) * jump
        jump *= stride
    return field


def normalize_waveforms(wavs: torch.Tensor, wav_lengths: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-utterance zero mean, unit variance over the valid samples: (x - mean) / sqrt(var + eps).

    The variance is the biased one (as layer_norm computes it); padded samples stay zero, so each
    utterance is normalised exactly as it would be alone.
    """
    valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < wav_lengths[:, None]
    count = wav_lengths.to(wavs.dtype).clamp(min=1)[:, None]
    mean = (wavs * valid).sum(dim=1, keepdim=True) / count
    variance = (((wavs - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return ((wavs - mean) * torch.rsqrt(variance + eps)) * valid


class Upstream(nn.Module):
    """Maps wavs [B, N] (16 kHz floats) and wav_lengths [B] to (hidden_states [L, B, T, D], frame_lengths [B]).

    Subclasses set in ``__init__`` (so they are known before any forward pass):
    ``num_layers`` (L: the transformer input plus every transformer layer, 13 for Base models and
    25 for Large), ``hidden_size`` (D), ``downsample_rate`` (input samples per frame) and, for CNN
    front ends, ``conv_kernels``/``conv_strides`` (frame_lengths then follow the CNN's arithmetic).
    They implement ``extract`` and end their ``__init__`` with ``finalize_setup()``.

    Modes:
    - Frozen (``trainable=False``, the SUPERB default): the model stays in eval mode whatever
      ``.train()`` is called with, its parameters have requires_grad=False, and the forward runs under
      ``torch.no_grad``. ``trainable=True`` fine-tunes it end to end with learning rate ``lr`` (the
      trainer puts ``parameters()`` into its optimizer only then).
    - ``precision="fp32"``: exact fp32; an autocast opened by the caller does not reach inside.
      ``precision="bf16"``: a frozen model's weights are cast to bfloat16 once, here (``.to(device)``
      keeps that dtype), and the waveform is cast to bf16 on the way in; a trainable model keeps fp32
      weights and runs under bf16 autocast instead (fp32 master weights for the optimizer). Stated
      tolerance, tested on the tiny model: per layer, ||h_bf16 - h_fp32||_F / ||h_fp32||_F < 0.03
      (measured 0.013-0.016 on the tiny models of tests/test_upstream.py).
    - Attention runs through PyTorch's scaled_dot_product_attention where the source allows: always for
      torchaudio and tiny, for hf where transformers supports it (HuBERT, wav2vec 2.0, data2vec-audio; its
      WavLM is eager-only); s3prl keeps its own attention code.
    - ``compile=True`` wraps ``extract`` in ``torch.compile(dynamic=True)`` on the first forward.

    Output: hidden_states are always float32 (a bf16 model's states are upcast), whatever the
    precision and whatever autocast the caller runs under. Frames at or beyond ``frame_lengths[b]``
    are zero. Inputs shorter than ``min_samples`` (the first frame's receptive field) are rejected
    when ``wav_lengths`` lives on the CPU; on an accelerator the check is skipped to avoid a host sync.
    """

    sample_rate: int = 16000
    compile_backend: str = "inductor"  # torch.compile backend used when compile=True

    def __init__(
        self,
        trainable: bool = False,
        lr: float = 1e-5,
        name: str = "upstream",
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"upstream.precision must be one of {PRECISIONS}, got {precision!r}")
        if not lr > 0:
            raise ValueError(f"upstream.lr must be a positive learning rate, got {lr!r}")
        self.trainable = bool(trainable)
        self.lr = float(lr)
        self.name = name
        self.precision = precision
        self.use_compile = bool(compile)
        self.num_layers: int = 0
        self.hidden_size: int = 0
        self.downsample_rate: int = 320
        self.conv_kernels: tuple[int, ...] = ()
        self.conv_strides: tuple[int, ...] = ()
        # Per-utterance waveform normalisation the checkpoint was trained with: None (off) or its eps.
        self.waveform_norm_eps: float | None = None
        self._input_dtype = torch.float32
        self._compiled_extract: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def min_samples(self) -> int:
        """Shortest waveform that yields one frame."""
        if self.conv_kernels:
            return receptive_field(self.conv_kernels, self.conv_strides)
        return self.downsample_rate

    def finalize_setup(self) -> None:
        """Call at the end of a subclass ``__init__``: applies the frozen mode and the weight precision."""
        if self.num_layers < 1 or self.hidden_size < 1 or self.downsample_rate < 1:
            raise RuntimeError(
                f"{type(self).__name__} must set num_layers, hidden_size and downsample_rate in __init__ "
                f"(got {self.num_layers}, {self.hidden_size}, {self.downsample_rate})"
            )
        if not self.trainable:
            for parameter in self.parameters():
                parameter.requires_grad_(False)
            super().train(False)
            if self.precision == "bf16":
                self.to(torch.bfloat16)
                self._input_dtype = torch.bfloat16

    def train(self, mode: bool = True) -> Upstream:
        return super().train(mode and self.trainable)

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames for each waveform length: the CNN's arithmetic, or floor(n / downsample_rate)."""
        if self.conv_kernels:
            return conv_frame_lengths(wav_lengths, self.conv_kernels, self.conv_strides)
        return torch.div(wav_lengths.long(), self.downsample_rate, rounding_mode="floor")

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Return hidden states [L, B, T, D] for the padded batch (any float dtype)."""
        raise NotImplementedError

    def _check_inputs(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> None:
        if wavs.dim() != 2:
            raise ValueError(f"wavs must be [B, N] at {self.sample_rate} Hz, got shape {tuple(wavs.shape)}")
        if wav_lengths.shape != (wavs.shape[0],):
            raise ValueError(
                f"wav_lengths must be [B] = [{wavs.shape[0]}], got shape {tuple(wav_lengths.shape)}"
            )
        if wav_lengths.device.type == "cpu" and len(wav_lengths) > 0:
            shortest, longest = int(wav_lengths.min()), int(wav_lengths.max())
            if shortest < self.min_samples or longest > wavs.shape[1]:
                raise ValueError(
                    f"wav_lengths must lie in [{self.min_samples}, {wavs.shape[1]}] samples for {self.name} "
                    f"(at least one frame, at most the padded length), got min {shortest}, max {longest}"
                )

    def forward(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._check_inputs(wavs, wav_lengths)
        wav_lengths = wav_lengths.to(wavs.device)
        if self.waveform_norm_eps is not None:
            wavs = normalize_waveforms(wavs.float(), wav_lengths, self.waveform_norm_eps)
        wavs = wavs.to(self._input_dtype)
        extract = self.extract
        if self.use_compile:
            if self._compiled_extract is None:
                self._compiled_extract = torch.compile(
                    self.extract, dynamic=True, backend=self.compile_backend
                )
            extract = self._compiled_extract
        grad_context = contextlib.nullcontext() if self.trainable else torch.no_grad()
        use_autocast = self.trainable and self.precision == "bf16"
        precision_context = torch.autocast(wavs.device.type, dtype=torch.bfloat16, enabled=use_autocast)
        with grad_context, precision_context:
            hidden_states = extract(wavs, wav_lengths).float()
        frame_lengths = self.frame_lengths(wav_lengths).clamp(max=hidden_states.shape[2])
        valid = torch.arange(hidden_states.shape[2], device=hidden_states.device) < frame_lengths[:, None]
        hidden_states = hidden_states.masked_fill(~valid[None, :, :, None], 0.0)
        return hidden_states, frame_lengths
