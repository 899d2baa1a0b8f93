"""SV, IC, ML-SUPERB (ml_mono, ml_multi): metrics, heads, readers on the shipped mini corpus, tasks, 2-step runs."""

from __future__ import annotations

import json
import logging
import math
import shutil
from collections import Counter
from pathlib import Path

import editdistance
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from sklearn.metrics import roc_curve

from downstream import reporting
from downstream.data.corpus import DataLayoutError
from downstream.data.fluent_commands import read_fluent_commands
from downstream.data.ml_superb import normalize_transcript, read_ml_superb
from downstream.data.voxceleb1 import read_trials, read_voxceleb1_sv
from downstream.heads import TransformerCTCHead, XVectorHead
from downstream.metrics.verification import detection_rates, equal_error_rate, minimum_detection_cost
from downstream.tasks.base import accumulate_statistics
from downstream.tasks.ic import IntentClassification
from downstream.tasks.ml_superb import UNKNOWN, MonolingualSpeechRecognition, MultilingualSpeechRecognition
from downstream.tasks.sv import SpeakerVerification
from downstream.training.runner import run_experiment
from tests.helpers import (
    MINI_SUPERB,
    TINY_UPSTREAM,
    best_dev_record,
    read_curve,
    write_small_trials,
    write_superb_run,
)

VOXCELEB = MINI_SUPERB / "VoxCeleb1"
FLUENT = MINI_SUPERB / "FluentSpeechCommands"
ML_SUPERB = MINI_SUPERB / "ML-SUPERB"


def numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------- EER and minDCF


def sklearn_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Independent EER: where 1 - TPR = FPR on scikit-learn's ROC curve, by root finding (percent)."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return 100.0 * brentq(lambda x: 1.0 - x - np.interp(x, fpr, tpr), 0.0, 1.0, xtol=1e-12)


@pytest.mark.parametrize(("trials", "rounding"), [(10, None), (257, None), (2000, None), (500, 1)])
def test_equal_error_rate_matches_sklearn_roc_curve_on_random_scores(trials, rounding):
    rng = np.random.default_rng(trials)
    for _ in range(5):
        labels = rng.integers(0, 2, trials)
        labels[:2] = (0, 1)
        scores = rng.normal(size=trials) + rng.uniform(0, 2) * labels
        if rounding is not None:  # many tied scores
            scores = scores.round(rounding)
        assert equal_error_rate(scores, labels) == pytest.approx(sklearn_eer(scores, labels), abs=1e-7)


