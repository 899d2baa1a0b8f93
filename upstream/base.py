"""The upstream contract: waveforms in, every layer's hidden states out."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")
# How padding in a batch may touch an utterance's valid frames (hf and torchaudio sources):
# exact: a padded utterance's hidden states equal its unpadded single run (masked group norm);
# s3prl: as s3prl/fairseq/transformers run Base models, group norm over the padded length.
PADDING_MODES = ("exact", "s3prl")
LayerSelection = str | Sequence[int] | None


def parse_layer_selection(layers: LayerSelection, total: int) -> tuple[int, ...]:
    """Indices of the hidden states to keep, from ``upstream.layers``.

    ``None``: all ``total``; a list of indices (negative ones count from the end, as in Python); or a
    Python slice as a string, e.g. ``"::2"`` (every other state from the transformer input),
    ``"1:"`` (every transformer layer) or ``"0:25"``. The result must be non-empty and strictly increasing
    (the interfaces see the kept states in this order). Raises ValueError naming ``upstream.layers``.
    """
    if layers is None:
        return tuple(range(total))
    if isinstance(layers, str):
        match = re.fullmatch(r"\s*(-?\d*)\s*:\s*(-?\d*)\s*(?::\s*(-?\d*)\s*)?", layers)
        if match is None:
            raise ValueError(
                f"upstream.layers={layers!r} is not a slice 'start:stop[:step]' (e.g. '::2', '1:'), "
                "a list of indices or null"
            )
        start, stop, step = (int(part) if part else None for part in match.groups())
        if step == 0:
            raise ValueError(f"upstream.layers={layers!r}: the slice step must not be 0")
        indices = list(range(total))[slice(start, stop, step)]
    else:
        try:
            indices = [int(index) for index in layers]
        except (TypeError, ValueError):
            raise ValueError(
                f"upstream.layers={layers!r} is not a list of integer indices, a slice string or null"
            ) from None
        out_of_range = [index for index in indices if not -total <= index < total]
        if out_of_range:
            raise ValueError(
                f"upstream.layers={list(layers)}: indices {out_of_range} are outside this upstream's "
                f"{total} hidden states (0 = transformer input, {total - 1} = last layer)"
            )
        indices = [index % total for index in indices]
    if not indices:
        raise ValueError(f"upstream.layers={layers!r} selects no hidden state of the {total} there are")
    if any(later <= earlier for earlier, later in zip(indices, indices[1:], strict=False)):
        raise ValueError(
            f"upstream.layers={layers!r} gives {indices}: indices must be strictly increasing (each once)"
        )
    return tuple(indices)


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


def valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """[B, size] boolean mask, True at positions below each row's length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


