"""ML-SUPERB's tokens as ESPnet's recipe makes them (#25): word tokens and their score for cmn and jpn under
protocol=superb (run_mono.sh, mono_superb_score.py), the vocabulary written after the 20 s rule (data_prep.py,
asr.sh stages 4-5), and ml_mono prepared on every ESPnet set, the mini corpus's deu2 included. Expected
values are computed here the way ESPnet's scripts compute them, not with the project's code."""

from __future__ import annotations

import string
from pathlib import Path

import editdistance
import numpy as np
import pytest
import soundfile

from downstream.data.audio import SAMPLE_RATE
from downstream.tasks.ml_superb import MonolingualSpeechRecognition
from tests.helpers import ESPNET_MONOLINGUAL_SETS, MINI_SUPERB, make_task
from tests.test_ml_superb_recipe import ESPNET_DATASETS, one_hot_logits

FILES = {
    "train": "transcript_1h_train.txt",
    "dev": "transcript_10min_dev.txt",
    "test": "transcript_10min_test.txt",
}


def write_folder(
    root: Path, dataset: str, language: str, splits: dict[str, list[tuple[str, str, float]]]
) -> None:
    """<root>/ML-SUPERB/<dataset>/<language>/ with (utterance id, transcript, seconds) per split."""
    folder = root / "ML-SUPERB" / dataset / language
    (folder / "wav").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, name in FILES.items():
        lines = []
        for utterance, text, seconds in splits.get(split, []):
            audio = 0.1 * rng.standard_normal(round(seconds * SAMPLE_RATE)).astype(np.float32)
            soundfile.write(str(folder / "wav" / f"{utterance}.wav"), audio, SAMPLE_RATE)
            lines.append(f"{utterance} {seconds:.2f} {text}")
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def espnet_text(text: str) -> str:
    """single_lang_data_prep.py's process_text: ASCII punctuation deleted, upper-cased."""
    return text.translate(str.maketrans("", "", string.punctuation)).upper()


def espnet_words(text: str) -> list[str]:
    """tokenize_text --token_type word (WordTokenizer, delimiter None): the whitespace-separated units."""
    return espnet_text(text).split()


# fleurs/cmn written one character per word, with an ASCII word, ASCII punctuation (deleted) and a full stop
# '。' that string.punctuation does not hold (kept, so '界。' is one word, as ESPnet's tokeniser leaves it)
CMN = {
    "train": [
        ("fleurs_cmn_000001", "你 好, 世 界。", 2.0),
        ("fleurs_cmn_000002", "我 是 ai 学 生!", 2.0),
        ("fleurs_cmn_000003", "你 是 学 生", 2.0),
    ],
    "dev": [("fleurs_cmn_000004", "你 是 老 师", 2.0)],
    "test": [("fleurs_cmn_000005", "世 界 你 好", 2.0)],
}


def test_cmn_under_superb_has_espnets_word_tokens_and_is_scored_over_them(tmp_path):
    write_folder(tmp_path, "fleurs", "cmn", CMN)
    task = make_task("ml_mono", tmp_path, "task.language=cmn")
    assert task.word_tokens
    # asr.sh stage 5: the token list is every word of the training text (cutoff 0), plus blank and <unk>
    words = {word for _, text, _ in CMN["train"] for word in espnet_words(text)}
    assert "界。" in words and "AI" in words
    assert set(task.vocabulary) == {"<blank>", "<unk>", *words}
    for split in ("train", "dev"):
        for utterance in task.utterances(split):
            target = task.decode(task.target(utterance, split))
            assert target == [w if w in words else "<unk>" for w in espnet_words(utterance.text)]
    assert task.decode(task.target(task.utterances("dev")[0], "dev")) == ["你", "是", "<unk>", "<unk>"]

    # mono_superb_score.py reports score_wer for cmn: sclite over the words of reference and hypothesis
    utterances = task.utterances("train")
    references = [task.target(u, "train") for u in utterances]
    ids = {token: index for index, token in enumerate(task.vocabulary)}
    hypotheses = [
        [ids["你"], ids["好"], ids["界。"]],  # one word dropped
        list(references[1]),
        [ids["你"], ids["是"], ids["学"], ids["学"], ids["生"]],  # one inserted (blank between the two)
    ]
    logits, lengths = one_hot_logits(hypotheses, len(task.vocabulary))
    metrics = task.metrics(task.eval_statistics(logits, lengths, {"targets": references}))
    decoded = [[task.vocabulary[i] for i in h] for h in hypotheses]
    reference_words = [espnet_words(u.text) for u in utterances]
    edits = sum(editdistance.eval(r, h) for r, h in zip(reference_words, decoded, strict=True))
    assert edits == 2
    assert metrics["cer"] == pytest.approx(100.0 * edits / sum(map(len, reference_words)))
    assert task.hypothesis_record(decoded[0]) == {"hypothesis": "你 好 界。"}