def test_equal_error_rate_extremes_and_detection_rates():
    labels = np.array([1, 1, 0, 0, 0])
    assert equal_error_rate(np.array([0.9, 0.8, 0.1, 0.2, 0.3]), labels) == 0.0
    assert equal_error_rate(np.array([0.1, 0.2, 0.9, 0.8, 0.7]), labels) == 100.0
    # tied scores move together: accept nothing, then both 0.5s, then the rest
    false_alarm, miss = detection_rates(np.array([0.5, 0.5, 0.1]), np.array([1, 0, 0]))
    np.testing.assert_allclose(false_alarm, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(miss, [1.0, 0.0, 0.0])


def test_minimum_detection_cost_matches_brute_force():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) + 1.5 * labels
    for p_target, c_miss, c_fa in ((0.01, 1.0, 1.0), (0.05, 1.0, 1.0), (0.3, 2.0, 0.5)):
        costs = []
        for threshold in [np.inf, *scores]:
            p_miss = np.mean(scores[labels == 1] < threshold)
            p_fa = np.mean(scores[labels == 0] >= threshold)
            costs.append(c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
        expected = min(costs) / min(c_miss * p_target, c_fa * (1 - p_target))
        assert minimum_detection_cost(scores, labels, p_target, c_miss, c_fa) == pytest.approx(expected)


def test_detection_metrics_reject_bad_trials():
    with pytest.raises(ValueError, match="1 target and 0 non-target"):
        equal_error_rate(np.array([0.3]), np.array([1]))
    with pytest.raises(ValueError, match="3 trial scores but 2 trial labels"):
        equal_error_rate(np.zeros(3), np.array([0, 1]))
    with pytest.raises(ValueError, match="p_target must be in"):
        minimum_detection_cost(np.array([0.1, 0.2]), np.array([0, 1]), p_target=1.0)


def test_accumulate_statistics_sums_numbers_and_concatenates_lists():
    totals: dict = {}
    accumulate_statistics(totals, {"edits": 3, "units": 10, "records": [("a", 1)]})
    accumulate_statistics(totals, {"edits": 2, "units": 5, "records": [("b", 2), ("c", 3)]})
    assert totals == {"edits": 5, "units": 15, "records": [("a", 1), ("b", 2), ("c", 3)]}
    with pytest.raises(TypeError, match="'records' is a list in one batch and a number"):
        accumulate_statistics(totals, {"records": 1})


# ---------------------------------------------------------------- heads


def test_xvector_head_parameters_outputs_and_padding():
    torch.manual_seed(0)
    head = XVectorHead(input_size=12, num_outputs=5, hidden_size=16, stats_size=24)
    features, lengths = torch.randn(3, 40, 12), torch.tensor([40, 23, 9])  # 9 < the 15-frame receptive field
    cosines = head.train()(features, lengths)
    assert cosines.shape == (3, 5) and cosines.abs().max() <= 1.0 + 1e-6
    head.eval()
    embeddings = head(features, lengths)
    assert embeddings.shape == (3, 16) and (embeddings >= 0).all()  # ReLU embedding
    for b, length in enumerate(lengths.tolist()):  # padding never reaches an utterance's embedding
        alone = head(features[b : b + 1, :length], lengths[b : b + 1])
        torch.testing.assert_close(embeddings[b : b + 1], alone, rtol=1e-5, atol=1e-5)
    wide = XVectorHead(input_size=12, num_outputs=5, hidden_size=16, stats_size=24, extra_params=5_000)
    assert numel(wide) >= numel(head) + 5_000
    assert numel(XVectorHead(12, 5, hidden_size=wide.hidden_size - 1, stats_size=24)) < numel(head) + 5_000


def test_xvector_statistics_pooling_matches_a_direct_computation():
    torch.manual_seed(1)
    head = XVectorHead(input_size=6, num_outputs=3, hidden_size=8, stats_size=10).eval()
    features = torch.randn(1, 30, 6)
    frames = head.project(features).transpose(1, 2)
    for layer in head.tdnn:
        frames = torch.relu(layer(frames))
    assert frames.shape[-1] == 30 - XVectorHead.FRAMES_CONSUMED
    pooled = torch.cat([frames.mean(dim=-1), torch.sqrt(frames.var(dim=-1) + 1e-6)], dim=-1)
    expected = torch.relu(head.embedding(pooled))
    torch.testing.assert_close(head(features, torch.tensor([30])), expected)


def test_transformer_ctc_head_parameters_padding_and_sizes():
    torch.manual_seed(0)
    head = TransformerCTCHead(
        input_size=20, num_outputs=9, hidden_size=16, bottleneck_size=8, num_heads=4, ff_size=32
    )
    head.eval()
    features, lengths = torch.randn(2, 25, 20), torch.tensor([25, 11])
    logits = head(features, lengths)
    assert logits.shape == (2, 25, 9)
    alone = head(features[1:, :11], lengths[1:])
    torch.testing.assert_close(logits[1:, :11], alone, rtol=1e-5, atol=1e-5)
    wide = TransformerCTCHead(20, 9, hidden_size=16, num_heads=4, ff_size=32, extra_params=3_000)
    narrow = TransformerCTCHead(20, 9, hidden_size=16, num_heads=4, ff_size=32)
    assert numel(wide) >= numel(narrow) + 3_000
    assert (
        numel(TransformerCTCHead(20, 9, hidden_size=16, num_heads=4, ff_size=wide.ff_size - 1))
        < numel(narrow) + 3_000
    )
    with pytest.raises(
        ValueError, match=r"head.hidden_size \(30\) must be a multiple of head.num_heads \(8\)"
    ):
        TransformerCTCHead(20, 9, hidden_size=30)


# ---------------------------------------------------------------- readers on the shipped mini corpus


def test_sv_reader_holds_trial_speakers_out_of_training():
    test_trials, dev_trials = (
        read_trials(VOXCELEB / "veri_test.txt"),
        read_trials(VOXCELEB / "dev_trials.txt"),
    )
    for trials in (test_trials, dev_trials):
        assert len(trials) == 300 and sum(t.same_speaker for t in trials) == 150
        assert all(t.same_speaker == (t.enrollment.split("/")[0] == t.test.split("/")[0]) for t in trials), (
            "the label says whether both utterances have one speaker"
        )
    splits = {
        split: read_voxceleb1_sv(VOXCELEB, split, "veri_test.txt", "dev_trials.txt")
        for split in ("train", "dev", "test")
    }
    speakers = {split: {utt.label for utt in utterances} for split, utterances in splits.items()}
    assert [len(speakers[s]) for s in ("train", "dev", "test")] == [16, 4, 4]
    assert len(splits["train"]) == 16 * 14  # every utterance of the training speakers
    assert (
        not speakers["train"] & (speakers["dev"] | speakers["test"])
        and not speakers["dev"] & speakers["test"]
    )
    for split, trials in (
        ("test", test_trials),
        ("dev", dev_trials),
    ):  # exactly the utterances the trials name
        assert [utt.id for utt in splits[split]] == sorted(
            {i for t in trials for i in (t.enrollment, t.test)}
        )
    assert all(utt.id.startswith(utt.label + "/") and utt.path.suffix == ".flac" for utt in splits["train"])


def test_sv_reader_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="VoxCeleb1 root .* does not exist"):
        read_voxceleb1_sv(tmp_path / "missing", "test", "veri_test.txt", "dev_trials.txt")
    with pytest.raises(DataLayoutError, match="VoxCeleb1 root .* does not exist"):  # not its dev list first
        SpeakerVerification(str(tmp_path / "missing"))
    bad = tmp_path / "trials.txt"
    bad.write_text("1 id10001/a/00001.wav\n")
    with pytest.raises(DataLayoutError, match="line 1 is not"):
        read_trials(bad)
    bad.write_text("1 id10001/a/00001.wav id10001/a/00002.wav\n")
    with pytest.raises(DataLayoutError, match="needs target .* and non-target"):
        read_trials(bad)
    with pytest.raises(DataLayoutError, match="VoxCeleb1 trial list .* does not exist"):
        read_voxceleb1_sv(VOXCELEB, "dev", "veri_test.txt", "no_such_list.txt")


