"""mini-SUPERB stand-ins for speaker diarization (SD) and query-by-example search (QbE).

Called by scripts/make_mini_superb.py (every run; or ``--only sd,qbe`` to rewrite just these two into an
existing corpus, leaving every other file as it is). Each corpus draws from its own seeded random stream.

SD, ``Diarization/{train,dev,test}/``: Kaldi-style data folders as s3prl's diarization recipe reads them
(wav.scp, segments, utt2spk, spk2utt, reco2dur, rttm, audio in wav/). Every recording mixes two speakers
(one male and one female espeak-ng voice, so that the mini task is learnable in seconds) saying
alternating sentences; the gap between consecutive turns is drawn from SD_GAP seconds, so negative gaps
make overlapped speech and positive ones silence. Turn boundaries are the first and last sample above
SILENCE_LEVEL of each sentence's peak, rounded to 10 ms; rttm and segments hold the same turns. The
splits have different speakers (as Libri2Mix's train-100 / dev / test).

QbE, ``quesst14Database/``: the QUESST 2014 layout (Audio/, dev_queries/, eval_queries/, scoring/ with
the language keys and groundtruth_quesst14_{dev,eval}/ holding .ecf.xml, .tlist.xml and .rttm). Queries
are two-word terms (QBE_ADJECTIVES x QBE_NOUNS) said by their own speakers; each term occurs in
QbeSizes.occurrences documents, said by other speakers as filler words + term + filler words (three
espeak-ng calls joined by short pauses, so the term's time in the document is exact), and some documents
hold no term. A few documents and queries are Albanian (espeak-ng 'sq'), listed as 'albanian' in the
language keys, so that SUPERB's English-only filter is exercised; each split's Albanian query (a fixed term,
ALBANIAN_TERMS) occurs in QbeSizes.albanian_occurrences Albanian documents, so the full ground truth that
QUESST's scorer reads holds occurring queries SUPERB never searches (scored -10, as on the real corpus).
Those documents and queries draw from a stream of their own, so every English file is the same as without
them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scripts.mini_superb.common import (
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    NEUTRAL,
    SAMPLE_RATE,
    SEED,
    SILENCE_LEVEL,
    WORDS,
    Speaker,
    SpeakerPool,
    Synthesizer,
    make_sentence,
    write_flac,
)

CORPORA = ("sd", "qbe")
SD_GAP = (-0.6, 0.9)  # seconds between the end of a turn and the start of the next (negative: overlap)
SD_EDGE = (0.2, 0.8)  # silence before the first and after the last turn, seconds
QBE_ADJECTIVES = (
    "GOLDEN",
    "SILVER",
    "HEAVY",
    "GENTLE",
    "BRIGHT",
    "QUIET",
    "CLEVER",
    "EMPTY",
    "YOUNG",
    "WILD",
)
QBE_NOUNS = (
    "BRIDGE",
    "MOUNTAIN",
    "TEACHER",
    "WINDOW",
    "VILLAGE",
    "GARDEN",
    "SAILOR",
    "PICTURE",
    "LETTER",
    "FOREST",
)
QBE_PAUSE = 0.12  # seconds between the parts of a document
ALBANIAN_WORDS = [
    "shtëpi",
    "mace",
    "qen",
    "i",
    "madh",
    "i",
    "vogël",
    "bukë",
    "ujë",
    "shkollë",
    "mirë",
    "sot",
    "nesër",
    "nënë",
    "baba",
    "lumë",
    "mal",
]
#: The Albanian query term of each split (words of ALBANIAN_WORDS), said inside some Albanian documents.
ALBANIAN_TERMS = {"dev": "shkollë e madhe", "eval": "nënë e mirë"}
README_MARK = "<!-- {name}: written by scripts/mini_superb/sd_qbe.py -->"


@dataclass(frozen=True)
class SdSizes:
    recordings: tuple[int, int, int] = (40, 8, 8)  # train, dev, test
    speakers: tuple[int, int, int] = (8, 4, 4)  # per split, half male and half female
    turns: int = 4  # per recording, alternating speakers


@dataclass(frozen=True)
class QbeSizes:
    terms: tuple[int, int] = (8, 8)  # dev, eval queries (distinct terms)
    occurrences: int = 3  # documents holding each term
    distractors: int = 16  # English documents without any term
    albanian: tuple[int, int, int] = (6, 1, 1)  # documents, dev queries, eval queries
    albanian_occurrences: int = (
        2  # Albanian documents holding each split's Albanian term (when it has a query)
    )
    document_speakers: int = 6
    query_speakers: int = 4


TINY_SD = SdSizes(recordings=(2, 1, 1), speakers=(2, 2, 2), turns=3)
TINY_QBE = QbeSizes(
    terms=(2, 2),
    occurrences=1,
    distractors=1,
    albanian=(1, 1, 0),
    albanian_occurrences=1,
    document_speakers=2,
    query_speakers=2,
)


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) sample above SILENCE_LEVEL of the peak: where the speaker is heard."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL * np.abs(audio).max())
    return int(loud[0]), int(loud[-1]) + 1


def write_sd(out: Path, sizes: SdSizes, synthesize: Synthesizer) -> dict:
    """Two-speaker mixtures in Kaldi-style folders; returns per split (recordings, speakers, seconds,
    fraction of speech time with both speakers)."""
    rng = random.Random(f"{SEED}-sd")
    pool = SpeakerPool(rng)
    speaker_ids = iter(rng.sample(range(100, 9000), sum(sizes.speakers)))
    summary = {}
    number = 0
    for split, count, num_speakers in zip(
        ("train", "dev", "test"), sizes.recordings, sizes.speakers, strict=True
    ):
        half = num_speakers // 2
        males = [(f"{next(speaker_ids)}", s) for s in pool.draw(half, MALE_VARIANTS)]
        females = [(f"{next(speaker_ids)}", s) for s in pool.draw(num_speakers - half, FEMALE_VARIANTS)]
        folder = out / "Diarization" / split
        tables: dict[str, list[str]] = {
            name: [] for name in ("wav.scp", "segments", "utt2spk", "reco2dur", "rttm")
        }
        spk2utt: dict[str, list[str]] = {}
        seconds = overlap = speech = 0.0
        for _ in range(count):
            number += 1
            pair = [rng.choice(males), rng.choice(females)]
            rng.shuffle(pair)
            recording = f"{pair[0][0]}-{pair[1][0]}-{number:04d}"
            clock = rng.uniform(*SD_EDGE)
            placed = []  # (speaker id, start sample, audio)
            speaker_free = [0.0, 0.0]  # when each speaker's last turn ended (a speaker never overlaps itself)
            for turn in range(sizes.turns):
                speaker_id, speaker = pair[turn % 2]
                audio = synthesize(make_sentence(rng), speaker, NEUTRAL, rng)
                first, last = speech_bounds(audio)
                clock = max(clock, speaker_free[turn % 2] + 0.1)
                start = max(round(clock * SAMPLE_RATE) - first, 0)
                placed.append((speaker_id, start, audio))
                speaker_free[turn % 2] = (start + last) / SAMPLE_RATE
                clock = speaker_free[turn % 2] + rng.uniform(*SD_GAP)
            length = max(start + len(audio) for _, start, audio in placed) + round(
                rng.uniform(*SD_EDGE) * SAMPLE_RATE
            )
            mixture = np.zeros(length)
            activity = np.zeros((length // 160 + 1, 2), dtype=bool)  # 10 ms grid for the overlap statistic
            for turn, (speaker_id, start, audio) in enumerate(placed):
                mixture[start : start + len(audio)] += audio
                first, last = speech_bounds(audio)
                onset, offset = (
                    round((start + first) / SAMPLE_RATE, 2),
                    round((start + last) / SAMPLE_RATE, 2),
                )
                utterance = f"{recording}_{speaker_id}_{turn}"
                tables["segments"].append(f"{utterance} {recording} {onset:.2f} {offset:.2f}")
                tables["utt2spk"].append(f"{utterance} {speaker_id}")
                tables["rttm"].append(
                    f"SPEAKER {recording} 1 {onset:.2f} {offset - onset:.2f} <NA> <NA> {speaker_id} <NA> <NA>"
                )
                spk2utt.setdefault(speaker_id, []).append(utterance)
                activity[round(onset * 100) : round(offset * 100), turn % 2] = True
            duration = write_flac(folder / "wav" / f"{recording}.flac", mixture)
            tables["wav.scp"].append(f"{recording} wav/{recording}.flac")
            tables["reco2dur"].append(f"{recording} {duration:.3f}")
            seconds += duration
            overlap += activity.all(axis=1).sum() / 100
            speech += activity.any(axis=1).sum() / 100
        for name, lines in tables.items():
            (folder / name).write_text("\n".join(sorted(lines)) + "\n")
        (folder / "spk2utt").write_text(
            "".join(f"{speaker} {' '.join(sorted(utts))}\n" for speaker, utts in sorted(spk2utt.items()))
        )
        summary[split] = (count, num_speakers, seconds, overlap / speech)
    return summary


def _join(parts: list[np.ndarray], pause: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Concatenate with ``pause`` s of silence between parts; returns the audio and each part's
    (onset, duration) in seconds of audible speech."""
    gap = np.zeros(round(pause * SAMPLE_RATE))
    pieces, spans, position = [], [], 0
    for k, part in enumerate(parts):
        if k:
            pieces.append(gap)
            position += len(gap)
        first, last = speech_bounds(part)
        spans.append(((position + first) / SAMPLE_RATE, (last - first) / SAMPLE_RATE))
        pieces.append(part)
        position += len(part)
    return np.concatenate(pieces), spans


