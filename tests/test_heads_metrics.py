"""Heads, decoding, metrics and SpecAugment: checked against independent computations."""

from __future__ import annotations

import itertools

import jiwer
import pytest
import torch

from downstream.augment import spec_augment
from downstream.heads import (
    BiLSTMHead,
    FrameLinearHead,
    MeanPoolClassifier,
    meta_parameter_count,
    widened_size,
)
from downstream.metrics.edit import ctc_greedy_decode, edit_statistics, error_rate_percent


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("head_class", "kwargs"),
    [
        (FrameLinearHead, {"hidden_size": 256}),
        (MeanPoolClassifier, {"hidden_size": 64}),
        (BiLSTMHead, {"hidden_size": 32, "lstm_size": 24, "num_lstm_layers": 2}),
    ],
)
def test_meta_device_parameter_count_matches_module(head_class, kwargs):
    head = head_class(input_size=40, num_outputs=7, **kwargs)
    assert meta_parameter_count(lambda: head_class(input_size=40, num_outputs=7, **kwargs)) == numel(head)


@pytest.mark.parametrize("head_class", [FrameLinearHead, MeanPoolClassifier])
def test_extra_params_widens_head_to_the_budget(head_class):
    base = numel(head_class(input_size=768, num_outputs=73, hidden_size=256))
    extra = 4_424_832  # HConv's interface parameters for L=13, D=768
    wide = head_class(input_size=768, num_outputs=73, hidden_size=256, extra_params=extra)
    one_unit = 768 + 1 + 73  # parameters added by one more hidden unit
    assert base + extra <= numel(wide) < base + extra + one_unit


def test_extra_params_widens_lstm():
    base = numel(BiLSTMHead(input_size=48, num_outputs=30, hidden_size=32, lstm_size=16))
    wide = BiLSTMHead(input_size=48, num_outputs=30, hidden_size=32, lstm_size=16, extra_params=50_000)
    assert numel(wide) >= base + 50_000
    narrower = numel(BiLSTMHead(input_size=48, num_outputs=30, hidden_size=32, lstm_size=wide.lstm_size - 1))
    assert narrower < base + 50_000


def test_widened_size_rejects_negative_budget():
    with pytest.raises(ValueError, match="extra_params"):
        widened_size(lambda size: FrameLinearHead(10, 3, size), 4, -1)


def test_head_rejects_bad_sizes():
    with pytest.raises(ValueError, match="head.hidden_size must be >= 1, got 0"):
        FrameLinearHead(input_size=8, num_outputs=3, hidden_size=0)


@pytest.mark.parametrize("head_class", [MeanPoolClassifier, BiLSTMHead])
def test_heads_ignore_padded_frames(head_class):
    torch.manual_seed(0)
    kwargs = {"hidden_size": 16, "lstm_size": 8} if head_class is BiLSTMHead else {"hidden_size": 16}
    head = head_class(input_size=12, num_outputs=5, **kwargs).eval()
    features = torch.randn(3, 20, 12)
    lengths = torch.tensor([20, 11, 4])
    padded = torch.cat([features, torch.randn(3, 7, 12)], dim=1)
    short = head(features, lengths)
    long = head(padded, lengths)
    if short.dim() == 3:
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(short[b, :n], long[b, :n], atol=1e-5, rtol=1e-5)
    else:
        torch.testing.assert_close(short, long, atol=1e-5, rtol=1e-5)


def reference_greedy(frame_ids: list[int], blank: int) -> list[int]:
    return [token for token, _ in itertools.groupby(frame_ids) if token != blank]


def test_ctc_greedy_decode_matches_reference():
    torch.manual_seed(1)
    logits = torch.randn(4, 30, 6)
    lengths = torch.tensor([30, 17, 1, 9])
    decoded = ctc_greedy_decode(logits, lengths, blank=0)
    best = logits.argmax(-1)
    for b, n in enumerate(lengths.tolist()):
        assert decoded[b] == reference_greedy(best[b, :n].tolist(), blank=0)


def test_word_error_rate_matches_jiwer():
    references = ["THE CAT SAT ON THE MAT", "A B C D", "HELLO WORLD"]
    hypotheses = ["THE CAT SAT MAT", "A X C D E", "HELLO WORLD"]
    edits, words = edit_statistics([r.split() for r in references], [h.split() for h in hypotheses])
    assert error_rate_percent(edits, words) == pytest.approx(100 * jiwer.wer(references, hypotheses))


def test_error_rate_of_empty_reference_is_an_error():
    with pytest.raises(ValueError, match="empty reference"):
        error_rate_percent(0, 0)


def runs_of_true(flags: torch.Tensor) -> int:
    """How many contiguous stretches of True a 1-D bool tensor holds."""
    padded = torch.cat([torch.zeros(1, dtype=torch.bool), flags])
    return int((padded[1:] & ~padded[:-1]).sum())


def test_spec_augment_masks_within_bounds():
    torch.manual_seed(2)
    batch = 64
    features = torch.rand(batch, 100, 60) + 1.0  # no zeros before masking
    lengths = torch.randint(10, 101, (batch,))
    out = spec_augment(
        features, lengths, num_freq_masks=2, max_freq_width=5, num_time_masks=2, max_time_width=4
    )
    assert out.shape == features.shape
    zeroed = out == 0
    torch.testing.assert_close(out[~zeroed], features[~zeroed])  # what is not masked is untouched
    masked_channels = zeroed.all(dim=1)  # [B, D]: channels zeroed at every frame
    masked_frames = zeroed.all(dim=2)  # [B, T]: frames zeroed in every channel
    assert torch.equal(zeroed, masked_channels.unsqueeze(1) | masked_frames.unsqueeze(2))
    for b, n in enumerate(lengths.tolist()):
        assert masked_channels[b].sum() <= 2 * 5 and runs_of_true(masked_channels[b]) <= 2
        assert masked_frames[b].sum() <= 2 * 4 and runs_of_true(masked_frames[b]) <= 2
        assert not masked_frames[b, n:].any()  # time masks stay inside the valid frames
    # each mask is 0..max wide, so both of a kind are empty with probability 1/36 (freq) or 1/25 (time)
    assert masked_channels.any(dim=1).float().mean() > 0.8
    assert masked_frames.any(dim=1).float().mean() > 0.8


def test_spec_augment_with_zero_widths_is_identity():
    features = torch.randn(2, 10, 6)
    out = spec_augment(features, torch.tensor([10, 5]), 4, 0, 2, 0)
    torch.testing.assert_close(out, features)
