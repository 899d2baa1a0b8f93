"""Speaker diarization (SD) and query-by-example search (QbE): readers, layout errors and metrics against
hand-worked values and independent implementations (pyannote.metrics for DER, dtw-python for DTW)."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from dtw import dtw
from scipy.spatial import distance as scipy_distance

from downstream import reporting
from downstream.data.corpus import DataLayoutError
from downstream.data.diarization import SpeakerTurn, read_diarization, read_kaldi_diarization
from downstream.data.quesst14 import read_quesst14
from downstream.metrics.diarization import (
    DiarizationErrors,
    activity_to_turns,
    diarization_errors,
    frame_targets,
    permutation_invariant_bce,
    smooth_activity,
)
from downstream.metrics.qbe import (
    actual_term_weighted_value,
    cosine_exp_distance,
    effective_prior,
    maximum_term_weighted_value,
    minimum_normalized_cross_entropy,
    normalized_cross_entropy,
    pool_adjacent_violators,
    qbe_scores,
    subsequence_dtw_costs,
    znorm_per_query,
)
from tests.helpers import TINY_UPSTREAM, run_downstream_cli, write_superb_run

MINI = Path(__file__).resolve().parent.parent / "data" / "mini_superb"
DIARIZATION = MINI / "Diarization"
QUESST = MINI / "quesst14Database"


@pytest.fixture(autouse=True)
def manifest_cache(tmp_path_factory, monkeypatch) -> None:
    monkeypatch.setenv("SSL_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


# -- SD reader ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "count"), [("train", 40), ("dev", 8), ("test", 8)])
def test_diarization_mini_splits(split, count):
    recordings = read_diarization(DIARIZATION, split)
    assert len(recordings) == count
    for recording in recordings:
        assert len(recording.speakers) == 2
        assert recording.num_samples > 0
        # the mini corpus's rttm (scoring reference) and segments (training targets) hold the same turns
        assert [(t.speaker, t.start) for t in recording.reference] == [
            (t.speaker, t.start) for t in recording.turns
        ]
        assert np.allclose([t.end for t in recording.reference], [t.end for t in recording.turns])
        assert max(t.end for t in recording.turns) <= recording.seconds
    speakers = {
        split: {s for r in read_diarization(DIARIZATION, split) for s in r.speakers}
        for split in ("dev", "test")
    }
    assert not speakers["dev"] & speakers["test"]


def copy_kaldi_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dev"
    shutil.copytree(DIARIZATION / "dev", folder)
    return folder


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_diarization_layout_errors(tmp_path):
    with pytest.raises(DataLayoutError, match="diarization data folder .*does not exist"):
        read_kaldi_diarization(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split must be one of"):
        read_diarization(DIARIZATION, "eval")

    folder = copy_kaldi_folder(tmp_path)
    first_segment = (folder / "segments").read_text().splitlines()[0]
    utterance, recording, start, end = first_segment.split()

    (folder / "utt2spk").rename(folder / "utt2spk.bak")
    with pytest.raises(DataLayoutError, match="utt2spk file '.*utt2spk' does not exist"):
        read_kaldi_diarization(folder)
    (folder / "utt2spk.bak").rename(folder / "utt2spk")

    rewrite(folder / "segments", first_segment, f"{utterance} {recording} {start}")
    with pytest.raises(
        DataLayoutError, match=r"segments' line 1 is not '<utterance> <recording> <start s> <end s>'"
    ):
        read_kaldi_diarization(folder)
    rewrite(folder / "segments", f"{utterance} {recording} {start}", f"{utterance} nosuchmix {start} {end}")
    with pytest.raises(DataLayoutError, match="in recording 'nosuchmix', which '.*wav.scp' does not list"):
        read_kaldi_diarization(folder)
    rewrite(
        folder / "segments", f"{utterance} nosuchmix {start} {end}", f"{utterance} {recording} {end} {start}"
    )
    with pytest.raises(DataLayoutError, match=f"utterance '{utterance}' ends .* before it starts"):
        read_kaldi_diarization(folder)
    rewrite(
        folder / "segments",
        f"{utterance} {recording} {end} {start}",
        f"{utterance} {recording} {start} 99.00",
    )
    with pytest.raises(DataLayoutError, match="ending at 99.0 s, after the audio ends"):
        read_kaldi_diarization(folder)
    rewrite(folder / "segments", f"{utterance} {recording} {start} 99.00", first_segment)

    rewrite(folder / "utt2spk", f"{utterance} ", "someone_else ")
    with pytest.raises(DataLayoutError, match=f"utterance '{utterance}' has no speaker in '.*utt2spk'"):
        read_kaldi_diarization(folder)
    shutil.copy(DIARIZATION / "dev" / "utt2spk", folder / "utt2spk")

    rewrite(folder / "wav.scp", f"{recording} wav/{recording}.flac", f"{recording} sox in.wav -t wav - |")
    with pytest.raises(DataLayoutError, match="as a command or stdin"):
        read_kaldi_diarization(folder)
    rewrite(folder / "wav.scp", f"{recording} sox in.wav -t wav - |", f"{recording} wav/missing.flac")
    with pytest.raises(DataLayoutError, match=r"1 audio file\(s\) listed but not found:\n  .*missing.flac"):
        read_kaldi_diarization(folder)
    shutil.copy(DIARIZATION / "dev" / "wav.scp", folder / "wav.scp")

    duration = next(
        line for line in (folder / "reco2dur").read_text().splitlines() if line.startswith(recording)
    )
    rewrite(folder / "reco2dur", duration, f"{recording} 1.000")
    with pytest.raises(DataLayoutError, match=f"reco2dur' gives recording '{recording}' 1.0 s but"):
        read_kaldi_diarization(folder)
    (folder / "reco2dur").unlink()  # optional: durations then come from the audio
    assert len(read_kaldi_diarization(folder)) == 8

    rttm_line = (folder / "rttm").read_text().splitlines()[0]
    rewrite(folder / "rttm", rttm_line, rttm_line.replace(rttm_line.split()[1], "other_mix"))
    with pytest.raises(DataLayoutError, match=r"RTTM file '.*rttm' names recordings not in"):
        read_kaldi_diarization(folder)


# -- QbE reader ---------------------------------------------------------------------------------------


def test_quesst_mini_english_protocol():
    dev = read_quesst14(QUESST, "dev")
    test = read_quesst14(QUESST, "test")
    assert len(dev.queries) == len(test.queries) == 8
    assert {q.id for q in dev.queries}.isdisjoint({q.id for q in test.queries})
    assert dev.documents == test.documents and len(dev.documents) == 64  # one document set, Albanian left out
    assert {d.label for d in dev.documents} == {"nnenglish"}
    assert len(dev.targets) == len(test.targets) == 24
    assert {q for q, _ in dev.targets} == {q.id for q in dev.queries}  # every query occurs (3 times)
    everything = read_quesst14(QUESST, "dev", language=None)
    assert len(everything.documents) == 70 and len(everything.queries) == 9
    assert {q.label for q in everything.queries} == {"nnenglish", "albanian"}


def test_quesst_layout_errors(tmp_path):
    root = tmp_path / "quesst14Database"
    shutil.copytree(QUESST, root)
    with pytest.raises(ValueError, match="split must be one of 'dev', 'test'"):
        read_quesst14(root, "train")
    key = root / "scoring" / "language_key_dev.lst"
    first = key.read_text().splitlines()[0]
    rewrite(key, first, first.split()[0])
    with pytest.raises(
        DataLayoutError, match=r"language_key_dev.lst' line 1 is not '<db folder>/<path> <language>'"
    ):
        read_quesst14(root, "dev")
    rewrite(key, first.split()[0], first.replace("nnenglish", "basque"))
    assert len(read_quesst14(root, "dev").queries) == 7  # that query is no longer English
    with pytest.raises(
        DataLayoutError, match="language_key_utterances.lst' lists no document of language 'basque'"
    ):
        read_quesst14(root, "dev", language="basque")
    shutil.copy(QUESST / "scoring" / "language_key_dev.lst", key)

    rttm = root / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm"
    lexeme = rttm.read_text().splitlines()[0]
    rewrite(rttm, lexeme, lexeme.replace("quesst14_dev_", "quesst14_eval_"))
    with pytest.raises(DataLayoutError, match=r"ground truth '.*quesst14_dev.rttm' names 'quesst14_eval_"):
        read_quesst14(root, "dev")
    rewrite(rttm, lexeme.replace("quesst14_dev_", "quesst14_eval_"), " ".join(lexeme.split()[:5]))
    with pytest.raises(DataLayoutError, match="line 1 is not 'LEXEME <document>"):
        read_quesst14(root, "dev")
    rttm.unlink()
    with pytest.raises(DataLayoutError, match="ground truth '.*quesst14_dev.rttm' does not exist"):
        read_quesst14(root, "dev")
    shutil.copy(QUESST / "scoring" / "groundtruth_quesst14_dev" / "quesst14_dev.rttm", rttm)
    next((root / "Audio").glob("*.flac")).unlink()
    with pytest.raises(
        DataLayoutError, match=r"QUESST 2014 documents: 1 audio file\(s\) listed but not found"
    ):
        read_quesst14(root, "dev", language=None)


# -- DER ------------------------------------------------------------------------------------------------


def turns(*spans: tuple[str, float, float]) -> list[SpeakerTurn]:
    return [SpeakerTurn(*span) for span in spans]


def test_der_hand_worked():
    reference = turns(("A", 0, 4), ("B", 3, 6))  # 7 s of speaker time, 1 s overlapped
    # Hypothesis 1 misses the overlap's second speaker: 1 s missed, no confusion (A->x, B->y).
    errors = diarization_errors(reference, turns(("x", 0, 3.5), ("y", 3.5, 6)))
    assert errors == DiarizationErrors(scored=7.0, missed=1.0, false_alarm=0.0, confusion=0.0)
    assert errors.der == pytest.approx(100 / 7)
    # The trivial one-speaker, all-speech answer: overlap missed, B's 2 s alone are confused with A.
    trivial = diarization_errors(reference, turns(("x", 0, 6)))
    assert (trivial.missed, trivial.confusion) == (1.0, 2.0)
    assert trivial.der == pytest.approx(300 / 7)
    # False alarm in silence, and corpus-level DER adds up seconds, not percentages.
    silence = diarization_errors(turns(("A", 0, 1)), turns(("x", 0, 1), ("y", 1, 3)))
    assert (silence.false_alarm, silence.scored) == (2.0, 1.0)
    assert (errors + silence).der == pytest.approx(100 * (1 + 2) / 8)


def random_turns(rng: np.random.Generator, names: list[str], per_speaker: int) -> list[SpeakerTurn]:
    result = []
    for name in names:
        clock = rng.uniform(0, 2)
        for _ in range(per_speaker):
            length = rng.uniform(0.1, 2)
            result.append(SpeakerTurn(name, round(clock, 2), round(clock + length, 2)))
            clock += length + rng.uniform(0.05, 2)
    return result


def test_der_matches_pyannote_metrics():
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(spans: list[SpeakerTurn]) -> Annotation:
        result = Annotation()
        for track, turn in enumerate(spans):
            result[Segment(turn.start, turn.end), track] = turn.speaker
        return result

    rng = np.random.default_rng(0)
    for trial in range(20):
        reference = random_turns(rng, ["A", "B"], 4)
        hypothesis = random_turns(rng, ["x", "y", "z"][: 1 + trial % 3], 3)
        metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pyannote warns that it approximates the evaluated extent
            expected = metric(annotation(reference), annotation(hypothesis), detailed=True)
        ours = diarization_errors(reference, hypothesis)
        assert ours.scored == pytest.approx(expected["total"])
        assert ours.missed == pytest.approx(expected["missed detection"])
        assert ours.false_alarm == pytest.approx(expected["false alarm"])
        assert ours.confusion == pytest.approx(expected["confusion"])
        assert ours.der == pytest.approx(100 * expected["diarization error rate"])


def test_frame_targets_and_turns_round_trip():
    shift = 0.02
    reference = turns(("b", 0.1, 0.5), ("a", 0.3, 0.9), ("b", 1.1, 1.3))
    targets = frame_targets(reference, ["a", "b"], num_frames=60, frame_shift=shift)
    assert targets.shape == (60, 2)
    assert np.flatnonzero(targets[:, 0]).tolist() == list(range(15, 45))  # 0.3 s .. 0.9 s
    assert np.flatnonzero(targets[:, 1]).tolist() == [*range(5, 25), *range(55, 60)]  # cut at 60 frames
    back = activity_to_turns(targets, shift, ["a", "b"])
    assert [(t.speaker, round(t.start, 6), round(t.end, 6)) for t in back] == [
        ("b", 0.1, 0.5),
        ("a", 0.3, 0.9),
        ("b", 1.1, 1.2),
    ]
    assert diarization_errors(reference[:2], back[:2]).der == pytest.approx(0.0)
    noisy = targets.copy()
    noisy[30, 0] = 0
    assert np.array_equal(smooth_activity(noisy, 3), targets)
    with pytest.raises(ValueError, match="odd number"):
        smooth_activity(noisy, 2)


def test_permutation_invariant_bce():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 2)
    targets = (torch.rand(3, 7, 2) > 0.5).float()
    lengths = torch.tensor([7, 5, 2])
    loss, permutation = permutation_invariant_bce(logits, targets, lengths)
    swapped_loss, swapped_permutation = permutation_invariant_bce(logits, targets.flip(-1), lengths)
    assert loss.item() == pytest.approx(swapped_loss.item())
    assert torch.equal(permutation, 1 - swapped_permutation)
    # independent computation: per recording, the better of the two column orders, over valid frames
    total = 0.0
    for b in range(3):
        n = int(lengths[b])
        costs = [
            torch.nn.functional.binary_cross_entropy_with_logits(
                logits[b, :n], targets[b, :n][:, list(order)], reduction="sum"
            ).item()
            / 2
            for order in itertools.permutations(range(2))
        ]
        total += min(costs)
    assert loss.item() == pytest.approx(total / 14)
    # padding frames do not count
    padded = logits.clone()
    padded[2, 2:] = 100.0
    assert permutation_invariant_bce(padded, targets, lengths)[0].item() == pytest.approx(loss.item())


# -- QbE scoring and metrics -------------------------------------------------------------------------------


def test_subsequence_dtw_hand_worked_and_against_dtw_python():
    # rows already min-max normalised; g = [1,0,1,1] -> [1,1,1,0] -> [2,2,1,1]; best end 1, over 3 rows
    distance = torch.tensor([[1.0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 1]], dtype=torch.float64)
    assert subsequence_dtw_costs(distance, [4]).tolist() == pytest.approx([1 / 3])

    rng = np.random.default_rng(0)
    query = torch.tensor(rng.normal(size=(6, 4)))
    documents = [torch.tensor(rng.normal(size=(length, 4))) for length in (1, 2, 3, 17, 40)]
    blocks = [cosine_exp_distance(query, document).double() for document in documents]
    costs = subsequence_dtw_costs(torch.cat(blocks, dim=1), [len(d) for d in documents])
    for block, cost in zip(blocks, costs, strict=True):
        block = block.numpy()
        low, high = block.min(1, keepdims=True), block.max(1, keepdims=True)
        normalised = (block - low) / np.clip(high - low, 1e-9, None)
        expected = dtw(x=normalised, step_pattern="asymmetric", open_begin=True, open_end=True)
        assert float(cost) == pytest.approx(expected.normalizedDistance, abs=1e-12)
    expected = np.expm1(scipy_distance.cdist(query.numpy(), documents[3].numpy(), "cosine"))
    assert np.allclose(cosine_exp_distance(query, documents[3]).numpy(), expected, atol=1e-5)


def test_qbe_scores_find_the_query_and_skip_short_ones():
    rng = np.random.default_rng(1)
    query = torch.tensor(rng.normal(size=(8, 6)), dtype=torch.float32)
    documents = [torch.tensor(rng.normal(size=(30, 6)), dtype=torch.float32) for _ in range(6)]
    documents[4][10:18] = query + 0.01 * torch.randn(8, 6)  # the query occurs in document 4
    scores, too_short = qbe_scores([query, query[:3]], documents, max_frames_per_block=70)  # several blocks
    assert too_short == 1
    assert int(np.argmax(scores[0])) == 4
    assert np.all(scores[1] == 0)  # too short: all equal, z-normalised to 0
    assert np.allclose(znorm_per_query(scores).mean(axis=1), 0)


def brute_force_twv(scores: np.ndarray, targets: np.ndarray, threshold: float, beta: float) -> float:
    terms = []
    for query_scores, query_targets in zip(scores, targets, strict=True):
        if not query_targets.any():
            continue
        accepted = query_scores >= threshold
        p_miss = 1 - (accepted & query_targets).sum() / query_targets.sum()
        p_fa = (accepted & ~query_targets).sum() / (~query_targets).sum()
        terms.append(p_miss + beta * p_fa)
    return 1 - float(np.mean(terms))


def test_mtwv_hand_worked_and_brute_force():
    beta = (1 / 100) * (1 - 0.0008) / 0.0008
    assert beta == pytest.approx(12.49)
    assert effective_prior() == pytest.approx(0.08 / (0.08 + 0.9992))
    targets = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]])  # query 3 never occurs: not scored
    scores = np.array([[3.0, 1, 0, -1], [0.5, 2, 1.5, -2], [9, 9, 9, 9]])
    result = maximum_term_weighted_value(scores, targets)
    assert (result.mtwv, result.threshold, result.queries_scored) == (pytest.approx(1.0), 1.5, 2)
    scores[1, 2] = 0.9  # now below query 1's false alarm at 1.0: best is accepting scores >= 2
    result = maximum_term_weighted_value(scores, targets)
    assert (result.mtwv, result.threshold) == (pytest.approx(0.75), 2.0)  # 1 - (0 + 0.5) / 2
    assert actual_term_weighted_value(scores, targets, threshold=2.0) == pytest.approx(0.5)  # only 3.0 > 2
    assert maximum_term_weighted_value(-scores, targets).mtwv == 0.0  # accepting nothing beats any threshold

    rng = np.random.default_rng(0)
    for _ in range(5):
        targets = rng.random((6, 30)) < 0.15
        scores = np.round(rng.normal(size=(6, 30)) + 2 * targets, 1)  # rounding makes ties
        result = maximum_term_weighted_value(scores, targets)
        candidates = [brute_force_twv(scores, targets, t, beta) for t in np.unique(scores)]
        assert result.mtwv == pytest.approx(max(0.0, *candidates))
        if result.mtwv > 0:
            assert brute_force_twv(scores, targets, result.threshold, beta) == pytest.approx(result.mtwv)


def quesst_scorer_mtwv(scores: dict, queries: list, documents: list, occurrences: set, prior: float) -> float:
    """MTWV as QUESST 2014's scorer defines it, written out here independently: trials = every query with an
    occurrence x every document; a trial missing from ``scores`` scores -10; TWV(t) = 1 - mean over queries
    of [P_miss + beta P_fa] with beta = (1 - prior) / prior (effective prior 0.0741289, the value
    score-TWV-Cnxe.sh passes to the scorer); MTWV = the maximum over thresholds (accepting nothing: 0)."""
    beta = (1 - prior) / prior
    queries = [q for q in queries if any((q, d) in occurrences for d in documents)]
    trial = {(q, d): scores.get((q, d), -10.0) for q in queries for d in documents}
    best = 0.0
    for threshold in sorted(set(trial.values())):
        total = 0.0
        for q in queries:
            true = [d for d in documents if (q, d) in occurrences]
            hits = sum(trial[(q, d)] >= threshold for d in true)
            false_alarms = sum(trial[(q, d)] >= threshold for d in documents if (q, d) not in occurrences)
            total += (1 - hits / len(true)) + beta * false_alarms / (len(documents) - len(true))
        best = max(best, 1 - total / len(queries))
    return best


def test_qbe_superb_mtwv_is_quesst_scorer_over_the_full_ground_truth():
    """protocol=superb: MTWV over every occurring query x every document of groundtruth_quesst14_<split>
    (all languages), trials not searched (non-English) scoring -10 and searched ones written with 4
    decimals as s3prl's stdlist.xml, against an independent implementation of the scorer's definition; the
    English-only figure is kept, labelled. A non-English query with occurrences (never searched) counts."""
    from dataclasses import replace

    from downstream.data.quesst14 import GroundTruth
    from downstream.tasks.qbe import QueryByExample

    superb = QueryByExample(str(QUESST), mtwv_trials="full_ground_truth")
    exact = QueryByExample(str(QUESST), mtwv_trials="searched")
    qbe_set = superb.qbe_set("dev")
    # the ground truth read independently from the files the scorer reads
    truth_dir = QUESST / "scoring" / "groundtruth_quesst14_dev"
    terms = re.findall(r'termid="([^"]+)"', (truth_dir / "quesst14_dev.tlist.xml").read_text())
    documents = [
        Path(n).stem
        for n in re.findall(r'audio_filename="([^"]+)"', (truth_dir / "quesst14.ecf.xml").read_text())
    ]
    occurrences = {
        (line.split()[5], line.split()[1])
        for line in (truth_dir / "quesst14_dev.rttm").read_text().splitlines()
    }
    assert set(documents) > {d.id for d in qbe_set.documents}  # the Albanian documents are trials too
    rng = np.random.default_rng(0)
    targets = np.array(
        [[(q.id, d.id) in qbe_set.targets for d in qbe_set.documents] for q in qbe_set.queries]
    )
    scores = rng.normal(size=targets.shape) + 2.5 * targets - 3.0  # the best threshold is below 0
    statistics = {"scores": scores, "targets": targets, "too_short_queries": 0, "set": qbe_set}
    got = superb.metrics(statistics)
    written = {
        (q.id, d.id): round(float(scores[i, j]), 4)
        for i, q in enumerate(qbe_set.queries)
        for j, d in enumerate(qbe_set.documents)
    }
    expected = quesst_scorer_mtwv(written, terms, documents, occurrences, 0.0741289)
    assert got["mtwv"] == got["mtwv_full_ground_truth"] == pytest.approx(expected, abs=1e-5)
    unrounded = {
        (q.id, d.id): float(scores[i, j])
        for i, q in enumerate(qbe_set.queries)
        for j, d in enumerate(qbe_set.documents)
    }
    searched_queries, searched_documents = [q.id for q in qbe_set.queries], [d.id for d in qbe_set.documents]
    english_only = quesst_scorer_mtwv(
        unrounded, searched_queries, searched_documents, set(qbe_set.targets), 0.0741289
    )
    assert got["mtwv_english_only"] == pytest.approx(english_only, abs=1e-5)
    assert got["mtwv_english_only"] != pytest.approx(got["mtwv_full_ground_truth"], abs=1e-3)
    assert exact.metrics(statistics)["mtwv"] == got["mtwv_english_only"]
    occurring = {q for q, _ in occurrences}
    assert got["trials_default_score"] == len(occurring) * len(documents) - 8 * 64  # the Albanian documents
    # the Albanian query occurs in Albanian documents and is never searched: at every threshold above -10 it
    # is missed, which lowers the MTWV; without its occurrences the scorer would drop it
    albanian_query = next(t for t in terms if t not in {q.id for q in qbe_set.queries})
    assert albanian_query in occurring
    fewer = {pair for pair in occurrences if pair[0] != albanian_query}
    truth = GroundTruth(tuple(q for q in terms if q != albanian_query), tuple(documents), frozenset(fewer))
    narrowed = superb.metrics({**statistics, "set": replace(qbe_set, truth=truth)})
    assert narrowed["mtwv"] == pytest.approx(
        quesst_scorer_mtwv(written, terms, documents, fewer, 0.0741289), abs=1e-5
    )
    assert narrowed["mtwv"] > got["mtwv"]


def test_cnxe_definition():
    prior = effective_prior()
    targets = np.array([[1, 0, 0], [0, 1, 0]])
    assert normalized_cross_entropy(np.zeros((2, 3)), targets) == pytest.approx(1.0)  # LLR 0: no information
    scores = np.array([[2.0, -1, 0.5], [-3, 1, -2]])
    logit = math.log(prior / (1 - prior))
    target_cost = np.mean([math.log2(1 + math.exp(-(s + logit))) for s in (2.0, 1.0)])
    nontarget_cost = np.mean([math.log2(1 + math.exp(s + logit)) for s in (-1, 0.5, -3, -2)])
    entropy = -(prior * math.log2(prior) + (1 - prior) * math.log2(1 - prior))
    expected = (prior * target_cost + (1 - prior) * nontarget_cost) / entropy
    assert normalized_cross_entropy(scores, targets) == pytest.approx(expected)
    # separable scores: a perfect calibration exists; minCnxe ignores monotone transforms of the scores
    assert minimum_normalized_cross_entropy(scores, targets) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    targets = rng.random((5, 40)) < 0.2
    scores = rng.normal(size=(5, 40)) + targets
    minimum = minimum_normalized_cross_entropy(scores, targets)
    assert 0 < minimum < 1
    assert minimum_normalized_cross_entropy(np.exp(scores), targets) == pytest.approx(minimum)
    assert minimum <= normalized_cross_entropy(scores, targets)
    assert minimum <= normalized_cross_entropy(scores - 3.0, targets)
    assert pool_adjacent_violators([1.0, 3, 2, 2, 5]).tolist() == pytest.approx([1, 7 / 3, 7 / 3, 7 / 3, 5])


# -- the generator ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_generator_only_option_rewrites_just_sd_and_qbe(tmp_path):
    from scripts import make_mini_superb

    make_mini_superb.main(["--out", str(tmp_path / "a"), "--tiny"])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for path in (tmp_path / "b" / "Diarization", tmp_path / "b" / "quesst14Database"):
        shutil.rmtree(path)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "b").rglob("*") if p.is_file()}
    make_mini_superb.main(["--out", str(tmp_path / "b"), "--tiny", "--only", "sd,qbe"])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    untouched = [p for p in before if p.name != "README.md"]
    assert untouched and all(p.stat().st_mtime_ns == before[p] for p in untouched)
    assert len(read_diarization(tmp_path / "b" / "Diarization", "train")) == 2
    assert len(read_quesst14(tmp_path / "b" / "quesst14Database", "dev").queries) == 2
    with pytest.raises(SystemExit, match="--only takes ks, sf, sd, qbe, got 'sd,asr'"):
        make_mini_superb.main(["--out", str(tmp_path / "b"), "--only", "sd,asr"])


# -- the tasks on the engine ----------------------------------------------------------------------------------


def test_lstm_frame_head_shapes_and_padding():
    from downstream.heads import LSTMFrameHead, count_parameters

    torch.manual_seed(0)
    head = LSTMFrameHead(input_size=6, num_outputs=2, hidden_size=16).eval()
    # s3prl's diarization model: LSTM(6, 16) and Linear(16, 2)
    assert count_parameters(head) == 4 * 16 * (6 + 16 + 2) + 16 * 2 + 2
    features, lengths = torch.randn(2, 9, 6), torch.tensor([9, 4])
    logits = head(features, lengths)
    assert logits.shape == (2, 9, 2)
    alone = head(features[1:, :4], lengths[1:])
    torch.testing.assert_close(logits[1:, :4], alone, rtol=1e-5, atol=1e-6)


def test_sd_task_targets_loss_and_der_of_a_perfect_output():
    from downstream.tasks.sd import SpeakerDiarization

    task = SpeakerDiarization(str(DIARIZATION))
    recording = task.utterances("dev")[0]
    frames = 200
    batch = {
        "targets": [recording],
        "wav_lengths": torch.tensor([recording.num_samples]),
        "indices": torch.tensor([0]),
    }
    lengths = torch.tensor([frames])
    targets = task.targets(batch, lengths, frames)
    shift = recording.num_samples / frames / 16000
    assert torch.equal(
        targets[0], torch.from_numpy(frame_targets(recording.turns, recording.speakers, frames, shift))
    )
    perfect = (targets * 2 - 1) * 20.0  # confident logits in the right columns
    statistics = task.eval_statistics(perfect.flip(-1), lengths, batch)  # column order does not matter
    assert task.metrics(statistics)["der"] < 2.0  # only the frame quantisation of the turn boundaries
    assert task.loss(perfect.flip(-1), lengths, batch).item() < 1e-6
    with pytest.raises(ValueError, match="would cut recordings away from their speaker turns"):
        SpeakerDiarization(str(DIARIZATION), max_seconds=5.0, on_too_long="crop")


def s3prl_frame_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """s3prl's diarization ACC of one recording, re-derived from calc_diarization_error and the PIT loss:
    the labels are permuted by the permutation of least BCE (mean over speakers, summed over frames), then
    correct = sum(label == (logit > 0)) / num_output and ACC = correct / num_frames; 0 without speech."""

    def bce(x, y):
        return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))

    permutations = list(itertools.permutations(range(labels.shape[1])))
    best = min(permutations, key=lambda p: bce(logits, labels[:, list(p)]).mean(axis=1).sum())
    label = labels[:, list(best)].astype(int)
    if label.sum() == 0:
        return 0.0
    correct = np.sum(label == (logits > 0).astype(int)) / labels.shape[1]
    return float(correct / labels.shape[0])


def test_sd_frame_accuracy_selects_the_checkpoint_under_superb(tmp_path):
    """protocol=superb: the dev metric that keeps the checkpoint is s3prl's frame accuracy (mean over
    recordings, dev batch size 1 in s3prl), and the engine keeps a checkpoint whose accuracy improves even
    when its DER is worse; protocol=exact keeps the best DER."""
    from types import SimpleNamespace

    from downstream.tasks.sd import SpeakerDiarization
    from downstream.training.branch import Branch

    task = SpeakerDiarization(str(DIARIZATION), select_metric="frame_accuracy")
    recordings = task.utterances("dev")[:3]
    frames = 120
    batch = {
        "targets": recordings,
        "wav_lengths": torch.tensor([r.num_samples for r in recordings]),
        "indices": torch.arange(3),
    }
    lengths = torch.tensor([frames, 90, 60])
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, frames, 2, generator=generator) * 3
    statistics = task.eval_statistics(logits, lengths, batch)
    targets = task.targets(batch, lengths, frames).numpy()
    expected = np.mean(
        [s3prl_frame_accuracy(logits[k, :n].numpy(), targets[k, :n]) for k, n in enumerate(lengths.tolist())]
    )
    assert task.metrics(statistics)["frame_accuracy"] == pytest.approx(100 * expected, abs=1e-9)
    assert (task.select_metric, task.select_higher_is_better) == ("frame_accuracy", True)
    exact = SpeakerDiarization(str(DIARIZATION), select_metric="der")
    assert (exact.select_metric, exact.select_higher_is_better) == ("der", False)
    saved = []
    branch = SimpleNamespace(
        best_metric=None,
        best_step=None,
        named_model_state=lambda task: {},
        best_checkpoints=None,
        best_model_path=tmp_path / "best.pt",
    )
    import downstream.training.branch as branch_module

    original = branch_module.save_best_model
    branch_module.save_best_model = lambda state, path, step: saved.append(step)
    try:
        Branch.keep_if_best(branch, {"frame_accuracy": 80.0, "der": 30.0}, task, 1)
        Branch.keep_if_best(branch, {"frame_accuracy": 85.0, "der": 25.0}, task, 2)  # better acc
        Branch.keep_if_best(branch, {"frame_accuracy": 85.0, "der": 10.0}, task, 3)  # equal acc: strict
        Branch.keep_if_best(branch, {"frame_accuracy": 70.0, "der": 50.0}, task, 4)  # worse acc
    finally:
        branch_module.save_best_model = original
    assert saved == [1, 2] and branch.best_step == 2


def test_sd_test_der_is_chosen_on_dev_and_superbs_is_the_lowest_test_der():
    """s3prl's score.sh grid (thresholds 0.3-0.7 x median 1, 11): test `der_superb` is the lowest test DER over
    the grid (SUPERB's number), test `der` the test DER at the setting of the lowest dev DER."""
    from scipy.signal import medfilt

    from downstream.tasks.sd import SpeakerDiarization, grid_key

    task = SpeakerDiarization(str(DIARIZATION))
    assert task.grid == [(t, m) for t in (0.3, 0.4, 0.5, 0.6, 0.7) for m in (1, 11)]
    recordings = task.utterances("dev")[:1]
    batch = {"targets": recordings, "wav_lengths": torch.tensor([recordings[0].num_samples])}
    during_training = task.metrics(task.eval_statistics(torch.randn(1, 50, 2), torch.tensor([50]), batch))
    assert [key for key in during_training if key.startswith("der_t") and key[5].isdigit()] == ["der_t0.5_m1"]
    task.final_evaluation = True  # what the trainer sets before scoring the best checkpoint
    split = {}
    for name in ("dev", "test"):
        recordings = task.utterances(name)[:2]
        frames = 150
        batch = {"targets": recordings, "wav_lengths": torch.tensor([r.num_samples for r in recordings])}
        lengths = torch.tensor([frames, frames])
        targets = task.targets(batch, lengths, frames)
        noisy = (targets * 2 - 1) * 1.5 + torch.randn(
            2, frames, 2, generator=torch.Generator().manual_seed(3)
        )
        metrics = task.metrics(task.eval_statistics(noisy, lengths, batch))
        # independent: threshold, then scipy's medfilt as make_rttm.py, turns, DER, for every setting
        for threshold, median in task.grid:
            total = DiarizationErrors()
            for k, recording in enumerate(recordings):
                active = (torch.sigmoid(noisy[k]).numpy() > threshold).astype(int)
                if median > 1:
                    active = medfilt(active, (median, 1))
                turns = activity_to_turns(active, recording.num_samples / frames / 16000)
                total = total + diarization_errors(recording.reference, turns)
            assert metrics[grid_key(threshold, median)] == pytest.approx(total.der, abs=1e-9)
        split[name] = metrics
    finished = task.finish_test(split["dev"], split["test"])
    grid = [grid_key(t, m) for t, m in task.grid]
    assert finished["der_superb"] == min(split["test"][key] for key in grid)
    dev_choice = min(task.grid, key=lambda setting: split["dev"][grid_key(*setting)])
    assert finished["der"] == split["test"][grid_key(*dev_choice)] >= finished["der_superb"]
    assert (finished["der_threshold"], finished["der_median"]) == (dev_choice[0], dev_choice[1])
    crafted = task.finish_test(
        {"der_threshold": 0.3, "der_median": 1.0},
        {
            **{key: 50.0 for key in grid},
            "der_t0.3_m1": 40.0,
            "der_t0.7_m11": 20.0,
            "der": 20.0,
            "der_threshold": 0.7,
            "der_median": 11.0,
            "missed": 5.0,
            "false_alarm": 5.0,
            "confusion": 10.0,
        },
    )
    assert (crafted["der"], crafted["der_superb"], crafted["der_superb_threshold"]) == (40.0, 20.0, 0.7)
    assert crafted["confusion_superb"] == 10.0 and "confusion" not in crafted


def trivial_der(split: str) -> float:
    """The all-speech, one-speaker answer: DER of one speaker talking through every recording."""
    total = DiarizationErrors()
    for recording in read_diarization(DIARIZATION, split):
        total = total + diarization_errors(recording.reference, [SpeakerTurn("x", 0.0, recording.seconds)])
    return total.der


@pytest.mark.slow
def test_sd_run_learns_on_the_mini_corpus(tmp_path):
    # the demo schedule's learning rate and batch, 40 updates and a 64-unit LSTM so that it fits a short test
    run_downstream_cli(
        [
            "task=sd",
            "task.head.hidden_size=64",
            "trainer.max_steps=40",
            "trainer.eval_every=40",
            f"hydra.run.dir={tmp_path}",
        ]
    )
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "sd" and results["metric"] == "der" and results["higher_is_better"] is False
    test = results["test"]
    assert test["der_superb"] == pytest.approx(
        test["missed_superb"] + test["false_alarm_superb"] + test["confusion_superb"]
    )
    assert test["der"] >= test["der_superb"] and "frame_accuracy" in results["dev"]
    assert trivial_der("test") > 75.0
    assert results["test"]["der"] < trivial_der("test") - 20.0


@pytest.mark.slow
def test_qbe_runs_without_training_and_beats_random_scores(tmp_path):
    run_downstream_cli(["task=qbe", "task.select_layer=false", f"hydra.run.dir={tmp_path}"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["task"] == "qbe" and results["metric"] == "mtwv" and results["interface"] == "single_layer"
    assert results["steps"] == 0 and results["trainable_params"] == {"interface": 0, "head": 0, "upstream": 0}
    qbe_set = read_quesst14(QUESST, "test")
    targets = np.array(
        [[(q.id, d.id) in qbe_set.targets for d in qbe_set.documents] for q in qbe_set.queries]
    )
    rng = np.random.default_rng(0)
    random_mtwv = np.mean(
        [maximum_term_weighted_value(rng.normal(size=targets.shape), targets).mtwv for _ in range(50)]
    )
    assert results["test"]["queries"] == 8 and results["test"]["occurrences"] == 24
    assert results["test"]["mtwv"] > random_mtwv + 0.3
    assert results["test"]["min_cnxe"] < 1.0


def test_qbe_refuses_trainable_interfaces_and_ignored_layers(make_config, tmp_path):
    from downstream.training.runner import run_experiment

    overrides = ["task=qbe", "interface=weighted_sum", *TINY_UPSTREAM]
    with pytest.raises(
        ValueError, match="trainable interfaces do not apply: interface=weighted_sum has 3 trainable"
    ):
        run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path)
    overrides[1] = "interface.layer=1"
    with pytest.raises(ValueError, match="interface.layer=1 would be ignored"):
        run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path)
    overrides[1] = "upstream.trainable=true"
    with pytest.raises(ValueError, match="task=qbe trains nothing: set upstream.trainable=false"):
        run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path)
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow
def test_qbe_layer_selection_picks_the_best_dev_layer(make_config, tmp_path):
    from downstream.training.runner import run_experiment

    overrides = ["task=qbe", *TINY_UPSTREAM]
    results = run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path, overrides=overrides)
    per_layer = [results["dev"][f"mtwv_layer{k}"] for k in range(3)]
    best = int(results["dev"]["layer"])
    assert per_layer[best] == max(per_layer) == results["dev"]["mtwv"]
    assert results["layer_weights"] == [float(k == best) for k in range(3)]