def test_fluent_commands_reader_counts_intents_and_speakers():
    splits = {split: read_fluent_commands(FLUENT, split) for split in ("train", "dev", "test")}
    assert [len(splits[s]) for s in ("train", "dev", "test")] == [60, 24, 24]
    speakers = {split: {utt.label for utt in utterances} for split, utterances in splits.items()}
    assert [len(speakers[s]) for s in ("train", "dev", "test")] == [5, 2, 2]
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    intents = Counter(utt.intent for utt in splits["train"])
    assert len(intents) == 12 and set(intents.values()) == {5}  # every speaker says every intent once
    assert ("change language", "Korean", "none") in intents and ("activate", "lights", "kitchen") in intents
    first = splits["train"][0]
    assert first.path.is_file() and first.id.startswith("wavs/speakers/" + first.label + "/") and first.text


def test_fluent_commands_reader_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="Fluent Speech Commands root .* does not exist"):
        read_fluent_commands(tmp_path / "missing", "train")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "valid_data.csv").write_text(
        ",path,speakerId,transcription,action,object\n0,a.wav,s,t,x,y\n"
    )
    with pytest.raises(DataLayoutError, match=r"lacks the column\(s\) \['location'\]"):
        read_fluent_commands(tmp_path, "dev")
    with pytest.raises(DataLayoutError, match="test_data.csv' does not exist"):
        read_fluent_commands(tmp_path, "test")