def _filler(rng: random.Random, words: int) -> str:
    return " ".join(
        rng.choice(WORDS[slot]) for slot in rng.sample(["DET", "NAME", "VT", "VI", "ADV", "PREP"], words)
    )


def write_qbe(out: Path, sizes: QbeSizes, synthesize: Synthesizer) -> dict:
    """QUESST 2014 layout; returns counts and minutes for the README."""
    rng = random.Random(f"{SEED}-qbe")
    pool = SpeakerPool(rng)
    doc_speakers = pool.draw(sizes.document_speakers // 2, MALE_VARIANTS) + pool.draw(
        sizes.document_speakers - sizes.document_speakers // 2, FEMALE_VARIANTS
    )
    query_speakers = pool.draw(sizes.query_speakers // 2, MALE_VARIANTS) + pool.draw(
        sizes.query_speakers - sizes.query_speakers // 2, FEMALE_VARIANTS
    )
    albanian = [Speaker("sq", s.variant, s.pitch, s.rate) for s in (doc_speakers[0], query_speakers[-1])]
    pairs = [f"{adjective} {noun}" for adjective in QBE_ADJECTIVES for noun in QBE_NOUNS]
    terms = rng.sample(pairs, sum(sizes.terms))
    root = out / "quesst14Database"
    # Documents: (text parts, speaker, the term it holds or None, language)
    plans: list[tuple[list[str], Speaker, str | None, str]] = []
    for term in terms:
        for _ in range(sizes.occurrences):
            parts = [_filler(rng, rng.randint(1, 3)), term.lower(), _filler(rng, rng.randint(1, 3))]
            plans.append((parts, rng.choice(doc_speakers), term, "nnenglish"))
    for _ in range(sizes.distractors):
        plans.append(([make_sentence(rng)], rng.choice(doc_speakers), None, "nnenglish"))
    held_terms = [
        ALBANIAN_TERMS[split]
        for split, queries in (("dev", sizes.albanian[1]), ("eval", sizes.albanian[2]))
        if queries
        for _ in range(sizes.albanian_occurrences)
    ]
    for number in range(sizes.albanian[0]):
        words = rng.sample(ALBANIAN_WORDS, 4)
        if number < len(held_terms):
            plans.append(
                (
                    [" ".join(words[:2]), held_terms[number], " ".join(words[2:])],
                    albanian[0],
                    held_terms[number],
                    "albanian",
                )
            )
        else:
            plans.append(([" ".join(words)], albanian[0], None, "albanian"))
    rng.shuffle(plans)
    # the parts after the first of an Albanian document holding a term draw from their own stream, so the
    # main stream (and every English file) is the same as when Albanian documents were one part
    albanian_rng = random.Random(f"{SEED}-qbe-albanian")
    key_lines, occurrences, excerpts = [], [], []
    seconds = 0.0
    for number, (parts, speaker, term, language) in enumerate(plans, 1):
        document = f"quesst14_{number:05d}"
        audio, spans = _join(
            [
                synthesize(part, speaker, NEUTRAL, albanian_rng if language == "albanian" and k else rng)
                for k, part in enumerate(parts)
            ],
            QBE_PAUSE,
        )
        duration = write_flac(root / "Audio" / f"{document}.flac", audio)
        seconds += duration
        key_lines.append(f"quesst14Database/Audio/{document}.flac {language}")
        excerpts.append(
            f'  <excerpt audio_filename="Audio/{document}.flac" channel="1" tbeg="0.000" dur="{duration:.3f}" '
            'source_type="splitcts"/>'
        )
        if term is not None:
            occurrences.append((term, document, spans[1]))
    (root / "scoring").mkdir(parents=True, exist_ok=True)
    (root / "scoring" / "language_key_utterances.lst").write_text("\n".join(key_lines) + "\n")
    ecf = (
        f'<ecf source_signal_duration="{seconds:.3f}" language="multiple" version="mini-SUPERB">\n'
        + "\n".join(excerpts)
        + "\n</ecf>\n"
    )
    summary = {"documents": (len(plans), seconds / 60)}
    query_terms = {"dev": terms[: sizes.terms[0]], "eval": terms[sizes.terms[0] :]}
    for split, split_terms in query_terms.items():
        lines, rttm, tlist = [], [], []
        query_seconds = 0.0
        entries = [(term, "nnenglish") for term in split_terms]
        rng.sample(ALBANIAN_WORDS, 2)  # the draw the Albanian query text once came from: kept for the stream
        entries += [(ALBANIAN_TERMS[split], "albanian")] * sizes.albanian[1 if split == "dev" else 2]
        for number, (term, language) in enumerate(entries, 1):
            query = f"quesst14_{split}_{number:04d}"
            speaker = albanian[1] if language == "albanian" else rng.choice(query_speakers)
            audio = synthesize(term.lower(), speaker, NEUTRAL, rng)
            first, last = speech_bounds(audio)
            query_seconds += write_flac(root / f"{split}_queries" / f"{query}.flac", audio[first:last])
            lines.append(f"quesst14Database/{split}_queries/{query}.flac {language}")
            tlist.append(f'  <term termid="{query}"><termtext>{query}</termtext></term>')
            for held, document, (onset, length) in occurrences:
                if held == term:
                    rttm.append(f"LEXEME {document} 1 {onset:.3f} {length:.3f} {query} lex <NA> <NA>")
        (root / "scoring" / f"language_key_{split}.lst").write_text("\n".join(lines) + "\n")
        truth = root / "scoring" / f"groundtruth_quesst14_{split}"
        truth.mkdir(parents=True, exist_ok=True)
        (truth / "quesst14.ecf.xml").write_text(ecf)
        (truth / f"quesst14_{split}.tlist.xml").write_text(
            '<termlist ecf_filename="quesst14.ecf.xml" version="mini-SUPERB" language="multiple" encoding="UTF-8">\n'
            + "\n".join(tlist)
            + "\n</termlist>\n"
        )
        (truth / f"quesst14_{split}.rttm").write_text("\n".join(sorted(rttm)) + "\n")
        summary[split] = (len(entries), len(rttm), query_seconds / 60)
    return summary


