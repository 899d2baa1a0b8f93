"""ML-SUPERB (multilingual ASR and LID) in its released layout: <root>/<dataset>/<language>/...

Every language folder of every source dataset (ALFFA, commonvoice, fleurs, mls, voxforge, ...) holds

    transcript_10min_train.txt   transcript_1h_train.txt   the two training sets (the 10-minute set is
                                                           part of the 1-hour set)
    transcript_10min_dev.txt     transcript_10min_test.txt  dev and test (shared by both durations)
    wav/<utterance id>.wav

with transcript lines '<utterance id> <field> <transcript>' split at the first two runs of whitespace
(the second field is not used, as in ML-SUPERB's data preparation). A line with an id and no transcript
is an empty transcript: a warning names the file and line (the tasks' policy for empty transcripts,
``downstream.tasks.ctc.CTCTask.review_targets``, then applies). The language is the folder's
three-letter code. The shipped mini corpus stores FLAC files and is read unchanged.

Monolingual ASR trains and validates on one (dataset, language) pair of ``MONOLINGUAL_SETS`` (ESPnet's 13
sets) and tests on that language in every dataset that has it; multilingual ASR and LID use every language
folder, the reserved (few-shot) languages only with the training utterances ``few_shot_selection`` lists
(ESPnet's data_prep.py, kept in ml_superb_recipe/few_shot.txt).
"""

from __future__ import annotations

import logging
import re
import string
from pathlib import Path

from downstream.data.corpus import (
    DataLayoutError,
    Utterance,
    audio_path,
    check_choice,
    probe_audio,
    raise_if_missing,
    require_dir,
    require_file,
)
from downstream.data.text import inside, read_lines, shown

logger = logging.getLogger(__name__)

DURATIONS = ("10min", "1h")
SPLITS = ("train", "dev", "test")
# ML-SUPERB's monolingual track: name -> (dataset folder of the training and dev sets, language folder), ESPnet
# egs2/ml_superb/asr1/local/single_lang_data_prep.py (SINGLE_LANG, LANG_TO_SELECTED_DATASET; the same 13 names,
# in this order, are run_mono.sh's loop). The language folder is the name's first three letters.
MONOLINGUAL_SETS = {
    "eng1": ("mls", "eng"),
    "eng2": ("nchlt", "eng"),
    "eng3": ("voxpopuli", "eng"),
    "fra1": ("voxforge", "fra"),
    "fra2": ("voxpopuli", "fra"),
    "deu1": ("swc", "deu"),
    "deu2": ("voxpopuli", "deu"),
    "rus": ("M-AILABS", "rus"),
    "swa": ("ALFFA", "swa"),
    "swe": ("NST", "swe"),
    "jpn": ("commonvoice", "jpn"),
    "cmn": ("fleurs", "cmn"),
    "xty": ("mexico-el", "xty"),
}
#: How ML-SUPERB's monolingual number averages the 13 sets: ESPnet local/mono_superb_score.py pairs each set
#: of its ``configs`` list with a language of its ``langs`` list (eng1-3 -> eng, fra1-2 -> fra, deu1-2 -> deu,
#: every other set its own), averages the error rates of each language's sets, then the 9 languages; cmn and
#: jpn enter with their word error rate (score_wer), the others with their CER. The language is the set's
#: language folder above (``monolingual_language``).
MONOLINGUAL_SCORE_SOURCE = "ESPnet egs2/ml_superb/asr1/local/mono_superb_score.py (configs, langs)"
#: Set names this project used before it followed ESPnet's list, and what replaces them.
RETIRED_SETS = {
    "deu": "it was swc/deu, now deu1 (ESPnet's recipe has two German sets: deu1 (swc/deu) and deu2 "
    "(voxpopuli/deu))",
    "sat": "ESPnet's monolingual sets have no Santali (commonvoice/sat); its 13 sets are "
    + " ".join(MONOLINGUAL_SETS),
}
#: The multilingual few-shot reservation (``few_shot_selection``): a data file copied from ESPnet's recipe.
FEW_SHOT_FILE = Path(__file__).with_name("ml_superb_recipe") / "few_shot.txt"
LAYOUT = (
    "<root>/<dataset>/<language>/transcript_{10min,1h}_train.txt, transcript_10min_dev.txt and "
    "transcript_10min_test.txt with lines '<utterance id> <field> <transcript>', and "
    "<root>/<dataset>/<language>/wav/<utterance id>.wav"
)
_BRACKETED = re.compile(r"\[[^()]*\]")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def transcript_file(split: str, duration: str) -> str:
    """The transcript file name of ``split`` for a ``duration`` ('10min' or '1h') training set."""
    check_choice("ML-SUPERB", "split", split, SPLITS)
    check_choice("ML-SUPERB", "duration", duration, DURATIONS)
    return f"transcript_{duration}_train.txt" if split == "train" else f"transcript_10min_{split}.txt"


def normalize_transcript(text: str, drop_bracketed: bool = True) -> str:
    """ML-SUPERB's text normalisation: drop '[...]' spans (multilingual preparation only), delete ASCII
    punctuation, upper-case, and collapse whitespace to single spaces."""
    if drop_bracketed:
        text = _BRACKETED.sub("", text)
    return " ".join(text.translate(_PUNCTUATION).upper().split())


