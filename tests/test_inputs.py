"""Real-world inputs (issue 14): odd audio, transcripts and labels are handled by a stated policy, named
before training and counted in results.json's ``data_policy``. Every input is written here, small."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F

from downstream.data.ml_superb import read_ml_superb
from downstream.reporting import aggregate, collect_runs, render
from downstream.results import RunResults
from downstream.tasks.asr import WORD_BOUNDARY, SpeechRecognition
from downstream.tasks.ctc import (
    ctc_min_frames,
    ctc_min_frames_tensor,
    ctc_target_tensors,
    masked_ctc_loss,
    normalised_characters,
)
from downstream.tasks.ml_superb import MonolingualSpeechRecognition
from downstream.tasks.pr import PhonemeRecognition
from downstream.tasks.sid import SpeakerIdentification
from downstream.training.data_check import check_inputs
from downstream.training.loading import split_dataset
from downstream.training.runner import run_experiment
from interfaces.base import normalize_layers
from tests.helpers import TWO_STEP_RUN, compose_config, write_finished_run, write_voxceleb1
from upstream.base import normalize_waveforms
from upstream.fbank import FbankUpstream
from upstream.tiny import TinyUpstream

SPLIT_FOLDERS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def manifest_cache(tmp_path_factory, monkeypatch) -> Path:
    """Keep the audio header cache out of the user's home."""
    directory = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SSL_BENCH_CACHE", str(directory))
    return directory


def noise(samples: int) -> np.ndarray:
    return (0.1 * RNG.standard_normal(samples)).astype(np.float32)


