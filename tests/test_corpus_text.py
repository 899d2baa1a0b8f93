"""Corpus text files (downstream/data/text.py) in every reader, on flawed copies of the shipped mini corpus:
a byte-order mark, invisible characters, bytes that are not UTF-8, ids that lead out of the corpus, and
SNIPS slot tags in IOB/BIO/BIOES form."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile

from downstream.data.audio import AudioDecodeError, load_audio
from downstream.data.corpus import DataLayoutError
from downstream.data.snips import read_snips
from downstream.data.text import read_lines, shown
from tests.helpers import CORPUS, MINI_SUPERB, cases, copy_corpus, edit_lines, make_task

pytestmark = pytest.mark.usefixtures("module_cache")


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


def _ic_listed_with_a_bom(root: Path) -> str:
    """A dev row of FSC's valid_data.csv naming a file whose name starts with a BOM, with an action that
    training lacks; its id."""
    csv_file = root / "data/valid_data.csv"
    lines = csv_file.read_text(encoding="utf-8").splitlines()
    fields = lines[1].split(",")
    folder, name = fields[1].rsplit("/", 1)
    fields[1] = f"{folder}/\ufeff{name}"
    (root / fields[1]).symlink_to((root / folder / name).resolve())
    fields[4] = "dance"
    csv_file.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n", encoding="utf-8")
    return fields[1].removesuffix(".flac")


def _sid_speaker_with_a_zero_width_space(root: Path) -> str:
    """A dev line of iden_split.txt naming a speaker folder with a zero-width space (a speaker training
    lacks); its id."""
    split_file = root / "iden_split.txt"
    lines = split_file.read_text(encoding="utf-8").splitlines()
    position = next(i for i, line in enumerate(lines) if line.startswith("2 "))
    listed = lines[position].split()[1]
    speaker, rest = listed.split("/", 1)
    renamed = f"{speaker[:3]}\u200b{speaker[3:]}/{rest}"
    (root / "wav" / renamed).parent.mkdir(parents=True)
    (root / "wav" / renamed).symlink_to((root / "wav" / listed).resolve())
    lines[position] = f"2 {renamed}"
    split_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return renamed.removesuffix(".flac")


@pytest.mark.parametrize(
    ("task", "flaw"),
    cases(
        [("ic", _ic_listed_with_a_bom), ("sid", _sid_speaker_with_a_zero_width_space)], ["ic", "sid"], set()
    ),
)
def test_a_task_message_shows_invisible_characters_of_an_id_read_from_a_text_file(tmp_path, task, flaw):
    utterance_id = flaw(copy_corpus(tmp_path, CORPUS[task]))
    with pytest.raises(ValueError, match="which the training split does not have") as caught:
        make_task(task, tmp_path).check_data()
    assert repr(utterance_id) in str(caught.value)  # the escape, not the invisible character itself
    assert utterance_id not in str(caught.value)


def test_audio_messages_show_invisible_characters_of_a_path(tmp_path):
    path = tmp_path / "a\ufeffb.wav"
    soundfile.write(str(path), np.array([0.0, np.nan], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError) as caught:
        load_audio(path)
    assert "a\\ufeffb.wav' holds 1 NaN" in str(caught.value) and "\ufeff" not in str(caught.value)
    assert shown(tmp_path / "a.wav", quoted=True) == f"'{tmp_path / 'a.wav'}'"


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


def test_ml_superb_empty_transcript_warning_shows_invisible_characters_of_its_id(tmp_path, caplog):
    """The warning about an empty transcript names the id through text.shown (a zero-width space shows as
    its escape), as every message that prints an id read from a text file."""
    from downstream.data.ml_superb import read_ml_superb

    copy_corpus(tmp_path, "ML-SUPERB")
    transcript = tmp_path / "ML-SUPERB/mls/eng/transcript_1h_train.txt"
    edit_lines(transcript, lambda lines: [f"{lines[0].split()[0]}\u200b", *lines[1:]])
    with caplog.at_level("WARNING"), pytest.raises(DataLayoutError):  # the id names no audio file
        read_ml_superb(tmp_path / "ML-SUPERB", "train")
    assert "\\u200b" in caplog.text and "\u200b" not in caplog.text