def test_ml_superb_reader_multilingual_and_monolingual_sets():
    count = {split: len(read_ml_superb(ML_SUPERB, split, "1h")) for split in ("train", "dev", "test")}
    # four sets of 20/5/5 and two small voxpopuli ones (eng3, deu2) of 4/2/3 (scripts/mini_superb/common.py)
    assert count == {"train": 4 * 20 + 2 * 4, "dev": 4 * 5 + 2 * 2, "test": 4 * 5 + 2 * 3}
    ten_minutes = read_ml_superb(ML_SUPERB, "train", "10min")
    hour = read_ml_superb(ML_SUPERB, "train", "1h")
    assert len(ten_minutes) == 4 * 6 + 2 * 2 and {u.id for u in ten_minutes} < {u.id for u in hour}
    assert Counter(u.label for u in hour) == {"eng": 24, "fra": 20, "deu": 24, "swa": 20}
    assert all(u.id.split("_")[1] == u.label and u.text for u in hour)
    # eng1 trains on mls/eng and tests on English in every dataset (mls and voxpopuli)
    mono = {
        split: read_ml_superb(ML_SUPERB, split, "1h", monolingual="eng1")
        for split in ("train", "dev", "test")
    }
    assert [len(mono[s]) for s in ("train", "dev", "test")] == [20, 5, 8]
    assert {u.id.split("_")[0] for u in mono["train"] + mono["dev"]} == {"mls"}
    assert {u.id.split("_")[0] for u in mono["test"]} == {"mls", "voxpopuli"}
    assert {u.label for u in read_ml_superb(ML_SUPERB, "test", "10min", monolingual="fra1")} == {"fra"}
    # deu2 trains on voxpopuli/deu; its test holds German of swc and voxpopuli
    deu2 = {split: read_ml_superb(ML_SUPERB, split, "1h", monolingual="deu2") for split in ("train", "test")}
    assert {u.id.split("_")[0] for u in deu2["train"]} == {"voxpopuli"} and len(deu2["train"]) == 4
    assert {u.id.split("_")[0] for u in deu2["test"]} == {"swc", "voxpopuli"}


def test_ml_superb_reader_errors_and_normalisation(tmp_path, caplog):
    with pytest.raises(DataLayoutError, match="ML-SUPERB root .* does not exist"):
        read_ml_superb(tmp_path / "missing", "train")
    with pytest.raises(ValueError, match="duration must be one of '10min', '1h', got '2h'"):
        read_ml_superb(ML_SUPERB, "train", "2h")
    with pytest.raises(ValueError, match=r"monolingual set \(task.language\) must be one of 'eng1'"):
        read_ml_superb(ML_SUPERB, "train", monolingual="klingon")
    with pytest.raises(DataLayoutError, match=r"no nchlt/eng/ folder \(monolingual set 'eng2'\)"):
        read_ml_superb(ML_SUPERB, "train", monolingual="eng2")
    shutil.copytree(ML_SUPERB / "swc", tmp_path / "swc")
    (tmp_path / "swc" / "deu" / "transcript_10min_dev.txt").unlink()
    with pytest.raises(DataLayoutError, match="transcript_10min_dev.txt' does not exist"):
        read_ml_superb(tmp_path, "dev")
    (tmp_path / "swc" / "deu" / "transcript_10min_dev.txt").write_text("swc_deu_000999 1.0\n")
    with caplog.at_level(logging.WARNING), pytest.raises(DataLayoutError, match="listed but not found"):
        read_ml_superb(tmp_path, "dev")
    assert (
        "transcript_10min_dev.txt' line 1: the transcript of utterance swc_deu_000999 is empty" in caplog.text
    )
    assert normalize_transcript("Déjà  vu, [noise] l'été!") == "DÉJÀ VU LÉTÉ"
    assert normalize_transcript("a [b] c", drop_bracketed=False) == "A B C"


# ---------------------------------------------------------------- tasks