def write_librispeech(
    root: Path, splits: dict[str, list[tuple[int, str]]], speakers: dict[str, int] | None = None
) -> Path:
    """A LibriSpeech root: per split, utterances (samples, transcript) of speaker 1 (or ``speakers[split]``,
    so that ids differ between splits as on the real corpus), chapter 2, as <split>/<spk>/2/<spk>-2-<n>.flac
    with <spk>-2.trans.txt (an empty transcript writes the id alone)."""
    for split, utterances in splits.items():
        speaker = (speakers or {}).get(split, 1)
        chapter = root / SPLIT_FOLDERS[split] / str(speaker) / "2"
        chapter.mkdir(parents=True)
        lines = []
        for number, (samples, text) in enumerate(utterances):
            soundfile.write(str(chapter / f"{speaker}-2-{number:04d}.flac"), noise(samples), 16000)
            lines.append(f"{speaker}-2-{number:04d} {text}".rstrip())
        (chapter / f"{speaker}-2.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_upstream() -> TinyUpstream:
    return TinyUpstream(num_transformer_layers=1, hidden_size=32)


NORMAL = [(16000, "HELLO WORLD"), (12000, "GOOD MORNING"), (16000, "YES")]


# -- 1. audio too short for the upstream ---------------------------------------------------------------


@pytest.mark.parametrize("upstream", [tiny_upstream(), FbankUpstream()], ids=["tiny-cnn", "fbank"])
def test_too_short_audio_is_found_before_training_padded_to_the_upstreams_minimum_and_counted(
    tmp_path, caplog, upstream
):
    corpus = write_librispeech(
        tmp_path,
        {split: [*NORMAL, (300, "NO")] for split in ("train", "dev", "test")},
    )
    task = SpeechRecognition(str(corpus))
    task.check_data()
    with caplog.at_level(logging.WARNING):
        report = check_inputs(task, upstream)
    assert upstream.min_samples == 400  # both: a 400-sample first window
    for split in ("train", "dev", "test"):
        assert report[split]["too_short"] == {
            "count": 1,
            "min_samples": upstream.min_samples,
            "policy": "padded",
            "examples": ["1-2-0003"],
            "shortest_samples": 300,
        }
        dataset = split_dataset(task, split, seed=0)
        assert dataset.num_samples[3] == upstream.min_samples
        item = dataset[3]["wav"]
        assert item.shape == (upstream.min_samples,) and torch.all(item[300:] == 0)
        # the padded utterance goes through the upstream (unpadded, 300 samples raise)
        _, frames = upstream(item[None], torch.tensor([upstream.min_samples]))
        assert frames.tolist() == [1]
    assert "shorter than the upstream's min_samples = 400" in caplog.text and "1-2-0003" in caplog.text
    with pytest.raises(ValueError, match="wav_lengths\\[0\\] = 300 samples is shorter"):
        upstream(torch.zeros(1, 300), torch.tensor([300]))


@pytest.mark.slow
def test_the_minimum_is_the_upstreams_own_sew_needs_720_samples(tmp_path):
    """600 samples pass a 400-sample CNN but not SEW's (13 convolutions, then 2 frames pooled)."""
    from tests.hf_tiny import load, save_tiny_family

    sew = load(save_tiny_family(tmp_path / "sew", "sew"))
    corpus = write_librispeech(tmp_path / "ls", {s: [*NORMAL, (600, "NO")] for s in SPLIT_FOLDERS})
    task = SpeechRecognition(str(corpus))
    task.check_data()
    report = check_inputs(task, sew)
    assert sew.min_samples == 720 and report["test"]["too_short"]["min_samples"] == 720
    assert report["test"]["too_short"]["count"] == 1
    item = split_dataset(task, "test", seed=0)[3]["wav"]
    _, frames = sew(item[None], torch.tensor([item.shape[0]]))
    assert item.shape == (720,) and frames.tolist() == [1]
    tiny_task = SpeechRecognition(str(corpus))
    tiny_task.check_data()
    assert check_inputs(tiny_task, tiny_upstream())["test"]["too_short"]["count"] == 0


def test_too_short_skip_leaves_training_audio_out_and_keeps_dev_and_test_whole(tmp_path):
    corpus = write_librispeech(tmp_path, {split: [*NORMAL, (300, "NO")] for split in SPLIT_FOLDERS})
    task = SpeechRecognition(str(corpus), on_too_short="skip")
    task.check_data()
    report = check_inputs(task, tiny_upstream())
    assert report["train"]["too_short"]["policy"] == "left out" and report["train"]["utterances"] == 3
    assert [u.id for u in task.utterances("train")] == ["1-2-0000", "1-2-0001", "1-2-0002"]
    for split in ("dev", "test"):
        assert report[split]["too_short"]["policy"] == "padded" and report[split]["utterances"] == 4


@pytest.mark.slow
def test_a_run_with_too_short_audio_in_every_split_finishes_and_records_the_policy(tmp_path):
    """Before: a 300-sample utterance crashed training (train) or the final evaluation (dev/test)."""
    speakers = {"train": 1, "dev": 3, "test": 5}  # one id in two splits would stop the run (integrity)
    corpus = write_librispeech(
        tmp_path / "corpus", {s: [*NORMAL, (300, "NO")] for s in SPLIT_FOLDERS}, speakers
    )
    run_dir = tmp_path / "run"
    overrides = ["task=asr", f"task.data_root={corpus}", *TWO_STEP_RUN, "trainer.limit_eval_batches=null"]
    results = run_experiment(compose_config(overrides, run_dir=run_dir), run_dir)
    written = RunResults.load(run_dir)
    assert written.data_policy == results["data_policy"]
    for split in ("train", "dev", "test"):
        policy = written.data_policy[split]
        assert policy["too_short"]["count"] == 1 and policy["too_short"]["min_samples"] == 400
        assert policy["utterances"] == 4
        # protocol=superb's ASR target 'N O | </s>' needs 4 frames; the padded 400 samples give 1: counted as
        # CTC-infeasible too
        assert policy["ctc_infeasible"]["count"] == 1
        expected = {"id": f"{speakers[split]}-2-0003", "frames": 1, "required": 4}
        assert policy["ctc_infeasible"]["examples"] == [expected]


# -- 2. CTC targets longer than the frames ----------------------------------------------------------


def test_an_infeasible_utterance_is_left_out_of_the_ctc_loss_average():
    """One feasible and one infeasible utterance give exactly the feasible one's loss (torch's mean with
    zero_infinity gave half of it), and the infeasible one gets no gradient."""
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 5, requires_grad=True)
    targets = [[1, 2, 3], [1, 2, 3, 4, 1, 2]]  # 3 tokens in 6 frames; 6 tokens in 4 frames
    frames = torch.tensor([6, 4])
    log_probs = F.log_softmax(logits, dim=-1).transpose(0, 1)
    loss = masked_ctc_loss(log_probs, *ctc_target_tensors(targets), ctc_min_frames_tensor(targets), frames)
    alone = F.ctc_loss(
        F.log_softmax(logits[:1], dim=-1).transpose(0, 1),
        torch.tensor(targets[0]),
        frames[:1],
        torch.tensor([3]),
        reduction="mean",
    )
    torch.testing.assert_close(loss, alone, rtol=0, atol=1e-6)
    old = F.ctc_loss(
        log_probs,
        torch.tensor(sum(targets, [])),
        frames,
        torch.tensor([3, 6]),
        reduction="mean",
        zero_infinity=True,
    )
    torch.testing.assert_close(old, alone / 2)  # what the issue measured
    loss.backward()
    assert torch.all(logits.grad[1] == 0) and logits.grad[0].abs().sum() > 0
    # repeats need a blank between them: [1, 1] needs 3 frames
    assert ctc_min_frames([1, 1]) == 3 and ctc_min_frames([1, 2]) == 2 and ctc_min_frames([]) == 0
    rest = targets[1:]
    nothing = masked_ctc_loss(
        log_probs[:, 1:], *ctc_target_tensors(rest), ctc_min_frames_tensor(rest), frames[1:]
    )
    assert nothing.item() == 0.0 and nothing.requires_grad