def write(out: Path, names: tuple[str, ...], tiny: bool, synthesize: Synthesizer) -> dict[str, str]:
    """Write the corpora ``names`` (of CORPORA) under ``out`` (each one's folder replaced); returns the
    README section of each."""
    import shutil

    sections = {}
    if "sd" in names:
        shutil.rmtree(out / "Diarization", ignore_errors=True)
        sd = write_sd(out, TINY_SD if tiny else SdSizes(), synthesize)
        rows = "\n".join(
            f"| Diarization {split} | {n} recordings | {speakers} | {sec / 60:.1f} | {100 * both:.0f}% |"
            for split, (n, speakers, sec, both) in sd.items()
        )
        sections["sd"] = (
            "SD (speaker diarization): `Diarization/{train,dev,test}/` are Kaldi-style data folders as s3prl's "
            "diarization recipe reads them (`wav.scp`, `segments`, `utt2spk`, `spk2utt`, `reco2dur`, `rttm`; audio in "
            "`wav/`). Each recording mixes one male and one female espeak-ng speaker saying alternating sentences, "
            f"with gaps of {SD_GAP[0]} to {SD_GAP[1]} s between turns (negative gaps overlap); the splits have "
            "different speakers.\n\n| part | size | speakers | minutes | speech with both speakers |\n"
            f"|---|---|---|---|---|\n{rows}\n"
        )
    if "qbe" in names:
        shutil.rmtree(out / "quesst14Database", ignore_errors=True)
        qbe = write_qbe(out, TINY_QBE if tiny else QbeSizes(), synthesize)
        docs, doc_minutes = qbe["documents"]
        sections["qbe"] = (
            "QbE (query-by-example search): `quesst14Database/` has the QUESST 2014 layout (`Audio/`, "
            "`dev_queries/`, `eval_queries/`, `scoring/language_key_{utterances,dev,eval}.lst`, "
            "`scoring/groundtruth_quesst14_{dev,eval}/` with `.ecf.xml`, `.tlist.xml`, `.rttm`). Queries are "
            "two-word terms said by their own speakers; documents, said by other speakers, hold a term between "
            "filler words or no term; a few documents and queries are Albanian (filtered out by SUPERB's "
            "English-only search; each Albanian query occurs in Albanian documents, so the full ground truth "
            "QUESST's scorer reads holds queries that were never searched).\n\n| part | items | occurrences | minutes |\n|---|---|---|---|\n"
            f"| QUESST documents (Audio) | {docs} | | {doc_minutes:.1f} |\n"
            + "\n".join(
                f"| QUESST {split} queries | {n} | {hits} | {minutes:.1f} |"
                for split, (n, hits, minutes) in ((s, qbe[s]) for s in ("dev", "eval"))
            )
            + "\n"
        )
    return sections


def update_readme(out: Path, sections: dict[str, str]) -> None:
    """Put each section into out/README.md between its markers (replacing an older one, else before the
    'Total size' line) and refresh the total size."""
    readme = out / "README.md"
    text = readme.read_text()
    for name, body in sections.items():
        mark = README_MARK.format(name=name)
        block = f"{mark}\n{body}{mark}\n"
        pattern = re.compile(re.escape(mark) + r"\n.*?" + re.escape(mark) + r"\n", re.S)
        found = pattern.search(text)
        if found:
            text = text[: found.start()] + block + text[found.end() :]
        else:
            total = text.rfind("Total size")
            text = text[:total] + block + "\n" + text[total:] if total >= 0 else text + "\n" + block
    size_mb = sum(path.stat().st_size for path in out.rglob("*") if path.is_file() and path != readme) / 1e6
    text = re.sub(r"Total size [\d.]+ MB\.", f"Total size {size_mb:.1f} MB.", text)
    readme.write_text(text)