def test_intent_classification_loss_and_metrics():
    task = IntentClassification(str(FLUENT))
    values = task.slot_values()
    assert [len(v) for v in values] == [6, 6, 4] and task.num_outputs == 16
    assert values[2] == ["bedroom", "kitchen", "none", "washroom"]
    utterance = task.utterances("dev")[0]
    target = task._targets["dev"][utterance.id]
    assert tuple(values[slot][target[slot]] for slot in range(3)) == utterance.intent

    torch.manual_seed(0)
    logits = torch.randn(3, 16)
    targets = [(0, 1, 2), (5, 0, 3), (2, 2, 0)]
    expected = (
        F.cross_entropy(logits[:, :6], torch.tensor([0, 5, 2]))
        + F.cross_entropy(logits[:, 6:12], torch.tensor([1, 0, 2]))
        + F.cross_entropy(logits[:, 12:], torch.tensor([2, 3, 0]))
    )
    batch = {"targets": targets}
    torch.testing.assert_close(task.loss(logits, torch.ones(3), batch), expected)
    # utterance 0 all right, utterance 1 wrong object only, utterance 2 all wrong
    crafted = torch.full((3, 16), -5.0)
    for row, (action, obj, location) in enumerate([(0, 1, 2), (5, 3, 3), (1, 0, 1)]):
        crafted[row, [action, 6 + obj, 12 + location]] = 5.0
    statistics = task.eval_statistics(crafted, torch.ones(3), batch)
    metrics = task.metrics(statistics)
    assert metrics["acc"] == pytest.approx(100 / 3) and metrics["action_acc"] == pytest.approx(200 / 3)
    assert metrics["object_acc"] == pytest.approx(100 / 3) and metrics["location_acc"] == pytest.approx(
        200 / 3
    )
    assert set(metrics) == {"acc", "action_acc", "object_acc", "location_acc"}  # what results.json records


def test_speaker_verification_am_softmax_and_trial_scoring(tmp_path):
    dev_list, test_list = write_small_trials(tmp_path)
    task = SpeakerVerification(
        str(VOXCELEB),
        test_trials=str(test_list),
        dev_trials=str(dev_list),
        am_softmax_scale=30.0,
        am_softmax_margin=0.4,
    )
    assert task.num_outputs == 24 - len({u.label for s in ("dev", "test") for u in task.utterances(s)})
    # AM-softmax, written out as -log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{c != y} e^{s cos_c}))
    cosines = torch.rand(4, 5) * 2 - 1
    targets = [0, 3, 3, 1]
    expected = 0.0
    for row, target in enumerate(targets):
        numerator = 30.0 * (cosines[row, target] - 0.4)
        others = torch.cat([cosines[row, :target], cosines[row, target + 1 :]]) * 30.0
        expected += -(numerator - torch.logsumexp(torch.cat([numerator.view(1), others]), dim=0)) / len(
            targets
        )
    torch.testing.assert_close(task.loss(cosines, torch.ones(4), {"targets": targets}), expected)

    # scoring: cosine similarity of embeddings on the split's trials, EER from the metric function
    trials = task.trials("test")
    ids = sorted({i for t in trials for i in (t.enrollment, t.test)})
    rng = np.random.default_rng(0)
    embeddings = {utterance_id: rng.normal(size=6).astype(np.float32) for utterance_id in ids}
    records = [("test", utterance_id, embedding) for utterance_id, embedding in embeddings.items()]
    metrics = task.metrics({"embeddings": records})
    scores = np.array(
        [
            float(np.dot(embeddings[t.enrollment], embeddings[t.test]))
            / float(np.linalg.norm(embeddings[t.enrollment]) * np.linalg.norm(embeddings[t.test]))
            for t in trials
        ]
    )
    labels = np.array([t.same_speaker for t in trials], dtype=int)
    assert metrics["eer"] == pytest.approx(sklearn_eer(scores, labels), abs=1e-6)
    assert 0.0 <= metrics["min_dcf"] <= 1.0
    with pytest.raises(ValueError, match="only 0 of the 6 test trials have both utterances evaluated"):
        task.metrics({"embeddings": records[:1]})