def check_monolingual_set(name: str) -> None:
    """ValueError unless ``name`` is one of ESPnet's monolingual sets; a retired name ('deu', 'sat') is told
    which sets replace it."""
    if name in RETIRED_SETS:
        raise ValueError(
            f"ML-SUPERB monolingual set {name!r} no longer exists: {RETIRED_SETS[name]} "
            f"(task.language must be one of {', '.join(MONOLINGUAL_SETS)})"
        )
    check_choice("ML-SUPERB", "monolingual set (task.language)", name, tuple(MONOLINGUAL_SETS))


def monolingual_language(name: str) -> str:
    """The language a monolingual set counts for in ML-SUPERB's average (``MONOLINGUAL_SCORE_SOURCE``):
    'eng2' -> 'eng', 'xty' -> 'xty'. KeyError for a name that is not one of ``MONOLINGUAL_SETS``."""
    return MONOLINGUAL_SETS[name][1]


def few_shot_selection(path: Path = FEW_SHOT_FILE) -> dict[str, frozenset[str]]:
    """ML-SUPERB's reserved (few-shot) languages -> the training utterance ids each keeps, from ``path``
    (lines '<language> <utterance id>', '#' comments; ESPnet data_prep.py's RESERVE_LANG and
    FEW_SHOT_SELECTED_DATA). Raises DataLayoutError for a malformed line, naming the file and line."""
    selection: dict[str, set[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise DataLayoutError(f"{path} line {number}: expected '<language> <utterance id>', got {line!r}")
        selection.setdefault(fields[0], set()).add(fields[1])
    return {language: frozenset(ids) for language, ids in selection.items()}


def reserve_few_shot(
    utterances: list[Utterance], selection: dict[str, frozenset[str]]
) -> tuple[list[Utterance], list[Utterance]]:
    """(kept, left out) training utterances under ML-SUPERB's few-shot reservation: an utterance of a
    reserved language (a key of ``selection``, its ``label``) is kept only when its id is selected, as
    ESPnet's data_prep.py does for the multilingual training set."""
    kept, left_out = [], []
    for utterance in utterances:
        reserved = selection.get(utterance.label or "")
        (left_out if reserved is not None and utterance.id not in reserved else kept).append(utterance)
    return kept, left_out


def language_folders(root: str | Path) -> list[tuple[str, str, Path]]:
    """(dataset, language, folder) of every <root>/<dataset>/<language>/ folder, sorted."""
    root = require_dir(Path(root), "ML-SUPERB root", LAYOUT)
    folders = [
        (dataset.name, language.name, language)
        for dataset in sorted(root.iterdir())
        if dataset.is_dir() and not dataset.name.startswith(".")
        for language in sorted(dataset.iterdir())
        if language.is_dir() and not language.name.startswith(".")
    ]
    if not folders:
        raise DataLayoutError(
            f"ML-SUPERB root '{root}' holds no <dataset>/<language>/ folder; expected: {LAYOUT}"
        )
    return folders


def read_ml_superb(
    root: str | Path, split: str, duration: str = "1h", monolingual: str | None = None
) -> list[Utterance]:
    """The utterances of ``split`` sorted by id: ``text`` the transcript as written, ``label`` the language.

    ``duration`` picks the training set (dev and test are the same for both). ``monolingual`` (a key of
    MONOLINGUAL_SETS, e.g. 'eng1') restricts train and dev to that pair's dataset and language and test to
    that language in every dataset; None reads every language folder (multilingual). Raises
    DataLayoutError for a missing root, transcript file or audio file. A line without a transcript gives
    ``text`` "" and a warning naming the file and line.
    """
    file_name = transcript_file(split, duration)
    if monolingual is not None:
        check_monolingual_set(monolingual)
    folders = language_folders(root)
    if monolingual is not None:
        dataset, language = MONOLINGUAL_SETS[monolingual]
        folders = [
            entry for entry in folders if entry[1] == language and (split == "test" or entry[0] == dataset)
        ]
        if not folders:
            raise DataLayoutError(
                f"ML-SUPERB root '{root}' has no {dataset}/{language}/ folder (monolingual set {monolingual!r}); "
                f"expected layout: {LAYOUT}"
            )
    entries: list[tuple[str, str, Path, str]] = []  # (utterance id, transcript, audio stem, source)
    languages: list[str] = []
    for _, language, folder in folders:
        path = require_file(folder / file_name, "ML-SUPERB transcript file", LAYOUT)
        for line_number, line in read_lines(path):
            fields = line.strip().split(maxsplit=2)
            inside(fields[0], path, line_number)
            if len(fields) < 3:
                logger.warning(
                    "ML-SUPERB transcript file '%s' line %d: the transcript of utterance %s is empty (%r); "
                    "empty transcripts are left out of training and kept in dev/test",
                    path,
                    line_number,
                    shown(fields[0]),
                    line,
                )
                fields.extend([""] * (3 - len(fields)))
            entries.append((fields[0], fields[2], folder / "wav" / fields[0], f"{path}:{line_number}"))
            languages.append(language)
    if not entries:
        raise DataLayoutError(f"ML-SUPERB {split} ({file_name}) lists no utterance under '{root}'")
    paths = [audio_path(stem) for _, _, stem, _ in entries]
    raise_if_missing(paths, f"ML-SUPERB {split} ({file_name})", LAYOUT)
    infos = probe_audio(paths, f"ML-SUPERB/{monolingual or 'multilingual'}-{duration}-{split}")
    utterances = [
        Utterance(
            id=utterance_id, path=path, num_samples=info.num_samples, text=text, label=language, source=source
        )
        for (utterance_id, text, _, source), language, path, info in zip(
            entries, languages, paths, infos, strict=True
        )
    ]
    return sorted(utterances, key=lambda utterance: utterance.id)
