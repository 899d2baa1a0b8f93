"""Query-by-example spoken term detection (QbE): the QUESST 2014 database as distributed.

Layout of quesst14Database (the folder the archive unpacks to):

    Audio/quesst14_<nnnnn>.wav              the search documents (one set for dev and eval)
    dev_queries/quesst14_dev_<nnnn>.wav     dev queries
    eval_queries/quesst14_eval_<nnnn>.wav   eval (test) queries
    scoring/language_key_utterances.lst     '<db folder>/Audio/<file>.wav <language>' per document
    scoring/language_key_{dev,eval}.lst     the same for the queries
    scoring/groundtruth_quesst14_{dev,eval}/quesst14_{dev,eval}.rttm
        NIST RTTM 'LEXEME <document> <channel> <onset> <duration> <query id> <stype> <name> <conf>':
        one line per occurrence of a query in a document
    scoring/groundtruth_quesst14_{dev,eval}/quesst14.ecf.xml, quesst14_{dev,eval}.tlist.xml
        every document (<excerpt audio_filename=...>) and every query (<term termid=...>) of the ground
        truth, all languages: the trials QUESST's scorer (score-TWV-Cnxe.sh) scores

As in s3prl's quesst14_dtw recipe and torchaudio's QUESST14 dataset, the first component of every listed
path (the database folder) is dropped and the rest is read under the root, and SUPERB keeps the documents
and queries whose language is 'nnenglish' (``language=None`` keeps every language). A listed '.wav' that
is only present as '.flac' (the shipped mini corpus) is read as FLAC.

SUPERB scores the English detections with QUESST's own scorer against the FULL ground truth
(``docs/superb.md``: ``score-TWV-Cnxe.sh <expdir> groundtruth_quesst14_<split> -10``): its trials are every
query of the .tlist.xml that occurs at least once in the .rttm (the scorer removes the others, "Removing
unseen models") x every document of the .ecf.xml, and a trial the system did not score gets the default
score -10 (QUESST's scoring README). ``QbeSet.truth`` holds those lists.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections import Counter
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
from downstream.data.text import inside, read_lines, refuse_repeated_ids, shown

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
class GroundTruth:
    """The trials QUESST's scorer scores for one split: ``queries`` (tlist order) that occur at least once,
    every ``documents`` id (ecf order), and the (query id, document id) pairs where the query occurs."""

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    targets: frozenset[tuple[str, str]]


@dataclass(frozen=True)
class QbeSet:
    """The queries of one split, the documents they are searched in, and the (query id, document id)
    pairs where the query occurs. ``label`` of every utterance is its language."""

    queries: list[Utterance]
    documents: list[Utterance]
    targets: frozenset[tuple[str, str]]
    #: occurrences in the ground truth of a kept query in a document left out by the language filter
    targets_outside_language: int = 0
    #: every trial of the split's ground truth, all languages (what QUESST's scorer scores)
    truth: GroundTruth | None = None


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


def _xml_attributes(path: Path, what: str, tag: str, attribute: str) -> list[str]:
    """``attribute`` of every <``tag``> element of an XML file, in file order (DataLayoutError naming the
    file when it is missing, not XML, lists none, or lists one twice)."""
    require_file(path, what, LAYOUT)
    try:
        elements = ElementTree.parse(path).getroot().iter(tag)
        values = [element.attrib[attribute] for element in elements]
    except (ElementTree.ParseError, KeyError) as error:
        raise DataLayoutError(
            f"{what} '{path}' is not XML with <{tag} {attribute}=...> elements: {error}"
        ) from error
    if not values:
        raise DataLayoutError(f"{what} '{path}' lists no <{tag} {attribute}=...>; expected layout: {LAYOUT}")
    twice = sorted(value for value, count in Counter(values).items() if count > 1)
    if twice:
        raise DataLayoutError(f"{what} '{path}' lists {twice[:3]} twice")
    return values


def read_terms(truth_dir: Path, quesst_split: str) -> list[str]:
    """Every query id of the split's .tlist.xml, in file order."""
    return _xml_attributes(
        truth_dir / f"quesst14_{quesst_split}.tlist.xml", "QUESST 2014 term list", "term", "termid"
    )


def read_ground_truth(truth_dir: Path, quesst_split: str, pairs: list[tuple[str, str]]) -> GroundTruth:
    """The full trial list of ``truth_dir`` (groundtruth_quesst14_<split>): its .tlist.xml queries with an
    occurrence in ``pairs`` (the .rttm's) x its .ecf.xml documents (ids = audio file stems)."""
    terms = read_terms(truth_dir, quesst_split)
    excerpts = _xml_attributes(truth_dir / "quesst14.ecf.xml", "QUESST 2014 ecf", "excerpt", "audio_filename")
    documents = tuple(Path(name).stem for name in excerpts)
    occurring = {query for query, _ in pairs}
    unknown = sorted(
        {q for q, _ in pairs if q not in set(terms)} | {d for _, d in pairs if d not in set(documents)}
    )
    if unknown:
        raise DataLayoutError(
            f"QUESST 2014 ground truth '{truth_dir}': the .rttm names {unknown[:3]}, which the .tlist.xml / "
            ".ecf.xml do not list"
        )
    return GroundTruth(tuple(q for q in terms if q in occurring), documents, frozenset(pairs))


def read_quesst14(root: str | Path, split: str, language: str | None = SUPERB_LANGUAGE) -> QbeSet:
    """Queries of ``split`` ('dev' or 'test' = QUESST's eval), the documents and the ground truth.

    Utterances are sorted by id and probed (num_samples at 16 kHz); ``truth`` is the full ground truth
    (``read_ground_truth``). Raises DataLayoutError naming the file for a missing folder or list, a malformed
    line, a ground-truth line naming a query or document that the lists do not hold, a kept query or
    document that the .tlist.xml / .ecf.xml do not list, a split with no query or document of ``language``
    and listed audio that does not exist.
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
                f"QUESST 2014 ground truth '{rttm}' names {shown(unknown, True)}, which the language keys in "
                f"'{scoring}' do not list"
            )
    kept_queries = {query.id for query in queries}
    kept_documents = {doc.id for doc in documents}
    truth = read_ground_truth(rttm.parent, quesst_split, pairs)
    unlisted = sorted(
        (kept_queries - set(read_terms(rttm.parent, quesst_split))) | (kept_documents - set(truth.documents))
    )
    if unlisted:
        raise DataLayoutError(
            f"QUESST 2014: {len(unlisted)} searched query/document id(s) (e.g. {unlisted[:3]}) are not in the "
            f"ground truth's .tlist.xml / .ecf.xml under '{rttm.parent}', so the scorer would never score them"
        )
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
    return QbeSet(
        queries=probed[1], documents=probed[0], targets=targets, targets_outside_language=outside, truth=truth
    )