@pytest.mark.parametrize("policy", ["keep", "skip"])
def test_infeasible_ctc_utterances_are_counted_named_and_optionally_left_out_of_training(
    tmp_path, caplog, policy
):
    # 0.1 s = 1600 samples: 4 frames of the 320-sample CNN; 'HELLO WORLD' has 11 characters
    splits = {split: [*NORMAL, (1600, "HELLO WORLD")] for split in SPLIT_FOLDERS}
    task = SpeechRecognition(str(write_librispeech(tmp_path, splits)), on_ctc_infeasible=policy)
    task.check_data()
    with caplog.at_level(logging.WARNING):
        report = check_inputs(task, tiny_upstream())
    expected = {"id": "1-2-0003", "frames": 4, "required": 12}  # H E L L O | W O R L D: 11 + 1 repeat
    assert report["train"]["ctc_infeasible"]["examples"] == [expected]
    assert report["train"]["utterances"] == (3 if policy == "skip" else 4)
    for split in ("dev", "test"):
        assert report[split]["ctc_infeasible"]["count"] == 1 and report[split]["utterances"] == 4
    assert "1-2-0003 (4 frames < 12 needed)" in caplog.text


def test_the_ctc_check_is_one_implementation_for_pr_and_ml_superb(tmp_path):
    splits = {split: [*NORMAL, (1600, "HELLO WORLD GOOD MORNING")] for split in SPLIT_FOLDERS}
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text(
        "HELLO HH AH0 L OW1\nWORLD W ER1 L D\nGOOD G UH1 D\nMORNING M AO1 R N IH0 NG\nYES Y EH1 S\n"
    )
    corpus = write_librispeech(tmp_path / "ls", splits)
    task = PhonemeRecognition(str(corpus), lexicon=str(lexicon), on_ctc_infeasible="skip")
    task.check_data()
    report = check_inputs(task, tiny_upstream())
    assert report["train"]["ctc_infeasible"]["count"] == 1 and report["train"]["utterances"] == 3
    ml = MonolingualSpeechRecognition(
        str(write_ml_superb(tmp_path / "ml", [(1600, "HELLO WORLD GOOD MORNING")])), language="deu1"
    )
    ml.check_data()
    report = check_inputs(ml, tiny_upstream())
    assert report["train"]["ctc_infeasible"]["examples"][0]["frames"] == 4


