"""Writing predictions: JSON Lines (one object per input, with its ``id`` and ``path``), Kaldi-style text
(``<id> <hypothesis>``), RTTM (speaker turns), and speaker-verification trial scores."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from downstream.data.corpus import Utterance
from downstream.files import write_atomically
from downstream.inference.inputs import inside
from downstream.tasks.sv import cosine_scores

#: Output formats of ``python -m downstream.predict`` (auto: rttm for sd, jsonl otherwise).
FORMATS = ("auto", "jsonl", "kaldi", "rttm")


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _write_text(path: Path, lines: Iterable[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{line}\n" for line in lines)
    write_atomically(path, lambda stream: stream.write(text.encode()))


def write_jsonl(path: Path, rows: list[tuple[Utterance, dict[str, Any]]]) -> None:
    """One JSON object per input: ``id``, ``path``, then the prediction's fields (arrays as lists)."""
    _write_text(
        path,
        (
            json.dumps(
                {"id": u.id, "path": str(u.path), **{k: _plain(v) for k, v in r.items()}}, ensure_ascii=False
            )
            for u, r in rows
        ),
    )


def write_kaldi_text(path: Path, rows: list[tuple[Utterance, dict[str, Any]]]) -> None:
    """Kaldi's ``text`` file: ``<id> <hypothesis>`` per input (hypothesis tasks only)."""
    if rows and "hypothesis" not in rows[0][1]:
        raise ValueError("format=kaldi writes hypotheses (pr, asr, sf, ml_mono, ml_multi); use format=jsonl")
    _write_text(path, (f"{u.id} {r['hypothesis']}".rstrip() for u, r in rows))


def rttm_lines(recording: str, turns: list[list[Any]]) -> list[str]:
    """NIST RTTM ``SPEAKER <recording> 1 <start> <duration> <NA> <NA> <speaker> <NA> <NA>`` per turn, times
    in seconds with 6 decimals (a microsecond; DER from them equals the run's up to that rounding)."""
    return [
        f"SPEAKER {recording} 1 {start:.6f} {end - start:.6f} <NA> <NA> {speaker} <NA> <NA>"
        for speaker, start, end in turns
    ]


def write_rttm(output: Path, rows: list[tuple[Utterance, dict[str, Any]]]) -> list[Path]:
    """Speaker turns as RTTM: all recordings in ``output`` when it ends in ``.rttm``, else one
    ``<id>.rttm`` per recording inside the folder ``output`` (paths kept inside it). Returns the files."""
    if rows and "turns" not in rows[0][1]:
        raise ValueError("format=rttm writes speaker turns (sd); use format=jsonl")
    if output.suffix == ".rttm":
        _write_text(output, (line for u, r in rows for line in rttm_lines(u.id, r["turns"])))
        return [output]
    paths = []
    for utterance, record in rows:
        path = inside(output, f"{utterance.id}.rttm")
        _write_text(path, rttm_lines(utterance.id, record["turns"]))
        paths.append(path)
    return paths


def read_trial_list(path: Path) -> list[tuple[str | None, str, str]]:
    """(label or None, enrollment id, test id) per line of ``[label] <enrollment> <test>`` (VoxCeleb1's
    ``veri_test.txt`` has the label). ValueError naming the line otherwise."""
    trials = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (2, 3):
            raise ValueError(
                f"trials={path} line {number}: expected '[label] <enrollment> <test>', got {line!r}"
            )
        label = fields[0] if len(fields) == 3 else None
        trials.append((label, fields[-2], fields[-1]))
    if not trials:
        raise ValueError(f"trials={path} lists no trial")
    return trials


def trial_scores(
    embeddings: Mapping[str, np.ndarray], trials: list[tuple[str | None, str, str]]
) -> tuple[list[tuple[str | None, str, str, float]], int]:
    """Cosine score of every trial whose two utterances have an embedding (an entry matches an input id
    as written or without its extension, as VoxCeleb1 lists name files); returns (scored trials, count
    of trials left out because an utterance was skipped or not given)."""

    def key(entry: str) -> str | None:
        if entry in embeddings:
            return entry
        stem = str(Path(entry).with_suffix(""))
        return stem if stem in embeddings else None

    from downstream.data.voxceleb1 import Trial

    kept = [(label, a, b, key(a), key(b)) for label, a, b in trials]
    kept = [row for row in kept if row[3] is not None and row[4] is not None]
    if not kept:
        return [], len(trials)
    scores = cosine_scores(embeddings, [Trial(label == "1", ka, kb) for label, _, _, ka, kb in kept])
    rows = [(label, a, b, float(score)) for (label, a, b, _, _), score in zip(kept, scores, strict=True)]
    return rows, len(trials) - len(kept)


def write_trial_scores(path: Path, rows: list[tuple[str | None, str, str, float]]) -> None:
    """``<enrollment> <test> <score>`` per trial (the cosine of the two embeddings), in trial-list order."""
    _write_text(path, (f"{a} {b} {score:.8f}" for _, a, b, score in rows))