def test_speaker_verification_rejects_bad_settings():
    with pytest.raises(ValueError, match="task.am_softmax_margin must be in"):
        SpeakerVerification(str(VOXCELEB), am_softmax_margin=1.5)


def decodes_to(task, sequence: list[str], frames: int = 40) -> torch.Tensor:
    """Logits [1, frames, V] whose greedy CTC decoding is ``sequence`` (token, blank, token, blank, ...)."""
    logits = torch.full((1, frames, task.num_outputs), -10.0)
    logits[0, :, 0] = 10.0  # blank everywhere ...
    for position, token in enumerate(sequence):
        logits[0, 2 * position, 0] = -10.0
        logits[0, 2 * position, task.vocabulary.index(token)] = 10.0
    return logits


def test_ml_superb_vocabulary_unknown_characters_lid_and_cer():
    task = MultilingualSpeechRecognition(str(ML_SUPERB), duration="10min")
    train_characters = {
        c for u in task.utterances("train") for c in normalize_transcript(u.text).replace(" ", "")
    }
    assert set(task.vocabulary) == {
        "<blank>",
        "|",
        UNKNOWN,
        *train_characters,
        "[deu]",
        "[eng]",
        "[fra]",
        "[swa]",
    }
    assert "Ä" in train_characters or "Ü" in train_characters or "É" in train_characters  # Unicode survives
    utterance = task.utterances("dev")[0]
    tokens = task.decode(task._targets["dev"][utterance.id])
    assert tokens[0] == f"[{utterance.label}]"
    expected = [
        c if c in train_characters or c == " " else UNKNOWN for c in normalize_transcript(utterance.text)
    ]
    assert tokens[1:] == ["|" if c == " " else c for c in expected]

    reference = ["[fra]", "L", "E", "|", "C", "H", "A", "T"]
    batch = {"targets": [[task.vocabulary.index(t) for t in reference]] * 2}
    hypotheses = [["[deu]", "L", "E", "|", "C", "A", "T"], ["L", "A", "[fra]", "|", "C", "H", "A", "T"]]
    logits = torch.cat([decodes_to(task, hypothesis) for hypothesis in hypotheses])
    statistics = task.eval_statistics(logits, torch.tensor([40, 40]), batch)
    metrics = task.metrics(statistics)
    edits = sum(editdistance.eval(reference[1:], [t for t in h if not t.startswith("[")]) for h in hypotheses)
    assert metrics["cer"] == pytest.approx(100.0 * edits / 14)
    assert metrics["lid_acc"] == 50.0  # the first language token anywhere in the hypothesis counts

    plain = MultilingualSpeechRecognition(str(ML_SUPERB), lid=False)
    assert not any(token.startswith("[") for token in plain.vocabulary)
    mono = MonolingualSpeechRecognition(str(ML_SUPERB), language="deu1")
    assert {u.label for s in ("train", "dev", "test") for u in mono.utterances(s)} == {"deu"}
    with pytest.raises(ValueError, match=r"\(task.language\) must be one of"):
        MonolingualSpeechRecognition(str(ML_SUPERB), language="de")


# ---------------------------------------------------------------- the table's new columns


def write_results(
    run_dir: Path, task: str, metric: str, higher: bool, test: dict, overrides: list[str]
) -> None:
    write_superb_run(run_dir, task, metric, higher, test, tuple(overrides))