# -- 3. constant or silent audio with per-utterance normalisations --------------------------------------


@pytest.mark.parametrize("delta_order", [0, 2])
def test_fbank_cmvn_of_silent_or_constant_audio_is_zero(delta_order):
    """Before: an all-zero file gave +-9536.74 (rounding noise / 1e-10)."""
    fbank = FbankUpstream(delta_order=delta_order)
    wavs = torch.stack([torch.zeros(16000), torch.full((16000,), 0.25), torch.randn(16000)])
    states, _ = fbank(wavs, torch.tensor([16000, 16000, 16000]))
    assert torch.all(states[0, :2] == 0)
    speech = states[0, 2]
    assert speech.abs().max() < 10 and 0.9 < speech.std() < 1.1  # real signal: still unit variance


def test_waveform_normalisation_and_interface_layer_norm_of_constant_input_are_zero():
    constants = (torch.rand(50) * 2 - 1).tolist()
    for value in constants:
        wav = torch.full((1, 15999), value)
        assert torch.all(normalize_waveforms(wav, torch.tensor([15999]), 1e-7) == 0)  # hf's eps
        assert torch.all(normalize_waveforms(wav, torch.tensor([15999]), 1e-5) == 0)  # torchaudio's
    hidden = torch.full((2, 1, 4, 768), 37.25)
    assert torch.all(normalize_layers(hidden) == 0)
    varied = torch.randn(2, 1, 4, 768) * 5 + 3
    torch.testing.assert_close(normalize_layers(varied).std(dim=-1), torch.ones(2, 1, 4), atol=1e-3, rtol=0)


# -- 4. length limits apply to training data only --------------------------------------------------------


def test_max_seconds_never_touches_dev_or_test_and_a_transcript_task_skips_instead_of_cropping(
    tmp_path, caplog
):
    splits = {split: [*NORMAL, (40000, "A LONG ONE")] for split in SPLIT_FOLDERS}  # 2.5 s
    corpus = write_librispeech(tmp_path, splits)
    with caplog.at_level(logging.WARNING):
        task = PhonemeRecognition(str(corpus), max_seconds=2.0, on_too_long="crop")
    assert (
        task.on_too_long == "skip" and "would cut audio whose target is the whole transcript" in caplog.text
    )
    task.check_data()
    report = check_inputs(task, tiny_upstream())
    assert report["train"]["too_long"]["count"] == 1
    assert report["train"]["too_long"]["policy"] == "left out (crop asked: the target is a transcript)"
    assert len(split_dataset(task, "train", seed=0)) == 3
    for split in ("dev", "test"):
        dataset = split_dataset(task, split, seed=0)
        assert len(dataset) == 4 and dataset.num_samples[3] == 40000 and dataset.crop_samples is None
        assert report[split]["too_long"]["count"] == 0


def test_sid_keeps_its_random_training_crops_and_whole_evaluation_utterances(tmp_path):

    write_voxceleb1(tmp_path)
    task = SpeakerIdentification(str(tmp_path), max_seconds=20.0, on_too_long="crop")
    assert task.on_too_long == "crop" and task.train_crop_seconds == 8.0
    assert split_dataset(task, "train", seed=0).crop_samples == 8 * 16000
    assert split_dataset(task, "test", seed=0).crop_samples is None


# -- 5. fold averaging with unequal replication ----------------------------------------------------------