def test_cmn_under_exact_and_the_other_sets_keep_characters(tmp_path):
    write_folder(tmp_path, "fleurs", "cmn", CMN)
    exact = make_task("ml_mono", tmp_path, "task.language=cmn", "protocol=exact")
    assert not exact.word_tokens and "|" in exact.vocabulary and "AI" not in exact.vocabulary
    characters = {c for _, text, _ in CMN["train"] for c in espnet_text(text) if c != " "}
    assert set(exact.vocabulary) == {"<blank>", "|", "<unk>", *characters}
    write_folder(tmp_path, "swc", "deu", {"train": [("swc_deu_000001", "Das Haus.", 1.0)]})
    german = make_task("ml_mono", tmp_path, "task.language=deu1")
    assert not german.word_tokens and "|" in german.vocabulary
    with pytest.raises(ValueError, match=r"word_token_sets names 'chinese', which are not monolingual sets"):
        MonolingualSpeechRecognition(str(tmp_path / "ML-SUPERB"), language="cmn", word_token_sets=["chinese"])


@pytest.mark.parametrize(
    ("task_name", "dataset", "language", "overrides"),
    [("ml_multi", "mls", "eng", []), ("ml_mono", "swc", "deu", ["task.language=deu1"])],
)
def test_the_vocabulary_has_no_token_that_only_a_skipped_utterance_holds(
    tmp_path, task_name, dataset, language, overrides
):
    # 'Q' only in a 21 s training utterance: data_prep.py (> 20 s) and asr.sh stage 4 (max_wav_duration 20)
    # drop it before the token list is written; the dev utterance with a 'Q' gets <unk>
    utterances = {
        "train": [
            (f"{dataset}_{language}_000001", "ab cd", 1.0),
            (f"{dataset}_{language}_000002", "qa", 21.0),
            (f"{dataset}_{language}_000003", "dab", 19.9),
        ],
        "dev": [(f"{dataset}_{language}_000004", "aq", 1.0)],
        "test": [(f"{dataset}_{language}_000005", "ba", 1.0)],
    }
    write_folder(tmp_path, dataset, language, utterances)
    task = make_task(task_name, tmp_path, *overrides)
    kept = [text for _, text, seconds in utterances["train"] if seconds <= 20]
    characters = {c for text in kept for c in espnet_text(text) if c != " "}
    assert characters == {"A", "B", "C", "D"}
    assert {t for t in task.vocabulary if len(t) == 1 and t != "|"} == characters
    assert len(task.utterances("train")) == 3  # the data check, not the reader, leaves it out (counted)
    dev = task.decode(task.target(task.utterances("dev")[0], "dev"))
    assert dev[-2:] == ["A", "<unk>"]


def espnet_tree(root: Path) -> None:
    """One folder per ESPnet monolingual set (LANG_TO_SELECTED_DATASET, language = the name's first three
    letters) with a training, dev and test utterance each."""
    for name in ESPNET_MONOLINGUAL_SETS:
        dataset, language = ESPNET_DATASETS[name], name[:3]
        prefix = f"{dataset}_{language}"
        if not (root / "ML-SUPERB" / dataset / language).exists():
            write_folder(
                root,
                dataset,
                language,
                {split: [(f"{prefix}_{n:06d}", "ab c", 1.0)] for n, split in enumerate(FILES)},
            )


def prepare(task) -> dict[str, set[str]]:
    """Every split read and its targets made, as the data check does before training; the datasets read."""
    datasets = {}
    for split in task.splits:
        utterances = task.utterances(split)
        assert utterances, split
        for utterance in utterances:
            task.target(utterance, split)
        task.review_targets(split)
        datasets[split] = {Path(u.path).parts[-4] for u in utterances}
    return datasets


@pytest.mark.parametrize("name", ESPNET_MONOLINGUAL_SETS)
def test_ml_mono_prepares_every_set_espnet_lists(tmp_path, name):
    espnet_tree(tmp_path)
    task = make_task("ml_mono", tmp_path, f"task.language={name}")
    datasets = prepare(task)
    assert datasets["train"] == datasets["dev"] == {ESPNET_DATASETS[name]}
    # test: the language in every dataset that has it (eng: mls, nchlt and voxpopuli)
    assert datasets["test"] == {ESPNET_DATASETS[n] for n in ESPNET_MONOLINGUAL_SETS if n[:3] == name[:3]}
    assert task.word_tokens == (name in ("cmn", "jpn"))  # run_mono.sh's token_type=word


MINI_SETS = ("eng1", "eng3", "fra1", "deu1", "deu2", "swa")


