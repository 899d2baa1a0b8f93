"""Query-by-example spoken term detection (QbE): the QUESST 2014 database as distributed.

Layout of quesst14Database (the folder the archive unpacks to):

    Audio/quesst14_<nnnnn>.wav              the search documents (one set for dev and eval)
    dev_queries/quesst14_dev_<nnnn>.wav     dev queries
    eval_queries/quesst14_eval_<nnnn>.wav   eval (test) queries
    scoring/language_key_utterances.lst     '<db folder>/Audio/<file>.wav <language>' per document
    scoring/language_key_{dev,eval}.lst     the same for the queries
    scoring/groundtruth_quesst14_{dev,eval}/quesst14_{dev,eval}.rttm
        NIST RTTM 'LEXEME <document> <channel> <onset> <duration> <query id> <stype> <name> <conf>':
        one line per occurrence of a query in a document (plus the .ecf.xml and .tlist.xml the official
        scorer reads)

As in s3prl's quesst14_dtw recipe and torchaudio's QUESST14 dataset, the first component of every listed
path (the database folder) is dropped and the rest is read under the root, and SUPERB keeps the documents
and queries whose language is 'nnenglish' (``language=None`` keeps every language). A listed '.wav' that
is only present as '.flac' (the shipped mini corpus) is read as FLAC.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from downstream.data.text import inside, read_lines, refuse_repeated_ids

#: Our split names -> QUESST 2014's (the eval queries are SUPERB's test set).
SPLITS = {"dev": "dev", "test": "eval"}
SUPERB_LANGUAGE = "nnenglish"
LAYOUT = (
    "<root>/Audio/<document>.wav, <root>/{dev,eval}_queries/<query>.wav, "
    "<root>/scoring/language_key_{utterances,dev,eval}.lst with lines '<db folder>/<path under root> <language>', "
    "and <root>/scoring/groundtruth_quesst14_{dev,eval}/quesst14_{dev,eval}.rttm with lines "
    "'LEXEME <document> <channel> <onset> <duration> <query> <stype> <name> <conf>'"
)


@dataclass(frozen=True)
class QbeSet:
    """The queries of one split, the documents they are searched in, and the (query id, document id)
    pairs where the query occurs. ``label`` of every utterance is its language."""

    queries: list[Utterance]
    documents: list[Utterance]
    targets: frozenset[tuple[str, str]]
    #: occurrences in the ground truth of a kept query in a document left out by the language filter
    targets_outside_language: int = 0


def read_language_key(path: Path, root: Path, language: str | None) -> list[Utterance]:
    """Utterances listed in a language_key_*.lst file (audio not probed yet: num_samples 0)."""
    require_file(path, "QUESST 2014 language key", LAYOUT)
    utterances = []
    listed: list[tuple[str, str]] = []
    for line_number, line in read_lines(path):
        fields = line.split()
        if len(fields) != 2 or "/" not in fields[0]:
            raise DataLayoutError(
                f"QUESST 2014 language key '{path}' line {line_number} is not "
                f"'<db folder>/<path> <language>': {line!r}"
            )
        relative = Path(inside(fields[0].split("/", 1)[1], path, line_number, "listed path"))
        utterance_id = relative.stem
        listed.append((utterance_id, f"{path}:{line_number}"))
        if language is None or fields[1] == language:
            utterances.append(
                Utterance(
                    utterance_id,
                    audio_path(root / relative.with_suffix("")),
                    0,
                    label=fields[1],
                    source=listed[-1][1],
                )
            )
    refuse_repeated_ids(listed, f"QUESST 2014 language key '{path}'")
    return utterances


def read_lexeme_rttm(path: Path) -> list[tuple[str, str]]:
    """(query id, document id) of every LEXEME line of a QUESST ground-truth RTTM, in file order."""
    require_file(path, "QUESST 2014 ground truth", LAYOUT)
    pairs = []
    for line_number, line in read_lines(path):
        fields = line.split()
        if fields[0] != "LEXEME":
            continue
        if len(fields) < 9:
            raise DataLayoutError(
                f"QUESST 2014 ground truth '{path}' line {line_number} is not 'LEXEME <document> <channel> "
                f"<onset> <duration> <query> <stype> <name> <conf>': {line!r}"
            )
        pairs.append((fields[5], fields[1]))
    return pairs


def read_quesst14(root: str | Path, split: str, language: str | None = SUPERB_LANGUAGE) -> QbeSet:
    """Queries of ``split`` ('dev' or 'test' = QUESST's eval), the documents and the ground truth.

    Utterances are sorted by id and probed (num_samples at 16 kHz). Raises DataLayoutError naming the file
    for a missing folder or list, a malformed line, a ground-truth line naming a query or document that the
    lists do not hold, a split with no query or document of ``language`` and listed audio that does not
    exist.
    """
    check_choice("read_quesst14", "split", split, tuple(SPLITS))
    quesst_split = SPLITS[split]
    root = require_dir(Path(root), "QUESST 2014 root", LAYOUT)
    scoring = require_dir(root / "scoring", "QUESST 2014 scoring folder", LAYOUT)
    all_documents = read_language_key(scoring / "language_key_utterances.lst", root, None)
    all_queries = read_language_key(scoring / f"language_key_{quesst_split}.lst", root, None)
    documents = [doc for doc in all_documents if language is None or doc.label == language]
    queries = [query for query in all_queries if language is None or query.label == language]
    wanted = "any language" if language is None else f"language '{language}'"
    for kind, kept, listed in (("document", documents, "utterances"), ("query", queries, quesst_split)):
        if not kept:
            raise DataLayoutError(
                f"'{scoring / f'language_key_{listed}.lst'}' lists no {kind} of {wanted}; expected layout: {LAYOUT}"
            )
    rttm = scoring / f"groundtruth_quesst14_{quesst_split}" / f"quesst14_{quesst_split}.rttm"
    pairs = read_lexeme_rttm(rttm)
    known_queries = {query.id for query in all_queries}
    known_documents = {doc.id for doc in all_documents}
    for query_id, document_id in pairs:
        if query_id not in known_queries or document_id not in known_documents:
            unknown = query_id if query_id not in known_queries else document_id
            raise DataLayoutError(
                f"QUESST 2014 ground truth '{rttm}' names '{unknown}', which the language keys in "
                f"'{scoring}' do not list"
            )
    kept_queries = {query.id for query in queries}
    kept_documents = {doc.id for doc in documents}
    targets = frozenset(pair for pair in pairs if pair[0] in kept_queries and pair[1] in kept_documents)
    outside = sum(1 for q, d in set(pairs) if q in kept_queries and d not in kept_documents)

    probed = []
    for kind, utterances in (("documents", documents), (f"{quesst_split} queries", queries)):
        paths = [utterance.path for utterance in utterances]
        raise_if_missing(paths, f"QUESST 2014 {kind}", LAYOUT)
        infos = probe_audio(paths, f"QUESST14/{kind.replace(' ', '_')}")
        probed.append(
            sorted(
                (
                    Utterance(u.id, u.path, info.num_samples, label=u.label, source=u.source)
                    for u, info in zip(utterances, infos, strict=True)
                ),
                key=lambda utterance: utterance.id,
            )
        )
    return QbeSet(queries=probed[1], documents=probed[0], targets=targets, targets_outside_language=outside)
