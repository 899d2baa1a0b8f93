"""The corpus integrity pass (downstream/training/integrity.py) on flawed copies of the shipped mini corpus
(data/mini_superb copied into tmp_path: text files copied, audio files symlinked): repeated ids, one id for
two audio files, leakage, non-finite audio, sample rates and label variants, each kind checked over
several tasks, splits or forms by the same code."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from downstream.data.audio import NonFiniteAudioError, load_audio
from downstream.data.corpus import DataLayoutError
from downstream.training.integrity import CorpusIntegrityError, check_integrity
from tests.helpers import (
    CORPUS,
    MINI_SUPERB,
    REPO_ROOT,
    TINY_UPSTREAM,
    cases,
    copy_corpus,
    edit_lines,
    make_task,
)

pytestmark = pytest.mark.usefixtures("module_cache")


def checked(name: str, root: Path, *overrides: str) -> dict:
    task = make_task(name, root, *overrides)
    task.check_data()
    return check_integrity(task)


def write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    """A float WAV at ``path`` (whatever its ending: libsndfile reads the format from the header)."""
    path.unlink()
    soundfile.write(str(path), samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")


# -- the mini corpus passes ---------------------------------------------------------------------------------


def test_every_task_of_the_shipped_corpus_passes_and_protocol_overlaps_are_counted_with_their_reason():
    ks = make_task("ks", MINI_SUPERB)
    ks.check_data()
    report = check_integrity(ks)
    windows = sum(u.id.startswith("_background_noise_/") for u in ks.utterances("dev"))
    assert report["dev"]["shared_audio"]["pairs"] == windows > 0
    assert report["dev"]["shared_audio"]["with"] == ["train"]
    assert "_silence_" in report["dev"]["shared_audio"]["reason"]
    assert "shared_audio" not in report["test"]
    qbe = make_task("qbe", MINI_SUPERB)
    qbe.check_data()
    report = check_integrity(qbe)
    assert report["test"]["shared_audio"]["pairs"] == len(qbe.qbe_set("test").documents)
    for split in ("dev", "test"):
        assert report[split]["nonfinite"]["count"] == report[split]["sample_rate"]["count"] == 0


# -- ids: twice in a split, one id for two audio files ----------------------------------------------------


def _duplicate_first_line(lines: list[str]) -> list[str]:
    index = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith(","))
    return [*lines, lines[index]]


# (task, file, change, where the second occurrence comes from)
DUPLICATES = [
    (
        "ml_multi",
        "ML-SUPERB/voxpopuli/eng/transcript_1h_train.txt",
        "reuse",
        "mls/eng/transcript_1h_train.txt",
    ),
    ("asr", "LibriSpeech/dev-clean", "reuse", None),
    ("ic", "FluentSpeechCommands/data/test_data.csv", "repeat", None),
    ("sid", "VoxCeleb1/iden_split.txt", "repeat", None),
    ("sf", "SNIPS/all.iob.snips.txt", "repeat", None),
    ("sd", "Diarization/test/wav.scp", "repeat", None),
    ("qbe", "quesst14Database/scoring/language_key_utterances.lst", "repeat", None),
]


@pytest.mark.parametrize(
    ("task", "relative", "how", "other"),
    cases(
        DUPLICATES,
        [f"{d[0]}-{d[2]}" for d in DUPLICATES],
        {"asr-reuse", "sid-repeat", "sf-repeat", "qbe-repeat"},
    ),
)
def test_an_id_twice_in_a_split_stops_the_run_naming_both_places(tmp_path, task, relative, how, other):
    copy_corpus(tmp_path, CORPUS[task])
    if how == "repeat":
        edit_lines(tmp_path / relative, _duplicate_first_line)
        expected_file = tmp_path / relative
    elif task == "ml_multi":  # another language folder reuses mls/eng's ids (and has audio under them)
        target = tmp_path / relative
        source = tmp_path / "ML-SUPERB" / other
        reused = source.read_text(encoding="utf-8").splitlines()[:3]
        edit_lines(target, lambda lines: [*lines, *reused])
        for line in reused:
            utterance_id = line.split()[0]
            (target.parent / "wav" / f"{utterance_id}.flac").symlink_to(
                next((source.parent / "wav").glob(f"{utterance_id}.*")).resolve()
            )
        expected_file = source
    else:  # LibriSpeech: a second chapter's transcript repeats an utterance of the first
        chapters = sorted((tmp_path / relative).glob("*/*/*.trans.txt"))
        line = chapters[0].read_text(encoding="utf-8").splitlines()[0]
        edit_lines(chapters[1], lambda lines: [*lines, line])
        utterance_id = line.split()[0]
        (chapters[1].parent / f"{utterance_id}.flac").symlink_to(
            (chapters[0].parent / f"{utterance_id}.flac").resolve()
        )
        expected_file = chapters[0]
    with pytest.raises(DataLayoutError) as caught:
        checked(task, tmp_path)
    message = str(caught.value)
    count = 3 if task == "ml_multi" else 1
    assert f"{count} id(s) occur more than once" in message
    assert re.search(rf"at {re.escape(str(expected_file))}:\d+ and at \S+:\d+", message), message


def test_one_id_naming_different_audio_in_two_splits_is_refused(tmp_path):
    root = copy_corpus(tmp_path, "ML-SUPERB")
    dev = root / "swc/deu/transcript_10min_dev.txt"
    dev_id = dev.read_text(encoding="utf-8").split()[0]
    train = root / "voxforge/fra/transcript_1h_train.txt"
    edit_lines(train, lambda lines: [*lines, f"{dev_id} 1.0 une phrase"])
    other = next((root / "voxforge/fra/wav").glob("*.flac")).resolve()
    (root / "voxforge/fra/wav" / f"{dev_id}.flac").symlink_to(other)
    with pytest.raises(CorpusIntegrityError) as caught:
        checked("ml_multi", tmp_path)
    message = str(caught.value)
    assert "1 id(s) name different audio in two splits" in message
    assert f"{dev_id} is " in message and f"{train}:" in message and f"{dev}:" in message


# -- leakage: the same audio in two splits -----------------------------------------------------------------


def _er_session_symlink(root: Path) -> int:
    """IEMOCAP's Session5 a symbolic link to Session4 (the issue's case): fold 5 tests on training audio."""
    shutil.rmtree(root / "Session5")
    (root / "Session5").symlink_to(root / "Session4", target_is_directory=True)
    return -1  # every test utterance


def _ic_file_symlink(root: Path) -> int:
    """Two test rows name files that are symbolic links to training files."""
    train = (root / "data/train_data.csv").read_text(encoding="utf-8").splitlines()
    test_rows = (root / "data/test_data.csv").read_text(encoding="utf-8").splitlines()
    for train_row, test_row in zip(train[1:3], test_rows[1:3], strict=True):
        test_file = root / test_row.split(",")[1]
        test_file.unlink()
        test_file.symlink_to((root / train_row.split(",")[1]).resolve())
    return 2


def _sid_listed_twice(root: Path) -> int:
    """A dev line of iden_split.txt names a training file in a symbolic-linked video folder."""
    lines = (root / "iden_split.txt").read_text(encoding="utf-8").splitlines()
    speaker, video, name = lines[0].split()[1].split("/")
    (root / "wav" / speaker / "linked").symlink_to(root / "wav" / speaker / video, target_is_directory=True)
    edit_lines(root / "iden_split.txt", lambda ls: [*ls, f"2 {speaker}/linked/{name}"])
    return 1


def _ks_test_clip(root: Path) -> int:
    """A test-set clip that is a symbolic link to a training clip of the same word."""
    test_clip = sorted((root / "speech_commands_test_set_v0.01/yes").iterdir())[0]
    train_clip = sorted((root / "speech_commands_v0.01/yes").iterdir())
    dev = set((root / "speech_commands_v0.01/validation_list.txt").read_text(encoding="utf-8").split())
    source = next(clip for clip in train_clip if f"yes/{clip.name}" not in dev)
    test_clip.unlink()
    test_clip.symlink_to(source.resolve())
    return 1


LEAKS = [
    ("er", _er_session_symlink, ["task.fold=5"]),
    ("ic", _ic_file_symlink, []),
    ("sid", _sid_listed_twice, []),
    ("ks", _ks_test_clip, []),
]


@pytest.mark.parametrize(
    ("task", "flaw", "overrides"),
    cases(LEAKS, [leak[1].__name__[1:] for leak in LEAKS], {"er_session_symlink", "sid_listed_twice"}),
)
def test_the_same_audio_in_two_splits_is_refused_by_its_real_path(tmp_path, task, flaw, overrides):
    root = copy_corpus(tmp_path, CORPUS[task])
    expected = flaw(root)
    with pytest.raises(CorpusIntegrityError) as caught:
        checked(task, tmp_path, *overrides)
    message = str(caught.value)
    count = int(re.search(r"(\d+) audio file\(s\) are in more than one split", message)[1])
    if expected == -1:
        shipped = make_task(task, MINI_SUPERB, *overrides)
        expected = len(shipped.utterances("test"))
    assert count == expected and "symbolic links resolved" in message


# -- non-finite audio ----------------------------------------------------------------------------------------


#: SV under protocol=superb reads sox's VAD output (FLAC) instead of the files: the NaN checks read the files
#: themselves (protocol=exact: no VAD, no gain; the other tasks read their files either way).
NO_VAD = ["protocol=exact"]


def _nan_clip(root: Path, task: str) -> tuple[str, Path]:
    """(split, file) of one clip rewritten as a float WAV holding NaN and inf samples."""
    if task == "ks":
        entry = (root / "speech_commands_v0.01/validation_list.txt").read_text(encoding="utf-8").split()[0]
        split, path = "dev", root / "speech_commands_v0.01" / entry
    elif task == "sv":
        first = (root / "veri_test.txt").read_text(encoding="utf-8").split()[1]
        split, path = "test", root / "wav" / first
    else:  # er: a training utterance of fold 1
        split, path = "train", sorted((root / "Session3/sentences/wav").glob("*/*.flac"))[0]
    samples = soundfile.read(str(path.resolve()), dtype="float32")[0]
    samples[100], samples[200] = np.nan, np.inf
    write_float_wav(path, samples)
    return split, path


@pytest.mark.parametrize("task", cases(["ks", "sv", "er"], ["ks", "sv", "er"], {"sv", "er"}))
def test_nan_audio_is_refused_by_default_naming_the_file(tmp_path, task):
    root = copy_corpus(tmp_path, CORPUS[task])
    _, path = _nan_clip(root, task)
    with pytest.raises(
        CorpusIntegrityError, match=r"1 audio file\(s\) hold NaN or infinite samples"
    ) as caught:
        checked(task, tmp_path, *NO_VAD)
    assert str(path) in str(caught.value) and "2 NaN or infinite sample(s)" in str(caught.value)


@pytest.mark.parametrize("task", cases(["ks", "sv", "er"], ["ks", "sv", "er"], {"ks", "er"}))
def test_nan_audio_is_left_out_and_counted_with_skip(tmp_path, task):
    root = copy_corpus(tmp_path, CORPUS[task])
    split, path = _nan_clip(root, task)
    task_ = make_task(task, tmp_path, "task.on_nonfinite=skip", *NO_VAD)
    task_.check_data()
    before = len(task_.utterances(split))
    report = check_integrity(task_)
    assert report[split]["nonfinite"]["count"] == 1 and report[split]["nonfinite"]["policy"] == "left out"
    assert len(task_.utterances(split)) == before - 1
    assert path not in {u.path for u in task_.utterances(split)}
    assert sum(record["nonfinite"]["count"] for record in report.values()) == 1


def _sv_training_file(root: Path) -> Path:
    """A file of the VoxCeleb1 copy of a speaker that no trial list names (in SV's training split only)."""
    listed = {
        field.split("/")[0]
        for trials in ("veri_test.txt", "dev_trials.txt")
        for line in (root / trials).read_text(encoding="utf-8").splitlines()
        for field in line.split()[1:]
    }
    return next(p for p in sorted((root / "wav").glob("*/*/*.flac")) if p.parts[-3] not in listed)


def _nan_training_and_trial_files(root: Path) -> dict[str, Path]:
    """A training file and a test-trial file of the VoxCeleb1 copy, rewritten as float WAVs holding NaN
    and inf samples."""
    training = _sv_training_file(root)
    samples = soundfile.read(str(training.resolve()), dtype="float32")[0]
    samples[50] = np.nan
    write_float_wav(training, samples)
    return {"train": training, "test": _nan_clip(root, "sv")[1]}


def test_nan_in_the_sources_of_svs_vad_is_refused_naming_the_files(tmp_path):
    """protocol=superb: SV reads sox's VAD output, in which sox has clipped NaN to finite samples; the check
    reads the VoxCeleb1 files themselves."""
    flawed = _nan_training_and_trial_files(copy_corpus(tmp_path, CORPUS["sv"]))
    task = make_task("sv", tmp_path)
    assert task.vad
    task.check_data()
    read = {u.corpus_file: u for split in ("train", "test") for u in task.utterances(split)}
    for path in flawed.values():  # what training would read: sox's output, finite
        assert read[path].path != path and np.isfinite(load_audio(read[path].path)).all()
    with pytest.raises(
        CorpusIntegrityError, match=r"2 audio file\(s\) hold NaN or infinite samples"
    ) as caught:
        check_integrity(task)
    assert all(str(path) in str(caught.value) for path in flawed.values())


def test_nan_in_the_sources_of_svs_vad_is_left_out_and_counted_with_skip(tmp_path):
    flawed = _nan_training_and_trial_files(copy_corpus(tmp_path, CORPUS["sv"]))
    task = make_task("sv", tmp_path, "task.on_nonfinite=skip")
    task.check_data()
    before = {split: len(task.utterances(split)) for split in task.splits}
    report = check_integrity(task)
    for split, path in flawed.items():
        assert report[split]["nonfinite"]["count"] == 1 and report[split]["nonfinite"]["policy"] == "left out"
        assert len(task.utterances(split)) == before[split] - 1
        assert path not in {u.corpus_file for u in task.utterances(split)}
    assert report["dev"]["nonfinite"]["count"] == 0


def test_decoding_a_float_file_checks_its_samples(tmp_path):
    path = tmp_path / "x.wav"
    soundfile.write(str(path), np.array([0.0, np.nan, 0.5], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(NonFiniteAudioError, match=r"'.*x.wav' holds 1 NaN"):
        load_audio(path)
    soundfile.write(str(path), np.array([0.0, 0.25, 0.5], dtype=np.float32), 16000, subtype="FLOAT")
    assert load_audio(path).tolist() == [0.0, 0.25, 0.5]


# -- sample rates ---------------------------------------------------------------------------------------------


def _relabel_rate(path: Path, rate: int) -> None:
    """The file's samples kept, its header saying ``rate`` (the issue's wrong declared rate)."""
    samples = soundfile.read(str(path.resolve()), dtype="int16")[0]
    path.unlink()
    soundfile.write(str(path), samples, rate, format="FLAC", subtype="PCM_16")


def _two_files(root: Path, task: str) -> dict[str, Path]:
    if task in ("pr", "asr"):
        return {
            split: sorted((root / folder).glob("*/*/*.flac"))[0]
            for split, folder in (("train", "train-clean-100"), ("dev", "dev-clean"))
        }
    if task == "sid":
        lines = [line.split() for line in (root / "iden_split.txt").read_text(encoding="utf-8").splitlines()]
        first = {code: path for code, path in reversed(lines)}
        return {"train": root / "wav" / first["1"], "dev": root / "wav" / first["2"]}
    if task == "ic":
        rows = {
            split: (root / f"data/{name}").read_text(encoding="utf-8").splitlines()[1].split(",")[1]
            for split, name in (("train", "train_data.csv"), ("dev", "valid_data.csv"))
        }
        return {split: root / path for split, path in rows.items()}
    if task == "sf":
        return {"train": sorted((root / "train").iterdir())[0], "dev": sorted((root / "valid").iterdir())[0]}
    folder = root / "mls/eng/wav"  # ml_multi
    train_id = (root / "mls/eng/transcript_1h_train.txt").read_text(encoding="utf-8").split()[0]
    dev_id = (root / "mls/eng/transcript_10min_dev.txt").read_text(encoding="utf-8").split()[0]
    return {"train": folder / f"{train_id}.flac", "dev": folder / f"{dev_id}.flac"}


@pytest.mark.parametrize(
    "task", cases(["asr", "sid", "ic", "sf"], ["asr", "sid", "ic", "sf"], {"asr", "sid"})
)
def test_a_16_khz_corpus_with_files_at_other_rates_is_refused_naming_them(tmp_path, task, caplog):
    root = copy_corpus(tmp_path, CORPUS[task])
    files = _two_files(root, task)
    _relabel_rate(files["train"], 44100)
    _relabel_rate(files["dev"], 8000)
    with pytest.raises(CorpusIntegrityError) as caught:
        checked(task, tmp_path)
    message = str(caught.value)
    assert "2 file(s) are at another rate" in message and "task.resample=true" in message
    assert f"'{files['train']}' (44100 Hz)" in message and f"'{files['dev']}' (8000 Hz)" in message
    with caplog.at_level(logging.WARNING):
        report = checked(task, tmp_path, "task.resample=true")
    assert (report["train"]["sample_rate"]["count"], report["dev"]["sample_rate"]["count"]) == (1, 1)
    assert (
        report["train"]["sample_rate"]["rates"] == {"44100": 1}
        and report["test"]["sample_rate"]["count"] == 0
    )
    assert any(
        str(files["dev"]) in record.getMessage() and "dev split" in record.getMessage()
        for record in caplog.records
    )


def test_a_wrong_rate_behind_svs_vad_is_refused_naming_the_voxceleb1_file(tmp_path):
    """protocol=superb: sox's VAD output is always 16 kHz; the check reads the header of the file behind
    it."""
    training = _sv_training_file(copy_corpus(tmp_path, CORPUS["sv"]))
    _relabel_rate(training, 8000)
    with pytest.raises(CorpusIntegrityError, match=re.escape(f"'{training}' (8000 Hz)")):
        checked("sv", tmp_path)


def test_a_corpus_of_mixed_rates_by_nature_is_resampled_and_counted_without_asking(tmp_path):
    root = copy_corpus(tmp_path, "ML-SUPERB")
    files = _two_files(root, "ml_multi")
    _relabel_rate(files["train"], 44100)
    _relabel_rate(files["dev"], 8000)
    report = checked("ml_multi", tmp_path)
    assert report["train"]["sample_rate"] == {
        "count": 1,
        "rates": {"44100": 1},
        "policy": "resampled to 16 kHz on load",
        "examples": [str(files["train"])],
    }
    assert report["dev"]["sample_rate"]["rates"] == {"8000": 1}


@pytest.mark.slow
def test_the_warning_names_ten_files_and_counts_the_rest(tmp_path, caplog):
    root = copy_corpus(tmp_path, "LibriSpeech")
    chapters = sorted((root / "train-clean-100").glob("*/*/*.flac"))[:12]
    for path in chapters:
        _relabel_rate(path, 22050)
    with caplog.at_level(logging.WARNING), pytest.raises(CorpusIntegrityError, match="12 file"):
        checked("asr", tmp_path)
    warning = next(r.getMessage() for r in caplog.records if "train split: 12 of" in r.getMessage())
    assert warning.count("(22050 Hz)") == 10 and warning.endswith("and 2 more")


# -- labels and slot tags ------------------------------------------------------------------------------------


def _capitalised(root: Path, task: str) -> tuple[str, str]:
    """Five training rows of one label written capitalised (the issue's 'Lights'); (lower, upper) form."""
    if task == "ic":
        column = 5
        path = root / "data/train_data.csv"
        lines = path.read_text(encoding="utf-8").splitlines()
        value = lines[1].split(",")[column]
        changed = 0
        for index, line in enumerate(lines[1:], 1):
            fields = line.split(",")
            if fields[column] == value and changed < 5:
                fields[column] = value.capitalize()
                lines[index] = ",".join(fields)
                changed += 1
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return value, value.capitalize()
    path = root / "all.iob.snips.txt"  # sf: an intent written in another case on a training line
    lines = path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if "-snips-train-" in line)
    intent = lines[index].rsplit(" ", 1)[1]
    lines[index] = lines[index][: -len(intent)] + intent.lower()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return intent, intent.lower()


@pytest.mark.parametrize("task", ["ic", "sf"])
def test_training_labels_that_differ_only_in_case_are_refused_naming_both_forms(tmp_path, task):
    root = copy_corpus(tmp_path, CORPUS[task])
    first, second = _capitalised(root, task)
    with pytest.raises(CorpusIntegrityError) as caught:
        checked(task, tmp_path)
    message = str(caught.value)
    assert "1 training label(s) are written in several forms" in message
    assert f"{first!r} (" in message and f"{second!r} (" in message
    assert message.count("first ") == 2 and str(root) in message


@pytest.mark.slow
def test_a_launch_on_a_flawed_corpus_stops_before_any_model_with_the_one_message(tmp_path):
    root = copy_corpus(tmp_path, "FluentSpeechCommands")
    _capitalised(root, "ic")
    run_dir = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "run_downstream.py", "task=ic", f"paths.mini_superb={tmp_path}", *TINY_UPSTREAM]
        + [f"hydra.run.dir={run_dir}"],
        cwd=REPO_ROOT,
        env=dict(os.environ, SSL_BENCH_CACHE="off"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode != 0
    assert "training label(s) are written in several forms" in completed.stderr
    assert "rror: CorpusIntegrityError: ic: " in completed.stderr and "Traceback" not in completed.stderr
    assert not (run_dir / "results.json").exists() and not list(run_dir.glob("**/*.pt"))
