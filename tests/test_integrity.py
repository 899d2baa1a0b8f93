"""The corpus integrity pass (downstream/training/integrity.py) and the corpus text rules
(downstream/data/text.py), on flawed copies of the shipped mini corpus: each flaw is built from
data/mini_superb copied into tmp_path (text files copied, audio files symlinked), and each kind is checked
over several tasks, splits or forms by the same code."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from downstream.data.audio import NonFiniteAudioError, load_audio
from downstream.data.corpus import DataLayoutError
from downstream.data.snips import read_snips
from downstream.data.text import read_lines, shown
from downstream.training.integrity import CorpusIntegrityError, check_integrity
from downstream.training.runner import build_task
from tests.helpers import MINI_SUPERB, compose_config

#: task -> the corpus folder of data/mini_superb it reads
CORPUS = {
    "pr": "LibriSpeech",
    "asr": "LibriSpeech",
    "sid": "VoxCeleb1",
    "sv": "VoxCeleb1",
    "er": "IEMOCAP",
    "ic": "FluentSpeechCommands",
    "ks": "SpeechCommands",
    "sf": "SNIPS",
    "sd": "Diarization",
    "qbe": "quesst14Database",
    "ml_multi": "ML-SUPERB",
}
AUDIO = (".flac", ".wav")


def cases(values: list, ids: list[str], slow: set[str]) -> list:
    """``values`` as pytest params named ``ids``; those in ``slow`` in the slow tier (more members of the
    same kind, caught by the same code as the fast ones)."""
    return [
        pytest.param(
            *(value if isinstance(value, tuple) else (value,)),
            id=name,
            marks=[pytest.mark.slow] * (name in slow),
        )
        for value, name in zip(values, ids, strict=True)
    ]


@pytest.fixture(autouse=True)
def no_manifest_cache(monkeypatch):
    monkeypatch.setenv("SSL_BENCH_CACHE", "off")


def copy_corpus(root: Path, corpus: str) -> Path:
    """data/mini_superb/<corpus> under ``root``: folders made, text files copied, audio files symlinked."""
    source, target = MINI_SUPERB / corpus, root / corpus
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        destination = target / path.relative_to(source)
        if path.is_dir():
            destination.mkdir(parents=True, exist_ok=True)
        elif path.suffix in AUDIO:
            destination.symlink_to(path)
        else:
            shutil.copyfile(path, destination)
    return target


def make_task(name: str, root: Path, *overrides: str):
    """The task ``name`` on the (flawed) copies under ``root``, as the runner builds it."""
    cfg = compose_config([f"task={name}", f"paths.mini_superb={root}", *overrides])
    return build_task(cfg.task)


def checked(name: str, root: Path, *overrides: str) -> dict:
    task = make_task(name, root, *overrides)
    task.check_data()
    return check_integrity(task)


def write_float_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    """A float WAV at ``path`` (whatever its ending: libsndfile reads the format from the header)."""
    path.unlink()
    soundfile.write(str(path), samples.astype(np.float32), rate, format="WAV", subtype="FLOAT")


def edit_lines(path: Path, change) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    path.write_text("\n".join(change(lines)) + "\n", encoding="utf-8")


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


# -- text files: BOM, invisible characters, ids that are paths --------------------------------------------

BOM_FILES = [
    ("asr", "LibriSpeech/train-clean-100/3464/4831/3464-4831.trans.txt"),
    ("ml_multi", "ML-SUPERB/mls/eng/transcript_1h_train.txt"),
    ("sf", "SNIPS/all.iob.snips.txt"),
    ("ic", "FluentSpeechCommands/data/valid_data.csv"),
    ("sid", "VoxCeleb1/iden_split.txt"),
    ("sv", "VoxCeleb1/veri_test.txt"),
    ("er", "IEMOCAP/Session2/dialog/EmoEvaluation/Ses02F_impro01.txt"),
    ("ks", "SpeechCommands/speech_commands_v0.01/validation_list.txt"),
    ("sd", "Diarization/dev/wav.scp"),
    ("qbe", "quesst14Database/scoring/language_key_dev.lst"),
]


@pytest.mark.parametrize(
    ("task", "relative"),
    cases(BOM_FILES, [task for task, _ in BOM_FILES], {"asr", "sid", "sv", "er", "ks", "sd", "qbe"}),
)
def test_a_byte_order_mark_changes_nothing_in_any_reader(tmp_path, task, relative):
    copy_corpus(tmp_path, CORPUS[task])
    text_file = tmp_path / relative
    assert (MINI_SUPERB / relative).read_bytes()[:3] != b"\xef\xbb\xbf"
    text_file.write_bytes(b"\xef\xbb\xbf" + text_file.read_bytes())
    flawed, shipped = make_task(task, tmp_path), make_task(task, MINI_SUPERB)
    for split in flawed.splits:
        ours = [(u.id, u.path.name, u.label, u.text) for u in flawed.utterances(split)]
        assert ours == [(u.id, u.path.name, u.label, u.text) for u in shipped.utterances(split)]
    assert read_lines(text_file)[0][1] == (MINI_SUPERB / relative).read_text(encoding="utf-8").splitlines()[0]


def test_invisible_characters_in_an_id_are_shown_in_the_message(tmp_path):
    root = copy_corpus(tmp_path, "LibriSpeech")
    transcript = root / "dev-clean/1143/1143-1143.trans.txt"
    if not transcript.exists():
        transcript = sorted((root / "dev-clean").glob("*/*/*.trans.txt"))[0]
    edit_lines(transcript, lambda lines: [lines[0].replace("-", "-\u200b", 1), *lines[1:]])
    with pytest.raises(DataLayoutError, match=re.escape("\\u200b")):
        make_task("asr", tmp_path).check_data()
    assert shown("a\ufeffb") == "'a\\ufeffb'" and shown("plain id") == "plain id" and shown("x\t") == "'x\\t'"


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    root = copy_corpus(tmp_path, "VoxCeleb1")
    split_file = root / "iden_split.txt"
    split_file.write_bytes(split_file.read_bytes() + b"1 id10001/caf\xe9/00001.flac\n")
    lines = split_file.read_bytes().count(b"\n")
    with pytest.raises(DataLayoutError, match=rf"iden_split.txt' line {lines} is not UTF-8.*xe9"):
        make_task("sid", tmp_path).check_data()


TRAVERSAL = "../../../../../elsewhere/x-1-2"


def _first_line_id_replaced(position: int = 0, separator: str | None = None):
    """Replace the ``position``-th field of the first data line by the traversal id."""

    def change(lines: list[str]) -> list[str]:
        index = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith(("%", ",")))
        old = lines[index].split(separator)[position]
        new = TRAVERSAL + (".flac" if "." in old.rsplit("/", 1)[-1] else "")
        lines[index] = lines[index].replace(old, new, 1)
        return lines

    return change


# (task, file, change): every reader that builds a path from an id or a listed path
TRAVERSALS = [
    ("asr", "LibriSpeech/train-clean-100/3464/4831/3464-4831.trans.txt", _first_line_id_replaced()),
    ("ml_multi", "ML-SUPERB/mls/eng/transcript_1h_train.txt", _first_line_id_replaced()),
    ("sf", "SNIPS/all.iob.snips.txt", _first_line_id_replaced()),
    (
        "ic",
        "FluentSpeechCommands/data/train_data.csv",
        lambda ls: [ls[0], ls[1].replace("wavs/", TRAVERSAL + "/", 1), *ls[2:]],
    ),
    ("sid", "VoxCeleb1/iden_split.txt", _first_line_id_replaced(1)),
    ("sv", "VoxCeleb1/veri_test.txt", _first_line_id_replaced(2)),
    ("ks", "SpeechCommands/speech_commands_v0.01/validation_list.txt", _first_line_id_replaced()),
    ("sd", "Diarization/train/wav.scp", _first_line_id_replaced()),
    ("sd", "Diarization/dev/wav.scp", _first_line_id_replaced(1)),
    (
        "qbe",
        "quesst14Database/scoring/language_key_eval.lst",
        lambda ls: [ls[0].replace("quesst14Database/", "quesst14Database/" + TRAVERSAL + "/", 1), *ls[1:]],
    ),
]


@pytest.mark.parametrize(
    ("task", "relative", "change"), TRAVERSALS, ids=[f"{t}-{Path(r).name}" for t, r, _ in TRAVERSALS]
)
def test_an_id_that_leads_out_of_the_corpus_is_refused_naming_file_and_line(tmp_path, task, relative, change):
    copy_corpus(tmp_path, CORPUS[task])
    text_file = tmp_path / relative
    edit_lines(text_file, change)
    number = next(n for n, line in read_lines(text_file) if "elsewhere" in line)
    with pytest.raises(DataLayoutError) as caught:
        make_task(task, tmp_path).check_data()
    message = str(caught.value)
    assert f"{text_file}' line {number}" in message and "'..' component" in message and "elsewhere" in message


def test_iemocap_ids_and_absolute_or_nul_paths_are_refused_the_same_way(tmp_path):
    root = copy_corpus(tmp_path, "IEMOCAP")
    labels = root / "Session3/dialog/EmoEvaluation/Ses03F_impro01.txt"
    text = labels.read_text(encoding="utf-8")
    first_id = re.search(r"\t(Ses03\S+)\t", text)[1]
    labels.write_text(text.replace(first_id, TRAVERSAL, 1), encoding="utf-8")
    with pytest.raises(DataLayoutError, match=r"Ses03F_impro01.txt' line \d+: the id .*'\.\.' component"):
        make_task("er", tmp_path).check_data()
    listed = copy_corpus(tmp_path / "v", "VoxCeleb1") / "iden_split.txt"
    for bad, problem in (("/etc/x/y.flac", "absolute path"), ("id1/a\0b/c.flac", "NUL")):
        edit_lines(listed, lambda lines, bad=bad: [f"1 {bad}", *lines[1:]])
        with pytest.raises(DataLayoutError, match=rf"iden_split.txt' line 1: the listed path .*{problem}"):
            make_task("sid", tmp_path / "v").check_data()


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
        checked(task, tmp_path)
    assert str(path) in str(caught.value) and "2 NaN or infinite sample(s)" in str(caught.value)


@pytest.mark.parametrize("task", cases(["ks", "sv", "er"], ["ks", "sv", "er"], {"ks", "er"}))
def test_nan_audio_is_left_out_and_counted_with_skip(tmp_path, task):
    root = copy_corpus(tmp_path, CORPUS[task])
    split, path = _nan_clip(root, task)
    task_ = make_task(task, tmp_path, "task.on_nonfinite=skip")
    task_.check_data()
    before = len(task_.utterances(split))
    report = check_integrity(task_)
    assert report[split]["nonfinite"]["count"] == 1 and report[split]["nonfinite"]["policy"] == "left out"
    assert len(task_.utterances(split)) == before - 1
    assert path not in {u.path for u in task_.utterances(split)}
    assert sum(record["nonfinite"]["count"] for record in report.values()) == 1


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


def _iob(lines: list[str], scheme: str) -> list[str]:
    out = []
    for line in lines:
        text, tab, tags = line.partition("\t")
        tags = tags.split()
        slot_tags, converted = tags[1:-1], []
        for position, tag in enumerate(slot_tags):
            if tag == "O":
                converted.append(tag)
                continue
            starts = position == 0 or slot_tags[position - 1] != tag
            ends = position == len(slot_tags) - 1 or slot_tags[position + 1] != tag
            if scheme == "BIOES":
                prefix = ("S" if ends else "B") if starts else ("E" if ends else "I")
            else:
                prefix = "B" if starts else "I"
            converted.append(f"{prefix}-{tag}")
        out.append(text + tab + " ".join([tags[0], *converted, tags[-1]]))
    return out


@pytest.mark.parametrize("scheme", ["BIO", "BIOES"])
def test_iob_slot_tags_are_mapped_to_bare_slot_types_and_the_mapping_logged(tmp_path, scheme, caplog):
    root = copy_corpus(tmp_path, "SNIPS")
    edit_lines(root / "all.iob.snips.txt", lambda lines: _iob(lines, scheme))
    with caplog.at_level(logging.WARNING):
        ours = read_snips(root, "train")
    assert [u.tags for u in ours] == [u.tags for u in read_snips(MINI_SUPERB / "SNIPS", "train")]
    assert any("B-artist -> artist" in r.getMessage() for r in caplog.records)
    task = make_task("sf", tmp_path)
    task.check_data()
    record = task.review_targets("train")[0]["slot_tags"]
    assert record["mapping"]["B-artist"] == "artist" and record["count"] == len(record["mapping"]) > 8


@pytest.mark.parametrize(
    ("flaw", "expected"),
    [("mixed", "mixes bare slot types"), ("adjacent", "has two adjacent 'artist' slots")],
)
def test_iob_tags_that_bare_types_cannot_express_are_refused_naming_the_line(tmp_path, flaw, expected):
    root = copy_corpus(tmp_path, "SNIPS")
    path = root / "all.iob.snips.txt"
    lines = _iob(path.read_text(encoding="utf-8").splitlines(), "BIO")
    index = next(i for i, line in enumerate(lines) if "I-artist" in line)
    lines[index] = lines[index].replace("I-artist", "artist" if flaw == "mixed" else "B-artist", 1)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataLayoutError, match=rf"all.iob.snips.txt' line {index + 1} {expected}"):
        read_snips(root, "train")
