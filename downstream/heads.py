"""Downstream heads: the task-specific modules on top of an interface's features [B, T, D'].

Every head takes ``input_size`` (the interface's ``output_size``), ``num_outputs`` (vocabulary or class
count), ``hidden_size`` and ``extra_params``. ``extra_params`` widens one size of the head (``widened_size``)
until it has at least that many more parameters than at its configured width: the paper's Table 3
baseline, a weighted sum with a downstream as large as HConv's interface plus the usual head. Sizes are
counted exactly by building the head on the meta device (no memory, no formula to keep in step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from downstream.encoder_front import LENGTH_RULES, Conv2dSubsampling2, conv2d2_lengths, utterance_mvn
from interfaces.base import frame_mask, zero_padded_frames


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """The number of parameters of ``module`` (only those with requires_grad, unless ``trainable_only``
    is False). Any module: heads, interfaces, upstreams."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def head_output_lengths(head: nn.Module, lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Valid output frames [B] of ``head`` for ``lengths`` [B] valid input frames padded to ``frames``: the
    head's ``output_lengths`` where it changes the frame rate (``TransformerCTCHead`` with conv2d2), else
    ``lengths``."""
    rule = getattr(head, "output_lengths", None)
    return lengths if rule is None else rule(lengths, frames)


def meta_parameter_count(build: Callable[[], nn.Module]) -> int:
    """Every parameter of the module ``build()`` returns, constructed on the meta device (exact, allocates
    nothing)."""
    with torch.device("meta"):
        return count_parameters(build(), trainable_only=False)


def widened_size(build: Callable[[int], nn.Module], size: int, extra_params: int | None) -> int:
    """The smallest s >= ``size`` whose module ``build(s)`` has at least ``extra_params`` more parameters
    than ``build(size)`` (the count must grow with s); ``size`` when ``extra_params`` is None or 0. Raises
    ValueError for a negative ``extra_params``."""
    if not extra_params:
        return size
    if extra_params < 0:
        raise ValueError(f"head.extra_params must be >= 0, got {extra_params}")

    def count(candidate: int) -> int:
        return meta_parameter_count(lambda: build(candidate))

    target = count(size) + extra_params
    low, high = size, max(size, 1)
    while count(high) < target:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if count(middle) < target:
            low = middle + 1
        else:
            high = middle
    return low


def _check_sizes(input_size: int, hidden_size: int, num_outputs: int) -> None:
    for name, value in (
        ("input_size", input_size),
        ("hidden_size", hidden_size),
        ("num_outputs", num_outputs),
    ):
        if value < 1:
            raise ValueError(f"head.{name} must be >= 1, got {value}")


class _ProjectOutputHead(nn.Module):
    """Linear(input_size, hidden_size) ``project`` and Linear(hidden_size, num_outputs) ``output``, the
    hidden size widened by ``extra_params`` (``widened_size``); subclasses give ``forward``.
    ValueError for a size below 1."""

    def __init__(
        self, input_size: int, num_outputs: int, hidden_size: int = 256, extra_params: int | None = None
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        hidden_size = widened_size(
            lambda size: type(self)(input_size, num_outputs, size), hidden_size, extra_params
        )
        self.hidden_size = hidden_size
        self.project = nn.Linear(input_size, hidden_size)
        self.output = nn.Linear(hidden_size, num_outputs)


class FrameLinearHead(_ProjectOutputHead):
    """Per-frame two-layer linear projection (SUPERB's PR head): logits_t = W2 (W1 x_t + b1) + b2.

    There is no nonlinearity between the layers, as in SUPERB's linear PR probe: the 256-d
    bottleneck only bounds the probe's rank. Output [B, T, num_outputs] at the input's frame rate.
    """

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.output(self.project(features))


class BiLSTMHead(nn.Module):
    """SUPERB's ASR head: Linear(D', hidden) -> ``num_lstm_layers`` BiLSTM(``lstm_size`` per direction,
    dropout between layers, and after the last one too when ``dropout_after_last``, as s3prl's RNNLayer
    applies it after every layer, ``downstream/asr/model.py:45-46,64-65``) -> Linear(2 * lstm_size,
    num_outputs), per frame. Padded frames are packed away so they never reach the LSTM state of valid frames.

    ``extra_params`` widens ``lstm_size`` (the bulk of the head's parameters).
    """

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        hidden_size: int = 1024,
        lstm_size: int = 1024,
        num_lstm_layers: int = 2,
        dropout: float = 0.2,
        extra_params: int | None = None,
        dropout_after_last: bool = False,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if num_lstm_layers < 1:
            raise ValueError(f"head.num_lstm_layers must be >= 1, got {num_lstm_layers}")
        lstm_size = widened_size(
            lambda size: BiLSTMHead(input_size, num_outputs, hidden_size, size, num_lstm_layers, dropout),
            lstm_size,
            extra_params,
        )
        self.hidden_size = hidden_size
        self.lstm_size = lstm_size
        self.project = nn.Linear(input_size, hidden_size)
        self.lstm = nn.LSTM(
            hidden_size,
            lstm_size,
            num_layers=num_lstm_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_lstm_layers > 1 else 0.0,
        )
        self.last_dropout = nn.Dropout(dropout if dropout_after_last else 0.0)
        self.output = nn.Linear(2 * lstm_size, num_outputs)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        packed = nn.utils.rnn.pack_padded_sequence(
            projected, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        encoded, _ = self.lstm(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(
            encoded, batch_first=True, total_length=features.shape[1]
        )
        return self.output(self.last_dropout(encoded))


class MeanPoolClassifier(_ProjectOutputHead):
    """SUPERB's utterance classifier (SID, ER): h_t = W1 x_t + b1; u = mean of h_t over valid frames;
    logits = W2 u + b2. Output [B, num_outputs].
    """

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        mask = frame_mask(lengths, features.shape[1]).unsqueeze(-1).to(projected.dtype)
        pooled = (projected * mask).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(projected.dtype)
        return self.output(pooled)


class XVectorHead(nn.Module):
    """SUPERB's speaker-verification head (s3prl sv_voxceleb1): an x-vector network trained with AM-softmax.

    Frame level: Linear(D', hidden) then five TDNN layers (1-d convolutions without padding, ReLU after
    each) with (kernel, dilation) (5, 1), (3, 2), (3, 3), (1, 1), (1, 1), widths hidden x 4 then
    ``stats_size``; they consume 14 frames, so utterance b keeps max(lengths[b] - 14, 1) valid frames.
    Statistics pooling: the mean and the standard deviation (n - 1 denominator) of each channel over the
    valid frames, 2 * stats_size values. Utterance level: e = ReLU(W1 s + b1), the speaker embedding
    (``embed``) that verification scores; training adds h = ReLU(W2 e + b2).

    Output in training mode: the cosine of h with each training speaker's weight vector w_c,
    cos = (h / |h|) . (w_c / |w_c|), shape [B, num_outputs]; the task's AM-softmax loss applies the scale
    and margin. Output in eval mode: the embedding e, shape [B, hidden_size]. ``extra_params`` widens
    ``hidden_size``.
    """

    TDNN_LAYERS = ((5, 1), (3, 2), (3, 3), (1, 1), (1, 1))  # (kernel size, dilation)
    FRAMES_CONSUMED = sum((kernel - 1) * dilation for kernel, dilation in TDNN_LAYERS)

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        hidden_size: int = 512,
        stats_size: int = 1500,
        extra_params: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if stats_size < 1:
            raise ValueError(f"head.stats_size must be >= 1, got {stats_size}")
        hidden_size = widened_size(
            lambda size: XVectorHead(input_size, num_outputs, size, stats_size), hidden_size, extra_params
        )
        self.hidden_size = hidden_size
        self.project = nn.Linear(input_size, hidden_size)
        widths = [hidden_size] * len(self.TDNN_LAYERS) + [stats_size]
        self.tdnn = nn.ModuleList(
            nn.Conv1d(widths[i], widths[i + 1], kernel_size=kernel, dilation=dilation)
            for i, (kernel, dilation) in enumerate(self.TDNN_LAYERS)
        )
        self.embedding = nn.Linear(2 * stats_size, hidden_size)
        self.training_layer = nn.Linear(hidden_size, hidden_size)
        self.speaker_weights = nn.Parameter(torch.empty(hidden_size, num_outputs))
        nn.init.xavier_normal_(self.speaker_weights)

    def embed(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Speaker embeddings [B, hidden_size] of features [B, T, D'] with valid lengths [B]."""
        # Frames past an utterance's end are zeroed: they reach the statistics only of utterances shorter
        # than the receptive field (15 frames), which then see the same zeros alone or in a padded batch.
        frames = zero_padded_frames(self.project(features), lengths).transpose(1, 2)  # [B, hidden, T]
        shortfall = self.FRAMES_CONSUMED + 1 - frames.shape[-1]
        if shortfall > 0:
            frames = nn.functional.pad(frames, (0, shortfall))
        for layer in self.tdnn:
            frames = torch.relu(layer(frames))
        valid = (lengths.to(frames.device) - self.FRAMES_CONSUMED).clamp(min=1)
        mask = frame_mask(valid, frames.shape[-1]).unsqueeze(1).to(frames.dtype)  # [B, 1, T']
        count = valid.unsqueeze(1).to(frames.dtype)
        mean = (frames * mask).sum(dim=-1) / count
        squared_deviation = ((frames - mean.unsqueeze(-1)) ** 2 * mask).sum(dim=-1)
        std = torch.sqrt(squared_deviation / (count - 1).clamp(min=1) + 1e-6)
        return torch.relu(self.embedding(torch.cat([mean, std], dim=-1)))

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedding = self.embed(features, lengths)
        if not self.training:
            return embedding
        trained = torch.relu(self.training_layer(embedding))
        return nn.functional.normalize(trained, dim=-1) @ nn.functional.normalize(self.speaker_weights, dim=0)


class TransformerCTCHead(nn.Module):
    """ML-SUPERB's downstream model (ESPnet's CTC transformer encoder, train_asr_s3prl_{10min,1h}.yaml).

    [``normalize='utterance_mvn'``: per-utterance normalisation, ``encoder_front.utterance_mvn``] ->
    Linear(D', bottleneck) (ESPnet's linear pre-encoder, 80 wide) -> input layer -> x * sqrt(hidden) +
    sinusoidal positions -> dropout -> ``num_layers`` pre-norm transformer encoder layers (``num_heads``
    heads, feed-forward ``ff_size`` with ReLU, dropout) over the valid frames -> LayerNorm ->
    Linear(hidden, num_outputs). Output [B, T', num_outputs] with ``output_lengths`` valid frames.

    ``input_layer``: ``conv2d2``, ESPnet's Conv2dSubsampling2 (2x time subsampling: 50 Hz features give
    25 Hz logits; valid frames by ``length_rule``, ``encoder_front.conv2d2_lengths``), or ``linear``:
    Linear(bottleneck, hidden) + ReLU at the input frame rate (this project's head before it followed
    ESPnet). ``extra_params`` widens ``ff_size``.
    """

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        hidden_size: int = 256,
        bottleneck_size: int = 80,
        num_layers: int = 2,
        num_heads: int = 8,
        ff_size: int = 1024,
        dropout: float = 0.1,
        extra_params: int | None = None,
        input_layer: str = "linear",
        normalize: str | None = None,
        norm_vars: bool = False,
        length_rule: str = "exact",
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        for name, value in (
            ("bottleneck_size", bottleneck_size),
            ("num_layers", num_layers),
            ("ff_size", ff_size),
        ):
            if value < 1:
                raise ValueError(f"head.{name} must be >= 1, got {value}")
        if num_heads < 1 or hidden_size % num_heads:
            raise ValueError(
                f"head.hidden_size ({hidden_size}) must be a multiple of head.num_heads ({num_heads})"
            )
        for name, value, choices in (
            ("input_layer", input_layer, ("linear", "conv2d2")),
            ("normalize", normalize, (None, "utterance_mvn")),
            ("length_rule", length_rule, LENGTH_RULES),
        ):
            if value not in choices:
                raise ValueError(f"head.{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
        ff_size = widened_size(
            lambda size: TransformerCTCHead(
                input_size,
                num_outputs,
                hidden_size,
                bottleneck_size,
                num_layers,
                num_heads,
                size,
                dropout,
                input_layer=input_layer,
            ),
            ff_size,
            extra_params,
        )
        self.hidden_size = hidden_size
        self.ff_size = ff_size
        self.normalize, self.norm_vars, self.length_rule = normalize, norm_vars, length_rule
        self.bottleneck = nn.Linear(input_size, bottleneck_size)
        self.input_layer = (
            Conv2dSubsampling2(bottleneck_size, hidden_size)
            if input_layer == "conv2d2"
            else nn.Linear(bottleneck_size, hidden_size)
        )
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden_size, num_heads, ff_size, dropout, activation="relu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.output = nn.Linear(hidden_size, num_outputs)

    def output_lengths(self, lengths: torch.Tensor, frames: int) -> torch.Tensor:
        """Valid output frames [B] for ``lengths`` [B] valid input frames padded to ``frames``."""
        if isinstance(self.input_layer, Conv2dSubsampling2):
            return conv2d2_lengths(lengths, max(frames, 7), self.length_rule)
        return lengths

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.normalize == "utterance_mvn":
            features = utterance_mvn(
                features, lengths, self.norm_vars, zero_padding=self.length_rule == "exact"
            )
        frames = self.bottleneck(features)
        if isinstance(self.input_layer, Conv2dSubsampling2):
            frames, lengths = self.input_layer(frames, lengths, self.length_rule)
        else:
            frames = torch.relu(self.input_layer(frames))
        frames = frames * self.hidden_size**0.5 + sinusoidal_positions(
            frames.shape[1], self.hidden_size, frames.device, frames.dtype
        )
        # an utterance with no valid frame attends to its first one (no NaN; CTC leaves it out anyway)
        padding = ~frame_mask(lengths.to(frames.device).clamp(min=1), frames.shape[1])
        encoded = self.encoder(self.dropout(frames), src_key_padding_mask=padding)
        return self.output(self.norm(encoded))


def sinusoidal_positions(length: int, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Transformer positions [length, size]: sin(t / 10000^(2i/size)) at even channels 2i, cos at odd ones."""
    positions = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)
    rates = torch.exp(
        torch.arange(0, size, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / size)
    )
    table = torch.zeros(length, size, device=device)
    table[:, 0::2] = torch.sin(positions * rates)
    table[:, 1::2] = torch.cos(positions * rates[: size // 2])
    return table.to(dtype)


class LSTMFrameHead(nn.Module):
    """SUPERB's speaker diarization head (s3prl's diarization model): ``num_lstm_layers`` unidirectional
    LSTM(``hidden_size``) -> Linear(hidden_size, num_outputs), per frame: one logit per speaker and frame.
    Padded frames are packed away. ``extra_params`` widens ``hidden_size``."""

    def __init__(
        self,
        input_size: int,
        num_outputs: int,
        hidden_size: int = 512,
        num_lstm_layers: int = 1,
        extra_params: int | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if num_lstm_layers < 1:
            raise ValueError(f"head.num_lstm_layers must be >= 1, got {num_lstm_layers}")
        hidden_size = widened_size(
            lambda size: LSTMFrameHead(input_size, num_outputs, size, num_lstm_layers),
            hidden_size,
            extra_params,
        )
        self.hidden_size = hidden_size
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_lstm_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, num_outputs)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            features, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        encoded, _ = self.lstm(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(
            encoded, batch_first=True, total_length=features.shape[1]
        )
        return self.output(encoded)
