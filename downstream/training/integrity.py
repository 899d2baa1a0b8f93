"""The corpus integrity pass: every split of every task, before any model is built.

Run by the runner right after the task has read its splits (``Task.check_data``) and before the upstream
is instantiated. It asks the task once for each split's utterance list and applies every check to those
lists; each finding names the file (and line, where the id came from a text file), the id and the value,
and is either refused with one message or handled by a documented policy and counted per split in
results.json's ``data_policy`` (docs/input-policies.md):

- ``ids``: an id twice in one split, or one id naming different audio in two splits: refused.
- ``shared_audio``: the same audio (the resolved real path, so symlinked folders and files count, and an
  overlapping sample span for windows of one recording) in two splits: refused as leakage unless the task's
  protocol defines that overlap (``Task.shared_audio``: KS's ``_silence_`` windows, QbE's documents),
  then counted with the reason.
- ``sample_rate``: files not at 16 kHz, named (first ten and a count) and counted per split; refused for a
  corpus that is 16 kHz by definition (``Task.native_sample_rate``) unless ``task.resample=true``.
- ``nonfinite``: float audio files (the only formats that can hold NaN or inf) are decoded once and their
  samples checked; ``task.on_nonfinite=error`` (default) refuses naming the files, ``skip`` leaves their
  utterances out of every split, counted.
- ``label_variants``: training labels of one field (``Task.label_values``) that differ only in case or
  surrounding whitespace: refused, naming both forms and where each occurs.

Every check reads the corpus files (``Utterance.corpus_file``), also where the task reads a rewritten copy:
SV's sox VAD output is 16 kHz and finite whatever the VoxCeleb1 file behind it holds (sox clips NaN), so
its rate and samples are those of that file.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from downstream.data.audio import SAMPLE_RATE, nonfinite_problem
from downstream.data.corpus import AudioInfo, Utterance, audio_info, rate_examples
from downstream.data.text import refuse_repeated_ids, shown
from downstream.tasks.base import Task

log = logging.getLogger(__name__)

#: How many findings a message or a results.json record names (files of a warning: ``FILES_SHOWN``).
EXAMPLES = 5
FILES_SHOWN = 10


class CorpusIntegrityError(ValueError):
    """The corpus has a flaw that no policy handles (the message names the files, lines, ids and values)."""


def _more(count: int, shown_count: int) -> str:
    return f" (and {count - shown_count} more)" if count > shown_count else ""


def _real_paths(lists: Mapping[str, list[Utterance]]) -> dict[int, str]:
    """id(utterance) -> its corpus file's resolved real path (``Utterance.corpus_file``: the file as
    distributed, also where a task's preprocessing reads a rewritten copy, SV's VAD; folders resolved once
    each; a file is resolved only when it is itself a symbolic link)."""
    folders: dict[str, str] = {}
    real: dict[int, str] = {}
    for utterances in lists.values():
        for utterance in utterances:
            path = str(utterance.corpus_file)
            folder, name = os.path.split(path)
            if folder not in folders:
                folders[folder] = os.path.realpath(folder)
            real[id(utterance)] = (
                os.path.realpath(path) if os.path.islink(path) else os.path.join(folders[folder], name)
            )
    return real


def _refuse_repeated_ids(task: Task, lists: Mapping[str, list[Utterance]]) -> None:
    for split, utterances in lists.items():
        refuse_repeated_ids(
            ((u.id, shown(u.origin)) for u in utterances),
            f"{task.name}: the {split} split under {task.data_root}",
        )


def _refuse_conflicting_ids(task: Task, lists: Mapping[str, list[Utterance]], real: dict[int, str]) -> None:
    first: dict[str, tuple[str, Utterance]] = {}
    conflicts = []
    for split, utterances in lists.items():
        for utterance in utterances:
            seen = first.setdefault(utterance.id, (split, utterance))
            other_split, other = seen
            if other is utterance or other_split == split:
                continue
            if (real[id(other)], other.start) != (real[id(utterance)], utterance.start):
                conflicts.append(
                    f"{shown(utterance.id)} is {shown(other.corpus_file, True)} in {other_split} "
                    f"({shown(other.origin)}) and {shown(utterance.corpus_file, True)} in {split} "
                    f"({shown(utterance.origin)})"
                )
    if conflicts:
        raise CorpusIntegrityError(
            f"{task.name}: {len(conflicts)} id(s) name different audio in two splits: "
            f"{'; '.join(conflicts[:EXAMPLES])}{_more(len(conflicts), EXAMPLES)}. An id names one utterance "
            "in the whole corpus: rename one of them"
        )


def _overlap(a: Utterance, b: Utterance) -> bool:
    return a.start < b.start + b.num_samples and b.start < a.start + a.num_samples


def _check_shared_audio(
    task: Task, lists: Mapping[str, list[Utterance]], real: dict[int, str], report: dict[str, dict]
) -> None:
    by_file: dict[str, list[tuple[str, Utterance]]] = defaultdict(list)
    for split, utterances in lists.items():
        for utterance in utterances:
            by_file[real[id(utterance)]].append((split, utterance))
    leaks: dict[str, list[str]] = defaultdict(list)  # real path -> the pairs of splits sharing it
    allowed: dict[str, dict[str, Any]] = {}
    for path, entries in by_file.items():
        if len({split for split, _ in entries}) < 2:
            continue
        for position, (split_a, a) in enumerate(entries):
            for split_b, b in entries[position + 1 :]:
                if split_a == split_b or not _overlap(a, b):
                    continue
                reason = task.shared_audio(frozenset((split_a, split_b)), a, b)
                if reason is None:
                    leaks[path].append(
                        f"{shown(path, True)} is {a.described} in {split_a} and {b.described} in {split_b}"
                    )
                    continue
                for split, other in ((split_a, split_b), (split_b, split_a)):
                    record = allowed.setdefault(split, {"pairs": 0, "with": set(), "reason": reason})
                    record["pairs"] += 1
                    record["with"].add(other)
    if leaks:
        pairs = [pair for shared in leaks.values() for pair in shared]
        raise CorpusIntegrityError(
            f"{task.name}: {len(leaks)} audio file(s) are in more than one split (by their real path; "
            f"symbolic links resolved): {'; '.join(pairs[:EXAMPLES])}{_more(len(pairs), EXAMPLES)}. A "
            "score on audio the model trained or was selected on is not a test score: give each split its "
            "own files"
        )
    for split, record in allowed.items():
        report[split]["shared_audio"] = {**record, "with": sorted(record["with"])}
        log.info(
            "%s split: %d pair(s) of utterances share audio with the %s split, as the protocol defines: %s",
            split,
            record["pairs"],
            "/".join(sorted(record["with"])),
            record["reason"],
        )


def _check_sample_rates(
    task: Task,
    lists: Mapping[str, list[Utterance]],
    real: dict[int, str],
    headers: Mapping[str, AudioInfo],
    report: dict[str, dict],
) -> None:
    refused: list[tuple[str, int]] = []
    strict = task.native_sample_rate is not None and not task.resample
    for split, utterances in lists.items():
        files = {str(u.corpus_file): headers[real[id(u)]].sample_rate for u in utterances}
        other = [(path, rate) for path, rate in files.items() if rate != SAMPLE_RATE]
        rates: dict[str, int] = defaultdict(int)
        for _, rate in other:
            rates[str(rate)] += 1
        policy = "refused (task.resample=false)" if strict else "resampled to 16 kHz on load"
        report[split]["sample_rate"] = {"count": len(other), "rates": dict(rates), "policy": policy}
        if other:
            report[split]["sample_rate"]["examples"] = [path for path, _ in other[:EXAMPLES]]
            log.warning(
                "%s split: %d of %d files are not at %d Hz and are %s: %s",
                split,
                len(other),
                len(files),
                SAMPLE_RATE,
                policy,
                rate_examples(other, FILES_SHOWN),
            )
            refused.extend(other if strict else [])
    if refused:
        raise CorpusIntegrityError(
            f"{task.name}: the corpus under {task.data_root} is {task.native_sample_rate} Hz by definition, "
            f"but {len(refused)} file(s) are at another rate (their header may be wrong, which would play "
            f"them at the wrong speed): {rate_examples(refused, FILES_SHOWN)}. Check the files, or set "
            "task.resample=true to resample them to 16 kHz on load"
        )


def _check_nonfinite(
    task: Task,
    lists: Mapping[str, list[Utterance]],
    real: dict[int, str],
    headers: Mapping[str, AudioInfo],
    report: dict[str, dict],
) -> None:
    float_files = sorted(path for path, header in headers.items() if header.can_be_nonfinite)
    bad: dict[str, str] = {}
    for path in float_files:
        problem = nonfinite_problem(path, headers[path].subtype)
        if problem is not None:
            bad[path] = problem
    skip = task.on_nonfinite == "skip"
    if bad and not skip:
        named = list(bad.values())
        raise CorpusIntegrityError(
            f"{task.name}: {len(bad)} audio file(s) hold NaN or infinite samples: "
            f"{'; '.join(named[:FILES_SHOWN])}{_more(len(named), FILES_SHOWN)}. Fix the files, or set "
            "task.on_nonfinite=skip to leave their utterances out of every split (counted)"
        )
    for split, utterances in lists.items():
        left_out = [u for u in utterances if real[id(u)] in bad]
        report[split]["nonfinite"] = {
            "count": len(left_out),
            "float_files_checked": len({real[id(u)] for u in utterances} & set(float_files)),
            "policy": "left out" if skip else "error",
            "examples": [u.id for u in left_out[:EXAMPLES]],
        }
        if left_out:
            log.warning(
                "%s split: %d utterance(s) of %d file(s) with NaN or infinite samples are left out "
                "(task.on_nonfinite=skip): %s%s",
                split,
                len(left_out),
                len({real[id(u)] for u in left_out}),
                ", ".join(u.described for u in left_out[:EXAMPLES]),
                _more(len(left_out), EXAMPLES),
            )
            task.leave_out(split, {u.id for u in left_out})


def _refuse_label_variants(task: Task, utterances: list[Utterance]) -> None:
    forms: dict[tuple[str, str], dict[str, list[Utterance]]] = defaultdict(lambda: defaultdict(list))
    for utterance in utterances:
        for field, value in task.label_values(utterance):
            forms[field, value.strip().casefold()][value].append(utterance)
    variants = []
    for (field, _), by_form in forms.items():
        if len(by_form) > 1:
            described = " and ".join(  # repr: quotes show surrounding spaces, escapes invisible characters
                f"{form!r} ({len(uses)} utterance(s), first {uses[0].described})"
                for form, uses in by_form.items()
            )
            variants.append(f"{field}: {described}")
    if variants:
        raise CorpusIntegrityError(
            f"{task.name}: {len(variants)} training label(s) are written in several forms that differ only in "
            f"case or surrounding whitespace, which would make them separate classes: "
            f"{'; '.join(variants[:EXAMPLES])}{_more(len(variants), EXAMPLES)}. Write each label one way"
        )


def check_integrity(task: Task) -> dict[str, dict[str, Any]]:
    """The integrity pass over every split of ``task`` (module docstring), before any model exists.

    Reads each split's utterance list once (``Task.utterances``), leaves out what ``task.on_nonfinite=skip``
    leaves out (``Task.leave_out``) and returns per split the records for results.json's ``data_policy``
    (``sample_rate``, ``nonfinite``, and ``shared_audio`` where the protocol shares audio). Raises
    CorpusIntegrityError (a ValueError) with one message naming the files, lines, ids and values of a
    flaw no policy handles.
    """
    lists = {split: list(task.utterances(split)) for split in task.splits}
    report: dict[str, dict[str, Any]] = {split: {} for split in lists}
    real = _real_paths(lists)
    headers = {path: audio_info(path, resolved=True) for path in set(real.values())}
    _refuse_repeated_ids(task, lists)
    _refuse_conflicting_ids(task, lists, real)
    _check_shared_audio(task, lists, real, report)
    _check_sample_rates(task, lists, real, headers, report)
    if "train" in lists:
        _refuse_label_variants(task, lists["train"])
    _check_nonfinite(task, lists, real, headers, report)
    return report
