"""Downstream heads: the task-specific modules on top of an interface's features [B, T, D'].

Every head takes ``input_size`` (the interface's ``output_size``), ``num_outputs`` (vocabulary or class
count), ``hidden_size`` and ``extra_params``. ``extra_params`` widens ``hidden_size`` until the head has
about that many more parameters than at its default width: the paper's Table 3 baseline, a weighted
sum with a downstream as large as HConv's interface plus the usual head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from interfaces.base import frame_mask

ParamCounter = Callable[[int, int, int], int]


def widened_hidden_size(
    count_params: ParamCounter, input_size: int, hidden_size: int, num_outputs: int, extra_params: int
) -> int:
    """Smallest hidden size h with count(h) >= count(hidden_size) + extra_params (count grows with h)."""
    if extra_params < 0:
        raise ValueError(f"head.extra_params must be >= 0, got {extra_params}")
    target = count_params(input_size, hidden_size, num_outputs) + extra_params
    low, high = hidden_size, max(hidden_size, 1)
    while count_params(input_size, high, num_outputs) < target:
        high *= 2
    while low < high:
        middle = (low + high) // 2
        if count_params(input_size, middle, num_outputs) < target:
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


class FrameLinearHead(nn.Module):
    """Per-frame two-layer linear projection (SUPERB's PR head): logits_t = W2 (W1 x_t + b1) + b2.

    There is no nonlinearity between the layers, as in SUPERB's linear PR probe: the 256-d
    bottleneck only bounds the probe's rank. Output [B, T, num_outputs] at the input's frame rate.
    """

    def __init__(
        self, input_size: int, num_outputs: int, hidden_size: int = 256, extra_params: int | None = None
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if extra_params:
            hidden_size = widened_hidden_size(
                self.count_params, input_size, hidden_size, num_outputs, extra_params
            )
        self.hidden_size = hidden_size
        self.project = nn.Linear(input_size, hidden_size)
        self.output = nn.Linear(hidden_size, num_outputs)

    @staticmethod
    def count_params(input_size: int, hidden_size: int, num_outputs: int) -> int:
        return input_size * hidden_size + hidden_size + hidden_size * num_outputs + num_outputs

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.output(self.project(features))


class BiLSTMHead(nn.Module):
    """SUPERB's ASR head: Linear(D', hidden) -> ``num_lstm_layers`` BiLSTM(``lstm_size`` per direction,
    dropout between layers) -> Linear(2 * lstm_size, num_outputs), per frame. Padded frames are packed
    away so they never reach the LSTM state of valid frames.

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
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if num_lstm_layers < 1:
            raise ValueError(f"head.num_lstm_layers must be >= 1, got {num_lstm_layers}")
        if extra_params:

            def count(d_in: int, size: int, n_out: int) -> int:
                return self.count_params(d_in, hidden_size, n_out, size, num_lstm_layers)

            lstm_size = widened_hidden_size(count, input_size, lstm_size, num_outputs, extra_params)
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
        self.output = nn.Linear(2 * lstm_size, num_outputs)

    @staticmethod
    def count_params(
        input_size: int, hidden_size: int, num_outputs: int, lstm_size: int = 1024, num_lstm_layers: int = 2
    ) -> int:
        projection = input_size * hidden_size + hidden_size
        lstm = 0
        for layer in range(num_lstm_layers):
            layer_input = hidden_size if layer == 0 else 2 * lstm_size
            lstm += 2 * 4 * lstm_size * (layer_input + lstm_size + 2)
        return projection + lstm + 2 * lstm_size * num_outputs + num_outputs

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        packed = nn.utils.rnn.pack_padded_sequence(
            projected, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False
        )
        encoded, _ = self.lstm(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(
            encoded, batch_first=True, total_length=features.shape[1]
        )
        return self.output(encoded)


class MeanPoolClassifier(nn.Module):
    """SUPERB's utterance classifier (SID, ER): h_t = W1 x_t + b1; u = mean of h_t over valid frames;
    logits = W2 u + b2. Output [B, num_outputs].
    """

    def __init__(
        self, input_size: int, num_outputs: int, hidden_size: int = 256, extra_params: int | None = None
    ) -> None:
        super().__init__()
        _check_sizes(input_size, hidden_size, num_outputs)
        if extra_params:
            hidden_size = widened_hidden_size(
                self.count_params, input_size, hidden_size, num_outputs, extra_params
            )
        self.hidden_size = hidden_size
        self.project = nn.Linear(input_size, hidden_size)
        self.output = nn.Linear(hidden_size, num_outputs)

    count_params = staticmethod(FrameLinearHead.count_params)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        projected = self.project(features)
        mask = frame_mask(lengths, features.shape[1]).unsqueeze(-1).to(projected.dtype)
        pooled = (projected * mask).sum(dim=1) / lengths.clamp(min=1).unsqueeze(-1).to(projected.dtype)
        return self.output(pooled)