def test_table_averages_mono_languages_and_gives_lid_its_own_column(tmp_path):
    sweep = tmp_path / "multirun" / "table2"
    write_results(sweep / "a", "ml_mono", "cer", False, {"cer": 30.0}, ["task.language=eng1"])
    write_results(sweep / "b", "ml_mono", "cer", False, {"cer": 40.0}, ["task.language=fra1"])
    write_results(sweep / "c", "ml_multi", "cer", False, {"cer": 20.0, "lid_acc": 90.0}, [])
    write_results(sweep / "d", "sv", "eer", False, {"eer": 6.0, "min_dcf": 0.4}, [])
    table = reporting.aggregate(reporting.collect_runs([sweep]))
    assert [(c.task, c.metric) for c in table.columns] == [
        ("sv", "eer"),
        ("ml_mono", "cer"),
        ("ml_multi", "cer"),
        ("lid", "lid_acc"),
    ]
    assert [c.title for c in table.columns][-1] == "LID acc" and len(table.rows) == 1
    cells = {task: table.cells[(table.rows[0], task)] for task in ("sv", "ml_mono", "ml_multi", "lid")}
    assert cells["ml_mono"].values == (30.0, 40.0)  # one cell over the language sets
    assert cells["lid"].values == (90.0,) and cells["ml_multi"].values == (20.0,)
    published = {task: cell.reference.value for task, cell in cells.items()}
    assert published == {
        "sv": 5.11,
        "ml_mono": 35.1,
        "ml_multi": 24.4,
        "lid": 84.6,
    }  # HuBERT Base, weighted sum
    assert "LID acc" in reporting.render(table)


# ---------------------------------------------------------------- two steps of every new task

FAST = [
    "trainer.max_steps=2",
    "trainer.eval_every=1",  # two dev evaluations: the kept model is a choice
    "trainer.batch_size=4",
    "trainer.log_every=1",
    *TINY_UPSTREAM,
]
TASK_OVERRIDES = {
    "sv": ["task.head.hidden_size=16", "task.head.stats_size=16"],
    "ic": ["trainer.limit_eval_batches=2"],
    "ml_mono": [
        "trainer.limit_eval_batches=2",
        "task.head.hidden_size=16",
        "task.head.num_heads=2",
        "task.head.ff_size=32",
    ],
    "ml_multi": [
        "trainer.limit_eval_batches=2",
        "task.head.hidden_size=16",
        "task.head.num_heads=2",
        "task.head.ff_size=32",
        "task.duration=10min",
    ],
}
METRICS = {
    "sv": {"eer", "min_dcf"},
    "ic": {"acc", "action_acc", "object_acc", "location_acc"},
    "ml_mono": {
        "cer",
        "loss",
    },  # loss: ESPnet's validation loss, which ranks checkpoints under protocol=superb
    "ml_multi": {
        "cer",
        "loss",
        "lid_acc",
        "cer_normal",
        "lid_acc_normal",
    },  # the mini corpus has no few-shot language
}


@pytest.mark.parametrize(
    "task",
    [pytest.param(task, marks=[pytest.mark.slow] if task == "ic" else []) for task in sorted(TASK_OVERRIDES)],
)
def test_two_step_run_of_every_new_task(make_config, tmp_path, task):
    overrides = [f"task={task}", *FAST, *TASK_OVERRIDES[task]]
    if task == "sv":
        dev_list, test_list = write_small_trials(tmp_path)
        overrides += [f"task.dev_trials={dev_list}", f"task.test_trials={test_list}"]
    run_dir = tmp_path / "run"
    cfg = make_config(overrides, run_dir=run_dir)
    results = run_experiment(cfg, run_dir, overrides=overrides)
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert results["task"] == task
    assert results["metric"] == {"sv": "eer", "ic": "acc"}.get(task, "cer")
    for split in ("dev", "test"):
        assert set(results[split]) == METRICS[task]
        assert all(math.isfinite(value) and value >= 0 for value in results[split].values())
    if task == "sv":
        assert results["test"]["eer"] <= 100 and results["dev"]["min_dcf"] <= 1
    curve = read_curve(run_dir)
    assert [r["step"] for r in curve if r["split"] == "train"] == [1, 2]
    if task.startswith("ml_"):  # protocol=superb: ESPnet's average of the best checkpoints by dev loss
        assert results["best_step"] == best_dev_record(curve, "loss", False)["step"]
        averaged = results["averaged_checkpoints"]  # both evaluations (fewer than 5), the best first
        assert averaged["by"] == "loss" and averaged["steps"][0] == results["best_step"]
        assert sorted(averaged["steps"]) == [1, 2]
    else:
        best = best_dev_record(curve, results["metric"], results["higher_is_better"])
        assert results["best_step"] == best["step"]
        assert results["dev"][results["metric"]] == pytest.approx(best[results["metric"]])