def test_table_cells_below_one_keep_four_decimals():
    from downstream.reporting.render import number_text

    assert number_text(0.0736) == "0.0736"  # SUPERB's QbE MTWV would read 0.07 with two decimals
    assert number_text(5.88) == "5.88" and number_text(0.0) == "0.00" and number_text(-0.25) == "-0.2500"
    assert number_text(0.21, like=3.25) == "0.21"  # a spread takes its mean's precision
    assert number_text(0.0031, like=0.0736) == "0.0031"


def test_table_shows_superbs_sd_der_beside_the_test_chosen_der_only(tmp_path):
    """SUPERB's 5.88 is the best test DER over score.sh's grid: it stands in the sd_superb column (der_superb),
    never beside the dev-chosen der."""
    sweep = tmp_path / "multirun" / "superb"
    write_superb_run(sweep / "a", "sd", "der", False, {"der": 7.5, "der_superb": 6.25})
    table = reporting.aggregate(reporting.collect_runs([sweep]))
    assert [(c.task, c.metric, c.arrow) for c in table.columns] == [
        ("sd", "der", "↓"),
        ("sd_superb", "der_superb", "↓"),
    ]
    honest, superb = (table.cells[(table.rows[0], task)] for task in ("sd", "sd_superb"))
    assert (honest.values, superb.values) == ((7.5,), (6.25,))
    assert honest.reference is None and superb.reference.value == 5.88