def write_er_run(sweep: Path, name: str, fold: int, seed: int, accuracy: float, task: str = "er") -> None:
    metric = "acc" if task == "er" else "cer"
    write_finished_run(
        sweep / name,
        task=task,
        metric=metric,
        higher_is_better=task == "er",
        interface="weighted_sum",
        upstream="hubert (s3prl)",
        seed=seed,
        fold=fold if task == "er" else None,
        schedule="superb",
        trainable_params={"interface": 13, "head": 1000, "upstream": 0},
        test={metric: accuracy},
        overrides=(f"task.fold={fold}",) if task == "er" else (f"task.language={fold}",),
    )


def test_er_is_the_mean_over_folds_of_per_fold_means_and_unequal_replication_is_flagged(tmp_path):
    fold_scores = {1: 60.0, 2: 67.5, 3: 67.5, 4: 67.5, 5: 67.5}
    for fold, score in fold_scores.items():
        write_er_run(tmp_path, f"fold{fold}-seed0", fold, 0, score)
    write_er_run(tmp_path, "fold1-seed1", 1, 1, 50.0)
    table = aggregate(collect_runs([tmp_path]))
    (cell,) = table.cells.values()
    assert np.mean([*fold_scores.values(), 50.0]) == pytest.approx(63.333, abs=1e-3)  # the old number
    assert cell.mean == pytest.approx(65.0)  # (mean(60, 50) + 4 * 67.5) / 5
    assert cell.std == pytest.approx(np.std([55.0, 67.5, 67.5, 67.5, 67.5], ddof=1))
    assert cell.spread_over == "folds" and cell.n == 6
    markdown = render(table, "markdown")
    assert "**65.00 ± 5.59** (n=6, unequal replication: fold 1 x2, others x1; mean over folds)" in markdown
    csv = render(table, "csv")
    assert ",folds,1:2 2:1 3:1 4:1 5:1" in csv


def test_ml_superb_languages_are_balanced_the_same_way(tmp_path):
    for language, seed, cer in (("eng1", 0, 10.0), ("eng1", 1, 20.0), ("fra1", 0, 30.0)):
        write_er_run(tmp_path, f"{language}-{seed}", language, seed, cer, task="ml_mono")
    (cell,) = aggregate(collect_runs([tmp_path])).cells.values()
    assert cell.mean == pytest.approx(22.5) and cell.spread_over == "languages"
    assert cell.unequal_replication_note().startswith("unequal replication: set eng1 x2")


# -- 6. CER over the characters of the normalised text -----------------------------------------------


@pytest.mark.parametrize(
    ("reference", "hypothesis"),
    [
        ("NO", "|NO"),
        ("NO", "NO|"),
        ("HELLO WORLD", "HELLO||WORLD"),
        ("HELLO WORLD", "HELLOWORLD"),
        ("IT'S A CAT", "|ITS|A|CAT|"),
        ("A B C", "ABC|D"),
    ],
)
def test_cer_counts_the_characters_of_the_normalised_text_as_jiwer(reference, hypothesis):
    task = SpeechRecognition(".")
    ref_tokens = list(reference.replace(" ", WORD_BOUNDARY))
    hyp_tokens = list(hypothesis)
    statistics = task.sequence_statistics([ref_tokens], [hyp_tokens])
    cer = task.metrics(statistics)["cer"]
    # the normalised text: words joined by one space (jiwer's cer itself strips only the ends)
    expected = jiwer.cer(reference, " ".join(hypothesis.replace(WORD_BOUNDARY, " ").split()))
    assert cer == pytest.approx(100 * expected)
    assert normalised_characters(["|", "N", "O", "|", "|"], "|") == ["N", "O"]


# -- 7. out-of-lexicon words in PR ----------------------------------------------------------------------