class MaskedGroupNorm:
    """Makes an ``nn.GroupNorm`` take each utterance's statistics over its valid frames only.

    Base models' CNN (wav2vec 2.0 / HuBERT / WavLM Base, ...) normalises each channel of its first
    convolution over the whole time axis. In a zero-padded batch that axis includes the padding, so an
    utterance's features depend on the batch it is in. While ``lengths`` (frames of the norm's input,
    [B]) is set, a forward hook on the norm replaces its output: the mean and (biased) variance of each
    group over the first ``lengths[b]`` frames of utterance b, then the norm's own weight, bias and eps,
    so a padded utterance is normalised as it is alone. ``lengths = None`` leaves the norm as it is.
    A hook rather than a wrapper module keeps the checkpoint's state-dict keys unchanged.
    """

    def __init__(self, norm: nn.GroupNorm) -> None:
        self.norm = norm
        self.lengths: torch.Tensor | None = None
        norm.register_forward_hook(self._hook)

    def _hook(self, module: nn.GroupNorm, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if self.lengths is None:
            return None
        return self.masked(args[0], self.lengths)

    def masked(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> group norm of each row over its first lengths[b] frames (float32 statistics)."""
        batch, channels, frames = x.shape
        norm = self.norm
        groups = norm.num_groups
        lengths = lengths.to(x.device)
        valid = valid_mask(lengths, frames)[:, None, None, :]  # [B, 1, 1, T]
        grouped = x.float().reshape(batch, groups, channels // groups, frames)
        count = (lengths.float().clamp(min=1) * (channels // groups))[:, None, None, None]
        mean = (grouped * valid).sum(dim=(2, 3), keepdim=True) / count
        variance = (((grouped - mean) * valid) ** 2).sum(dim=(2, 3), keepdim=True) / count
        normalized = ((grouped - mean) * torch.rsqrt(variance + norm.eps)).reshape(batch, channels, frames)
        if norm.affine:
            normalized = normalized * norm.weight.float()[:, None] + norm.bias.float()[:, None]
        return normalized.to(x.dtype)


def normalize_waveforms(wavs: torch.Tensor, wav_lengths: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-utterance zero mean, unit variance over the valid samples: (x - mean) / sqrt(var + eps).

    The variance is the biased one (as layer_norm computes it); padded samples stay zero, so each
    utterance is normalised exactly as it would be alone. Mean and variance are summed in float64, where
    the sum of a float32 constant is exact: a constant (or silent) utterance comes out exactly 0 rather
    than float32 rounding noise times 1 / sqrt(eps). Returns ``wavs``' dtype.
    """
    valid = torch.arange(wavs.shape[1], device=wavs.device)[None, :] < wav_lengths[:, None]
    samples = wavs.double()
    count = wav_lengths.double().clamp(min=1)[:, None]
    mean = (samples * valid).sum(dim=1, keepdim=True) / count
    centred = (samples - mean) * valid
    variance = (centred**2).sum(dim=1, keepdim=True) / count
    return (centred * torch.rsqrt(variance + eps)).to(wavs.dtype)


class Upstream(nn.Module):
    """Maps wavs [B, N] (16 kHz floats) and wav_lengths [B] to (hidden_states [L, B, T, D], frame_lengths [B]).

    What the rest of the project reads (all known after ``__init__``, before any forward pass):
    - ``num_layers`` (L): hidden states returned, the transformer input plus every layer (13 for Base
      models, 25 for Large), or the ``upstream.layers`` subset; ``layer_ids`` are the kept states'
      indices among all ``total_layers`` of the model;
    - ``hidden_size`` (D);
    - ``downsample_rate`` (int): input samples at ``sample_rate`` per output frame (320 for 50 Hz models,
      640 for SEW's 25 Hz); ``frame_rate`` (float, Hz) = sample_rate / downsample_rate;
    - ``frame_lengths(wav_lengths)``: valid frames per utterance, by the model's own arithmetic;
    - ``min_samples`` (int): the shortest waveform (samples) that yields one frame; shorter input raises;
    - ``window_samples`` (int or None): the longest input the model encodes in one window (Whisper's 30 s);
      longer input is split into windows whose frames are concatenated, or refused when ``max_samples``
      equals it (None: no window, any length).

    Subclasses set ``num_layers`` (all states), ``hidden_size``, ``downsample_rate`` and either
    ``conv_kernels``/``conv_strides`` (frame_lengths then follow the CNN's arithmetic) or their own
    ``frame_lengths``/``min_samples``. They implement ``extract`` and end their ``__init__`` with
    ``finalize_setup()``, which applies ``upstream.layers``; ``extract`` returns either all
    ``total_layers`` states or, if it honours ``layer_ids`` itself (saving memory), only those.

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
        layers: LayerSelection = None,
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
        self.layers = layers
        self.num_layers: int = 0
        self.total_layers: int = 0
        self.layer_ids: tuple[int, ...] = ()
        self.hidden_size: int = 0
        self.downsample_rate: int = 320
        self.conv_kernels: tuple[int, ...] = ()
        self.conv_strides: tuple[int, ...] = ()
        # Per-utterance waveform normalisation the checkpoint was trained with: None (off) or its eps.
        self.waveform_norm_eps: float | None = None
        self.window_samples: int | None = None
        self._input_dtype = torch.float32
        self._compiled_extract: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def min_samples(self) -> int:
        """Shortest waveform (samples at ``sample_rate``) that yields one frame: a CNN front end's receptive
        field (400 for the wav2vec 2.0 CNN), else one ``downsample_rate``."""
        if self.conv_kernels:
            return receptive_field(self.conv_kernels, self.conv_strides)
        return self.downsample_rate

    @property
    def max_samples(self) -> int | None:
        """Longest waveform (samples) the upstream accepts: None for any length; sources with a fixed window
        that refuse longer input (Whisper with ``whisper_long_audio=error``) override it."""
        return None

    @property
    def frame_rate(self) -> float:
        """Output frames per second of audio (Hz): sample_rate / downsample_rate (50.0 for most models)."""
        return self.sample_rate / self.downsample_rate

    def finalize_setup(self) -> None:
        """Call at the end of a subclass ``__init__``: applies the frozen mode and the weight precision."""
        if self.num_layers < 1 or self.hidden_size < 1 or self.downsample_rate < 1:
            raise RuntimeError(
                f"{type(self).__name__} must set num_layers, hidden_size and downsample_rate in __init__ "
                f"(got {self.num_layers}, {self.hidden_size}, {self.downsample_rate})"
            )
        self.total_layers = self.num_layers
        self.layer_ids = parse_layer_selection(self.layers, self.total_layers)
        self.num_layers = len(self.layer_ids)
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
            if shortest < self.min_samples:
                index = int(wav_lengths.argmin())
                raise ValueError(
                    f"wav_lengths[{index}] = {shortest} samples is shorter than {self.name} accepts: "
                    f"min_samples = {self.min_samples} ({1000 * self.min_samples / self.sample_rate:g} ms at "
                    f"{self.sample_rate} Hz, the input that yields one frame); pad or leave out such audio"
                )
            if longest > wavs.shape[1]:
                raise ValueError(
                    f"wav_lengths[{int(wav_lengths.argmax())}] = {longest} samples exceeds the padded length "
                    f"wavs.shape[1] = {wavs.shape[1]}"
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
            hidden_states = extract(wavs, wav_lengths)
            if hidden_states.shape[0] != self.num_layers:  # extract returned every state: keep the subset
                index = torch.tensor(self.layer_ids, device=hidden_states.device)
                hidden_states = hidden_states.index_select(0, index)
            hidden_states = hidden_states.float()
        frame_lengths = self.frame_lengths(wav_lengths).clamp(max=hidden_states.shape[2])
        valid = torch.arange(hidden_states.shape[2], device=hidden_states.device) < frame_lengths[:, None]
        hidden_states = hidden_states.masked_fill(~valid[None, :, :, None], 0.0)
        return hidden_states, frame_lengths