def test_the_mini_corpus_holds_deu2_and_ml_mono_prepares_each_of_its_sets():
    root = MINI_SUPERB / "ML-SUPERB"
    present = [n for n in ESPNET_MONOLINGUAL_SETS if (root / ESPNET_DATASETS[n] / n[:3]).is_dir()]
    assert set(MINI_SETS) <= set(present)
    for name in present:
        task = make_task("ml_mono", MINI_SUPERB, f"task.language={name}")
        assert prepare(task)["train"] == {ESPNET_DATASETS[name]}, name


@pytest.mark.slow
def test_ml_mono_runs_on_the_mini_corpus_deu2(make_config, tmp_path):
    from downstream.training.runner import run_experiment

    overrides = ["task=ml_mono", "task.language=deu2", "trainer.max_steps=2", "trainer.eval_every=2"]
    results = run_experiment(make_config(overrides, run_dir=tmp_path), tmp_path, overrides=overrides)
    assert results["test"]["cer"] >= 0
    assert results["data_policy"]["train"]["too_long"]["count"] == 0
    # asr.sh stage 4's rule is checked on dev too (the mini corpus's files are 0.65-2.93 s: nothing goes)
    assert results["data_policy"]["dev"]["wav_duration"]["count"] == 0


# asr.sh stage 4 (egs2/TEMPLATE/asr1/asr.sh, min_wav_duration 0.1 and max_wav_duration 20, which run_mono.sh and
# run_multi.sh keep): train and valid keep an utterance when int(0.1 * 16000) < samples < int(20 * 16000), and
# remove empty text; the test sets are not filtered.
STAGE4 = {
    "train": [
        ("swc_deu_000001", "ab cd", 1.0),
        ("swc_deu_000002", "ba", 0.05),  # too short
        ("swc_deu_000003", "ab", 0.1),  # 1600 samples: not more than 1600, out
        ("swc_deu_000004", "qa", 21.0),  # over max_seconds: the too_long policy's
        ("swc_deu_000005", "za", 20.0),  # 320000 samples: not fewer than 320000, out
        ("swc_deu_000006", "dab", 2.0),
    ],
    "dev": [
        ("swc_deu_000011", "ab", 1.0),
        ("swc_deu_000012", "ab", 0.1),
        ("swc_deu_000013", "ab", 0.11),  # 1760 samples: kept
        ("swc_deu_000014", "ab", 25.0),
        ("swc_deu_000015", "ba", 20.0),
        ("swc_deu_000016", "...", 1.0),  # empty once punctuation is removed
    ],
    "test": [("swc_deu_000021", "ab", 0.05), ("swc_deu_000022", "ab", 25.0), ("swc_deu_000023", "ba", 1.0)],
}


def stage4_kept(seconds: float) -> bool:
    samples = round(seconds * SAMPLE_RATE)  # what write_folder writes
    return int(0.1 * 16000) < samples < int(20 * 16000)


@pytest.mark.parametrize("task_name", ["ml_mono", "ml_multi"])
def test_superb_filters_train_and_dev_as_asr_sh_stage4_and_exact_keeps_dev_whole(tmp_path, task_name):
    from downstream.training.data_check import check_inputs
    from tests.test_inputs import tiny_upstream

    write_folder(tmp_path, "swc", "deu", STAGE4)
    overrides = ["task.language=deu1"] if task_name == "ml_mono" else ["task.few_shot=false"]
    superb = make_task(task_name, tmp_path, *overrides)
    report = check_inputs(superb, tiny_upstream())
    for split in ("train", "dev"):
        expected = {
            u for u, text, seconds in STAGE4[split] if stage4_kept(seconds) and espnet_text(text).strip()
        }
        assert {u.id for u in superb.utterances(split)} == expected, split
    assert {u.id for u in superb.utterances("test")} == {u for u, _, _ in STAGE4["test"]}  # test stays whole
    train, dev = report["train"], report["dev"]
    assert train["too_long"]["count"] == 1  # the 21 s one, counted once
    assert (train["wav_duration"]["too_short"], train["wav_duration"]["too_long"]) == (2, 1)
    assert (dev["wav_duration"]["too_short"], dev["wav_duration"]["too_long"]) == (1, 2)
    assert dev["wav_duration"]["count"] == 3 and dev["empty_transcript"]["count"] == 1
    assert dev["empty_transcript"]["policy"].startswith("left out")
    assert dev["utterances"] == 2
    # the vocabulary is written from the kept training text: 'Z' is only in the 20.0 s utterance
    assert "Z" not in superb.vocabulary and "Q" not in superb.vocabulary

    exact = make_task(task_name, tmp_path, *overrides, "protocol=exact")
    report = check_inputs(exact, tiny_upstream())
    assert len(exact.utterances("dev")) == len(STAGE4["dev"]) and "wav_duration" not in report["dev"]
    assert len(exact.utterances("train")) == len(STAGE4["train"])  # the dataset skips the 21 s one (too_long)