def test_oov_words_are_counted_named_and_all_oov_utterances_left_out(tmp_path, caplog):
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text("HELLO HH AH0 L OW1\nWORLD W ER1 L D\nYES Y EH1 S\n")
    utterances = [
        (16000, "HELLO WORLD"),
        (16000, "HELLO ZORBLAX"),
        (16000, "ZORBLAX ZORBLAX QUUX"),  # every word out of the lexicon
        (16000, "YES"),
    ]
    corpus = write_librispeech(tmp_path / "ls", {split: utterances for split in SPLIT_FOLDERS})
    task = PhonemeRecognition(str(corpus), lexicon=str(lexicon))
    task.check_data()
    with caplog.at_level(logging.WARNING):
        report = check_inputs(task, tiny_upstream())
    for split in ("train", "dev", "test"):
        assert report[split]["oov"] == {
            "words": 4,
            "distinct": 2,
            "utterances": 2,
            "most_frequent": [["ZORBLAX", 3], ["QUUX", 1]],
            "all_oov_left_out": 1,
            "examples": ["1-2-0002"],
        }
        assert "1-2-0002" not in {u.id for u in task.utterances(split)}
        assert report[split]["utterances"] == 3
    assert "most frequent: ZORBLAX (3), QUUX (1)" in caplog.text


# -- 8. empty transcripts ----------------------------------------------------------------------------


def write_ml_superb(root: Path, extra_train: list[tuple[int, str]], empty_line: str | None = None) -> Path:
    """ML-SUPERB swc/deu with 3 utterances per split (+ extra training ones); ``empty_line`` appended
    to the training transcript file (its audio written too)."""
    folder = root / "swc" / "deu"
    (folder / "wav").mkdir(parents=True)
    files = {"train": "transcript_1h_train.txt", "dev": "transcript_10min_dev.txt"}
    files["test"] = "transcript_10min_test.txt"
    for split, name in files.items():
        rows = [*NORMAL, *(extra_train if split == "train" else [])]
        lines = []
        for number, (samples, text) in enumerate(rows):
            utterance = f"swc_deu_{split}_{number}"
            soundfile.write(str(folder / "wav" / f"{utterance}.wav"), noise(samples), 16000)
            lines.append(f"{utterance} X {text}")
        if empty_line is not None and split in ("train", "dev"):
            utterance = empty_line.split()[0] + f"_{split}"
            soundfile.write(str(folder / "wav" / f"{utterance}.wav"), noise(16000), 16000)
            lines.append(empty_line.replace(empty_line.split()[0], utterance, 1))
        (folder / name).write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("line", ["swc_deu_silence", "swc_deu_silence 1.0", "swc_deu_silence 1.0 ?!"])
def test_an_empty_ml_superb_transcript_is_named_with_its_line_and_left_out_of_training(
    tmp_path, caplog, line
):
    root = write_ml_superb(tmp_path, [], empty_line=line)
    with caplog.at_level(logging.WARNING):
        read_ml_superb(root, "train", monolingual="deu1")
    if line.endswith("?!"):  # punctuation only: empty after normalisation, found by the task's check
        assert "is empty" not in caplog.text
    else:
        assert "line 4: the transcript of utterance swc_deu_silence_train is empty" in caplog.text
        assert "transcript_1h_train.txt' line 4" in caplog.text and "is empty" in caplog.text
    task = MonolingualSpeechRecognition(str(root), language="deu1")
    task.check_data()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        report = check_inputs(task, tiny_upstream())
    assert report["train"]["empty_transcript"] == {
        "count": 1,
        "policy": "left out",
        "examples": ["swc_deu_silence_train"],
    }
    assert report["train"]["utterances"] == 3
    assert report["dev"]["empty_transcript"]["policy"] == "kept" and report["dev"]["utterances"] == 4
    assert "have an empty transcript; left out of training: swc_deu_silence_train" in caplog.text


