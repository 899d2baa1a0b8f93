"""PR, ASR and SF under protocol=superb (s3prl 0.4.18) and protocol=exact: SpecAugment, CTC loss mean, BiLSTM
dropout, targets and vocabularies, lexicons, batch halving, SF text normalisation and slot parsing.

Every expectation is an independent computation (torch's CTCLoss, a cubic-convolution resampler, a regex-free
re-derivation of s3prl's slot rules) or a value copied from s3prl's files (vocabularies)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from downstream.augment import spec_augment, time_warp
from downstream.data.corpus import DataLayoutError, Utterance
from downstream.data.lexicon import load_lexicon
from downstream.data.sampler import BucketBatchSampler
from downstream.heads import BiLSTMHead
from downstream.tasks.asr import SpeechRecognition
from downstream.tasks.ctc import ctc_min_frames_tensor, ctc_target_tensors, masked_ctc_loss
from downstream.tasks.pr import PhonemeRecognition
from tests.helpers import compose_config

# s3prl downstream/ctc/vocab/phoneme.txt, one phone a line, in file order
S3PRL_PHONEME_TXT = (  # noqa: SIM905 - the file's lines, as one string
    "SIL SPN AA0 AA1 AA2 AE0 AE1 AE2 AH0 AH1 AH2 AO0 AO1 AO2 AW0 AW1 AW2 AY0 AY1 AY2 B CH D DH EH0 EH1 EH2 ER0 "
    "ER1 ER2 EY0 EY1 EY2 F G HH IH0 IH1 IH2 IY0 IY1 IY2 JH K L M N NG OW0 OW1 OW2 OY0 OY1 OY2 P R S SH T TH UH0 "
    "UH1 UH2 UW0 UW1 UW2 V W Y Z ZH"
).split()
# s3prl downstream/asr/char.dict, symbols in file order
S3PRL_CHAR_DICT = "| E T A O N I H S R D L U M C W F G Y P B V K ' X J Q Z".split()  # noqa: SIM905


# -- SpecAugment -----------------------------------------------------------------------------------------
def _mask_spans(features: torch.Tensor, augmented: torch.Tensor) -> list[list[int]]:
    """Per utterance, the frames zeroed in every channel (features are never 0 themselves)."""
    zeroed = (augmented == 0) & (features != 0)
    return [torch.nonzero(row.all(dim=1)).flatten().tolist() for row in zeroed]


def test_time_mask_widths_are_exclusive_under_s3prl_and_inclusive_under_exact():
    torch.manual_seed(0)
    features = torch.rand(1, 40, 3) + 1.0
    lengths = torch.tensor([40])
    seen = {"exclusive": set(), "inclusive": set()}
    for rule in seen:
        for _ in range(400):
            out = spec_augment(
                features, lengths, num_time_masks=1, max_time_width=3, widths=rule, positions="valid"
            )
            seen[rule].add(len(_mask_spans(features, out)[0]))
    assert seen["exclusive"] == {0, 1, 2}  # randint(0, 3), s3prl specaug.py:242-247
    assert seen["inclusive"] == {0, 1, 2, 3}


def test_padded_positions_reach_past_a_short_utterance_and_valid_positions_do_not():
    torch.manual_seed(1)
    features = torch.rand(2, 60, 2) + 1.0
    lengths = torch.tensor([60, 6])
    starts = {"padded": [], "valid": []}
    for rule in starts:
        for _ in range(300):
            out = spec_augment(
                features, lengths, num_time_masks=1, max_time_width=4, widths="exclusive", positions=rule
            )
            zeroed = ((out[1] == 0) & (features[1] != 0)).all(dim=1)
            if zeroed.any():
                starts[rule].append(int(torch.nonzero(zeroed)[0]))
    # s3prl: start = randint(0, max(1, padded length - widest mask of the batch)); a mask may miss the utterance
    assert max(starts["padded"]) > 6 and max(starts["padded"]) <= 60 - 1
    assert max(starts["valid"]) < 6


def test_ratio_time_masks_follow_espnet_width_bound():
    torch.manual_seed(2)
    features = torch.rand(2, 100, 2) + 1.0
    lengths = torch.tensor([100, 40])
    widest = {"padded": 0, "valid": [0, 0]}
    for _ in range(300):
        out = spec_augment(
            features, lengths, num_time_masks=1, max_time_ratio=0.05, widths="exclusive", positions="padded"
        )
        widest["padded"] = max(widest["padded"], len(_mask_spans(features, out)[0]))
        out = spec_augment(
            features, lengths, num_time_masks=1, max_time_ratio=0.05, widths="exclusive", positions="valid"
        )
        spans = _mask_spans(features, out)
        widest["valid"] = [max(w, len(s)) for w, s in zip(widest["valid"], spans, strict=True)]
    # ESPnet MaskAlongAxisVariableMaxWidth: W = floor(0.05 * padded length 100) = 5, widths 0..4
    assert widest["padded"] == 4
    # within each utterance: floor(0.05 * 100) = 5 and floor(0.05 * 40) = 2, exclusive
    assert widest["valid"] == [4, 1]


def _cubic_resize(column: np.ndarray, size: int) -> np.ndarray:
    """Resample a 1-D signal to ``size`` points by cubic convolution (Keys, a = -0.75), half-pixel centres,
    borders clamped: what bicubic interpolation with align_corners=False does along one axis."""

    def kernel(x: float) -> float:
        x, a = abs(x), -0.75
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    scale = len(column) / size
    out = np.zeros((size,) + column.shape[1:])
    for target in range(size):
        source = (target + 0.5) * scale - 0.5
        base = math.floor(source)
        for offset in range(-1, 3):
            index = min(max(base + offset, 0), len(column) - 1)
            out[target] += kernel(source - (base + offset)) * column[index]
    return out


def test_time_warp_matches_a_cubic_convolution_of_the_drawn_centre_and_target():
    features = torch.randn(1, 30, 4, dtype=torch.float64)
    window = 5
    torch.manual_seed(3)
    warped = time_warp(features, torch.tensor([30]), window)
    torch.manual_seed(3)  # replay s3prl's draws: centre in [window, t - window), target in [c - w + 1, c + w]
    centre = int(torch.randint(window, 30 - window, (1,)))
    target = int(torch.randint(centre - window, centre + window, (1,))) + 1
    x = features[0].numpy()
    expected = np.concatenate([_cubic_resize(x[:centre], target), _cubic_resize(x[centre:], 30 - target)])
    assert np.allclose(warped[0].numpy(), expected, atol=1e-9)
    assert centre != target or not np.allclose(expected, x)  # the check exercised a warp (seed 3 moves it)


def test_time_warp_leaves_short_utterances_and_padding_alone():
    features = torch.randn(2, 12, 3)
    warped = time_warp(features, torch.tensor([12, 10]), window=5)  # 10 - 5 <= 5: too short to warp
    assert torch.equal(warped[1], features[1])
    warped = time_warp(features, torch.tensor([11, 8]), window=2)
    assert torch.equal(warped[0, 11:], features[0, 11:]) and torch.equal(warped[1, 8:], features[1, 8:])


# -- CTC loss mean ---------------------------------------------------------------------------------------
def test_ctc_mean_all_is_torch_zero_infinity_mean_and_feasible_leaves_infeasible_out():
    torch.manual_seed(4)
    targets_list = [[1, 2, 3], [2, 2, 2, 2, 2], [3, 1]]  # the second needs 9 frames
    frames = torch.tensor([8, 6, 8])
    log_probs = torch.randn(8, 3, 5).log_softmax(-1)
    targets, target_lengths = ctc_target_tensors(targets_list)
    min_frames = ctc_min_frames_tensor(targets_list)
    s3prl = torch.nn.CTCLoss(blank=0, zero_infinity=True)(log_probs, targets, frames, target_lengths)
    ours = masked_ctc_loss(log_probs, targets, target_lengths, min_frames, frames, mean="all")
    assert torch.allclose(ours, s3prl)
    keep = [0, 2]
    kept_targets, kept_lengths = ctc_target_tensors([targets_list[i] for i in keep])
    feasible_only = torch.nn.CTCLoss(blank=0)(log_probs[:, keep], kept_targets, frames[keep], kept_lengths)
    assert torch.allclose(
        masked_ctc_loss(log_probs, targets, target_lengths, min_frames, frames), feasible_only
    )
    assert not torch.allclose(feasible_only, s3prl)


# -- BiLSTM head dropout ---------------------------------------------------------------------------------
@pytest.mark.parametrize("after_last", [True, False])
def test_bilstm_dropout_after_the_last_layer_only_when_asked(after_last):
    torch.manual_seed(5)
    head = BiLSTMHead(
        6, 4, hidden_size=8, lstm_size=16, num_lstm_layers=1, dropout=0.5, dropout_after_last=after_last
    )
    captured = []
    head.output.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].detach()))
    features, lengths = torch.randn(2, 7, 6), torch.tensor([7, 7])
    head.eval()
    head(features, lengths)
    head.train()
    head(features, lengths)
    clean, trained = captured
    if after_last:  # s3prl asr/model.py:64-65: Dropout(0.2) after every RNNLayer, the last one too
        dropped = trained == 0
        assert 0.3 < dropped.float().mean() < 0.7
        assert torch.allclose(trained[~dropped], 2 * clean[~dropped], atol=1e-6)
    else:  # one layer: torch's inter-layer dropout never applies
        assert torch.allclose(trained, clean, atol=1e-6)


# -- PR ---------------------------------------------------------------------------------------------------
def test_pr_reads_a_list_of_lexicons_first_pronunciation_winning(tmp_path):
    first, second = tmp_path / "a-g2p.txt", tmp_path / "b-g2p.txt"
    first.write_text("HELLO\tHH AH0 L OW1\nHELLO HH EH0 L OW1\n")
    second.write_text("HELLO HH AA1 L OW0\nWORLD W ER1 L D\n")
    lexicon = load_lexicon([str(first), str(second)])
    assert lexicon == {"HELLO": ["HH", "AH0", "L", "OW1"], "WORLD": ["W", "ER1", "L", "D"]}


def test_a_missing_g2p_lexicon_is_named_with_where_s3prl_keeps_it(tmp_path):
    present = tmp_path / "librispeech-lexicon-200k-g2p.txt"
    present.write_text("A AH0\n")
    missing = tmp_path / "librispeech-lexicon-allothers-g2p.txt"
    with pytest.raises(DataLayoutError, match="librispeech-lexicon-allothers-g2p.txt") as error:
        PhonemeRecognition(str(tmp_path), lexicon=[str(present), str(missing)])
    assert "s3prl/downstream/ctc/lexicon/librispeech-lexicon-allothers-g2p.txt" in str(error.value)


def test_pr_superb_vocabulary_and_eos_target_as_s3prl_and_eos_is_not_scored(tmp_path):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("HELLO HH AH0 L OW1\nWORLD W ER1 L D\n")
    task = PhonemeRecognition(str(tmp_path), lexicon=str(lexicon), vocabulary="s3prl", target_eos=True)
    # s3prl ctc/text.py: <pad>=0 (the CTC blank), <eos>=1, <unk>=2, then phoneme.txt
    assert task.vocabulary[1:] == ["<eos>", "<unk>", *S3PRL_PHONEME_TXT]
    utterance = Utterance("u", Path("u.flac"), 16000, text="HELLO WORLD")
    target = task.encode(utterance, "train")
    assert task.vocabulary[target[-1]] == "<eos>" and len(target) == 9
    eos = task.vocabulary.index("<eos>")
    statistics = task.sequence_statistics([task.decode(target)], [task.decode([*target[:-2], eos])])
    assert statistics == {"edits": 1, "reference_units": 8}  # one phone dropped; <eos> neither side
    exact = PhonemeRecognition(str(tmp_path), lexicon=str(lexicon))
    assert exact.vocabulary[1:] == sorted({"HH", "AH0", "L", "OW1", "W", "ER1", "D"})
    assert len(exact.encode(utterance, "train")) == 8


def test_pr_batches_over_300000_samples_are_cut_in_two_halves():
    lengths = [300_001, 299_000, 200_000, 100_000, 300_000, 1000, 900, 800]
    sampler = BucketBatchSampler(lengths, batch_size=4, shuffle=False, halve_above_samples=300_000)
    assert sampler.epoch_batches(0) == [[0, 4], [1, 2], [3, 5, 6, 7]]
    plain = BucketBatchSampler(lengths, batch_size=4, shuffle=False)
    assert plain.epoch_batches(0) == [[0, 4, 1, 2], [3, 5, 6, 7]]
    shuffled = BucketBatchSampler(lengths * 4, batch_size=4, seed=1, halve_above_samples=300_000)
    batches = shuffled.epoch_batches(0)
    assert sorted(i for batch in batches for i in batch) == list(range(32))  # nobody left out
    assert all(len(b) <= 2 for b in batches if max(lengths[i % 8] for i in b) > 300_000)


# -- ASR --------------------------------------------------------------------------------------------------
def test_asr_superb_target_ends_with_boundary_and_eos_in_fairseq_vocabulary():
    task = SpeechRecognition(".", vocabulary="s3prl", target_eos=True)
    # fairseq Dictionary: <s> (the CTC blank), <pad>, </s>, <unk>, then char.dict
    assert task.vocabulary[1:] == ["<pad>", "</s>", "<unk>", *S3PRL_CHAR_DICT]
    utterance = Utterance("u", Path("u.flac"), 16000, text="hello world")
    tokens = [task.vocabulary[i] for i in task.encode(utterance, "train")]
    assert tokens == [*"HELLO|WORLD", "|", "</s>"]  # asr/dataset.py:118-121 + encode_line's </s>
    statistics = task.sequence_statistics(
        [task.decode(task.encode(utterance, "train"))], [list("HELLO|WORD|")]
    )
    assert (statistics["edits"], statistics["reference_units"]) == (1, 2)
    assert (statistics["char_edits"], statistics["reference_chars"]) == (1, 11)
    exact = SpeechRecognition(".")
    assert [exact.vocabulary[i] for i in exact.encode(utterance, "train")] == list("HELLO|WORLD")


# -- configs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "protocol", "expected"),
    [
        ("pr", "superb", {"vocabulary": "s3prl", "target_eos": True, "ctc_loss_mean": "all"}),
        ("pr", "exact", {"vocabulary": "lexicon", "target_eos": False, "ctc_loss_mean": "feasible"}),
        ("asr", "superb", {"vocabulary": "s3prl", "target_eos": True, "ctc_loss_mean": "all"}),
        ("sf", "superb", {"text_normalisation": "s3prl", "slot_parser": "s3prl", "target_eos": True}),
        ("sf", "exact", {"text_normalisation": "project", "slot_parser": "tokens", "target_eos": False}),
    ],
)
def test_protocol_values_of_the_ctc_tasks(task, protocol, expected):
    config = compose_config([f"task={task}", f"protocol={protocol}"])
    resolved = {key: config.task[key] for key in expected}
    assert resolved == expected
    if task != "pr":
        superb = protocol == "superb"
        assert config.task.head.dropout_after_last is superb
        assert config.task.spec_augment.time_warp_window == 5
        assert config.task.spec_augment.widths == ("exclusive" if superb else "inclusive")
        assert config.task.spec_augment.positions == ("padded" if superb else "valid")