def test_empty_transcripts_follow_the_same_policy_in_librispeech_tasks(tmp_path, caplog):
    splits = {split: [*NORMAL, (16000, "")] for split in SPLIT_FOLDERS}
    corpus = write_librispeech(tmp_path, splits)
    with caplog.at_level(logging.WARNING):
        task = SpeechRecognition(str(corpus))
        task.check_data()
        report = check_inputs(task, tiny_upstream())
    assert "1-2.trans.txt' line 4: the transcript of utterance 1-2-0003 is empty" in caplog.text
    assert report["train"]["empty_transcript"]["count"] == 1 and report["train"]["utterances"] == 3
    assert report["test"]["empty_transcript"]["policy"] == "kept" and report["test"]["utterances"] == 4


def test_a_dev_split_of_empty_references_fails_before_training(tmp_path):
    corpus = write_librispeech(tmp_path, {"train": NORMAL, "dev": [(16000, ""), (16000, "")], "test": NORMAL})
    task = SpeechRecognition(str(corpus))
    task.check_data()
    with pytest.raises(ValueError, match="every reference of the dev split .* is empty"):
        check_inputs(task, tiny_upstream())


def test_what_the_data_policies_changed_is_a_note_under_the_table(tmp_path):
    write_er_run(tmp_path, "fold1", 1, 0, 60.0)
    policy = {
        "train": {"too_short": {"count": 2, "policy": "padded"}, "utterances": 10},
        "test": {"too_short": {"count": 0, "policy": "padded"}, "oov": {"words": 3, "all_oov_left_out": 1}},
    }
    results = RunResults.load(tmp_path / "fold1")
    (tmp_path / "fold1" / "results.json").write_text(
        RunResults.from_dict({**results.to_dict(), "data_policy": policy}).to_json()
    )
    markdown = render(aggregate(collect_runs([tmp_path])), "markdown")
    assert "data policies of " in markdown
    assert "fold1: train: 2 too_short (padded); test: 1 oov (all-OOV left out)" in markdown


def test_data_policy_round_trips_and_old_records_still_load():
    record = {
        "task": "asr",
        "metric": "wer",
        "higher_is_better": False,
        "interface": "weighted_sum",
        "upstream": "tiny",
        "trainable_params": {"interface": 2, "head": 10, "upstream": 0},
        "test": {"wer": 50.0},
    }
    assert RunResults.from_dict(record).data_policy is None
    policy = {"train": {"too_short": {"count": 1}}}
    loaded = RunResults.from_json(json.dumps({**record, "data_policy": policy}))
    assert loaded.data_policy == policy and loaded.to_dict()["data_policy"] == policy


def test_audio_longer_than_whispers_window_is_found_before_training_and_counted_or_refused(tmp_path):
    """Whisper encodes 30 s windows: longer audio is split (counted per split) or, with
    whisper_long_audio=error, stops the run in the data check, naming the file, not mid-training."""
    from tests.hf_tiny import load, save_tiny_family

    long_samples = 30 * 16000 + 1600
    corpus = write_librispeech(
        tmp_path / "ls", {s: [*NORMAL, (long_samples, "LONG ONE")] for s in SPLIT_FOLDERS}
    )
    whisper = save_tiny_family(tmp_path / "whisper", "whisper")

    task = SpeechRecognition(str(corpus))
    task.check_data()
    report = check_inputs(task, load(whisper))
    for split in SPLIT_FOLDERS:
        assert report[split]["over_window"] == {
            "count": 1,
            "window_samples": 30 * 16000,
            "policy": "split into windows, frames concatenated",
            "examples": ["1-2-0003"],
        }
    no_window = SpeechRecognition(str(corpus))
    no_window.check_data()
    assert "over_window" not in check_inputs(no_window, tiny_upstream())["train"]

    refused = SpeechRecognition(str(corpus))
    refused.check_data()
    with pytest.raises(
        ValueError, match=r"train split: 1 utterance.*30 s window.*1-2-0003.*whisper_long_audio=split"
    ):
        check_inputs(refused, load(whisper, whisper_long_audio="error"))
