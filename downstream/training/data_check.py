"""The pre-training data check: every split against what the upstream and the task need, from the
audio headers the corpus readers already probed (no decoding), with the policy that handles each kind.

Run once per launch, after the task has read its splits, the corpus integrity pass
(``downstream.training.integrity``) has checked them and the upstream is built, before any dataset exists.
The task is asked once per split for what the policies need (``Task.utterances``: ids, lengths; CTC tasks:
the frames each target needs) and every policy is applied to that one list; what they leave out is removed
in one ``Task.leave_out`` per split. What each policy changed or left out is returned per split, for
results.json's ``data_policy`` (with the integrity pass's records):

- ``too_short``: audio shorter than the upstream's ``min_samples`` (the input that gives one frame).
  ``task.on_too_short=pad`` (default) zero-pads it to ``min_samples`` in every split; ``skip`` leaves it
  out of training and still pads it in dev/test, which stay whole.
- ``over_window`` (upstreams with a fixed window, Whisper's 30 s): audio longer than
  ``upstream.window_samples``, encoded in consecutive windows (frames concatenated); with
  ``upstream.max_samples`` set (``whisper_long_audio=error``) such audio stops the run here, named.
- ``too_long``: training audio over ``task.max_seconds``, cropped or left out (``task.on_too_long``);
  dev/test are never limited. A task whose target is a transcript never crops (``crop`` becomes ``skip``).
- ``ctc_infeasible`` (CTC tasks): utterances whose target needs more frames (tokens plus repeats) than
  the upstream gives their length (``upstream.frame_lengths``). Training: kept, left out of the loss
  average (``task.on_ctc_infeasible=keep``, default), or left out of the split (``skip``); dev/test: kept.
- the task's own findings (``Task.review_targets``): empty transcripts (every CTC task), out-of-lexicon
  words (PR).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import Utterance
from downstream.data.text import shown
from downstream.tasks.base import Task
from upstream.base import Upstream

log = logging.getLogger(__name__)

#: How many utterance ids a log line or a results.json record names.
EXAMPLES = 5


def _named(utterances: list[Utterance]) -> str:
    named = ", ".join(f"{shown(u.id)} ({shown(u.path)})" for u in utterances[:EXAMPLES])
    return named + (f" and {len(utterances) - EXAMPLES} more" if len(utterances) > EXAMPLES else "")


def check_too_short(
    utterances: list[Utterance], split: str, min_samples: int, on_too_short: str
) -> tuple[dict[str, Any], set[str]]:
    """``too_short`` of ``split``: count, policy, shortest, examples; ids to leave out (skip, train)."""
    short = [u for u in utterances if u.num_samples < min_samples]
    skip = on_too_short == "skip" and split == "train"
    record = {
        "count": len(short),
        "min_samples": min_samples,
        "policy": "left out" if skip else "padded",
        "examples": [u.id for u in short[:EXAMPLES]],
    }
    if short:
        shortest = min(u.num_samples for u in short)
        record["shortest_samples"] = shortest
        log.warning(
            "%s split: %d of %d utterances are shorter than the upstream's min_samples = %d (%g ms; shortest "
            "%d samples) and are %s (task.on_too_short=%s): %s",
            split,
            len(short),
            len(utterances),
            min_samples,
            1000 * min_samples / SAMPLE_RATE,
            shortest,
            "left out" if skip else f"zero-padded to {min_samples} samples",
            on_too_short,
            _named(short),
        )
    return record, {u.id for u in short} if skip else set()


def check_over_window(utterances: list[Utterance], split: str, upstream: Upstream) -> dict[str, Any] | None:
    """``over_window`` of ``split`` (None for upstreams without a window): audio longer than the upstream's
    window, split into windows. Raises ValueError naming the files when the upstream refuses such audio."""
    window = upstream.window_samples
    if window is None:
        return None
    longer = [u for u in utterances if u.num_samples > window]
    if longer and upstream.max_samples is not None:
        raise ValueError(
            f"{split} split: {len(longer)} utterance(s) are longer than {upstream.name}'s "
            f"{window / SAMPLE_RATE:g} s window ({window} samples), which upstream.whisper_long_audio=error "
            f"refuses: {_named(longer)}. Set upstream.whisper_long_audio=split to encode them in consecutive "
            "windows, or shorten the audio"
        )
    if longer:
        log.warning(
            "%s split: %d of %d utterances are longer than %s's %g s window and are encoded in consecutive "
            "windows, frames concatenated: %s",
            split,
            len(longer),
            len(utterances),
            upstream.name,
            window / SAMPLE_RATE,
            _named(longer),
        )
    return {
        "count": len(longer),
        "window_samples": window,
        "policy": "split into windows, frames concatenated",
        "examples": [u.id for u in longer[:EXAMPLES]],
    }


def check_too_long(utterances: list[Utterance], split: str, task: Task) -> dict[str, Any] | None:
    """``too_long`` of ``split`` (None without ``task.max_seconds``): training audio over the limit and
    the policy applied to it (the dataset crops or skips it); dev/test are never limited (count 0)."""
    if task.max_seconds is None:
        return None
    limit = round(task.max_seconds * SAMPLE_RATE)
    count = sum(u.num_samples > limit for u in utterances) if split == "train" else 0
    record: dict[str, Any] = {"count": count, "max_seconds": task.max_seconds}
    if split == "train":
        record["policy"] = "left out" if task.on_too_long == "skip" else "cropped"
        if task.requested_on_too_long != task.on_too_long:
            record["policy"] += " (crop asked: the target is a transcript)"
    else:
        record["policy"] = "whole (dev/test are never limited)"
    return record


def check_ctc_feasibility(
    utterances: list[Utterance],
    required: list[int],
    split: str,
    upstream: Upstream,
    pad_to_samples: int,
    on_ctc_infeasible: str,
    ctc_loss_mean: str = "feasible",
) -> tuple[dict[str, Any], set[str]]:
    """``ctc_infeasible`` of ``split``: utterances whose target needs more frames (``required``, one per
    utterance) than ``upstream.frame_lengths`` gives their length as loaded (padded to
    ``pad_to_samples``; transcript tasks are never cropped); the ids to leave out (skip, train).
    ``ctc_loss_mean``: the task's loss mean (all: kept ones count 0, as s3prl; feasible: left out of it)."""
    lengths = [max(u.num_samples, pad_to_samples) for u in utterances]
    frames = upstream.frame_lengths(torch.tensor(lengths, dtype=torch.long)).tolist() if lengths else []
    infeasible = [
        (utterance, int(frame_count), needed)
        for utterance, frame_count, needed in zip(utterances, frames, required, strict=True)
        if frame_count < needed
    ]
    skip = split == "train" and on_ctc_infeasible == "skip"
    if split != "train":
        policy = "kept (scored as they are)"
    else:
        counted_as_zero = ctc_loss_mean == "all"
        policy = (
            "left out"
            if skip
            else "kept, counted as 0 in the loss mean"
            if counted_as_zero
            else "kept, left out of the loss average"
        )
    record = {
        "count": len(infeasible),
        "policy": policy,
        "examples": [
            {"id": u.id, "frames": frame_count, "required": needed}
            for u, frame_count, needed in infeasible[:EXAMPLES]
        ],
    }
    if infeasible:
        log.warning(
            "%s split: %d of %d utterances have a target that needs more frames than %s gives them (CTC "
            "cannot align them); %s: %s",
            split,
            len(infeasible),
            len(utterances),
            upstream.name,
            policy,
            ", ".join(f"{shown(u.id)} ({f} frames < {r} needed)" for u, f, r in infeasible[:EXAMPLES]),
        )
    return record, {u.id for u, _, _ in infeasible} if skip else set()


def check_inputs(
    task: Task, upstream: Upstream, integrity: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Check every split of ``task`` against ``upstream`` and apply the data policies (module docstring).

    Sets ``task.pad_to_samples`` to the upstream's ``min_samples`` and removes left-out utterances from
    the task's splits (one ``Task.leave_out`` per split). Returns results.json's ``data_policy``: per split,
    the integrity pass's records (``integrity``, from ``check_integrity``) and one record per kind that
    applies to the task (counts, the policy, the first ids). Raises ValueError naming the split when a
    policy would leave it empty or a dev/test split has no scorable reference.
    """
    min_samples = int(upstream.min_samples)
    task.pad_to_samples = min_samples
    on_ctc_infeasible = getattr(task, "on_ctc_infeasible", "keep")
    log.info(
        "data check: %s needs at least %d samples (%g ms) per utterance; task.on_too_short=%s, "
        "task.on_too_long=%s (training only)%s",
        upstream.name,
        min_samples,
        1000 * min_samples / SAMPLE_RATE,
        task.on_too_short,
        task.on_too_long,
        f", task.on_ctc_infeasible={on_ctc_infeasible}" if hasattr(task, "on_ctc_infeasible") else "",
    )
    report: dict[str, dict[str, Any]] = {}
    for split in task.splits:
        utterances = task.utterances(split)  # the one list every policy below reads
        record: dict[str, Any] = dict((integrity or {}).get(split, {}))
        record["too_short"], left_out = check_too_short(utterances, split, min_samples, task.on_too_short)
        over_window = check_over_window(utterances, split, upstream)
        if over_window is not None:
            record["over_window"] = over_window
        too_long = check_too_long(utterances, split, task)
        if too_long is not None:
            record["too_long"] = too_long
        findings, reviewed_out = task.review_targets(split)
        record.update(findings)
        left_out |= reviewed_out
        if task.transcript_target:
            kept = [u for u in utterances if u.id not in left_out]
            required = [task.required_frames(task.target(u, split)) for u in kept]
            record["ctc_infeasible"], infeasible_out = check_ctc_feasibility(
                kept,
                required,
                split,
                upstream,
                min_samples,
                on_ctc_infeasible,
                getattr(task, "ctc_loss_mean", "feasible"),
            )
            left_out |= infeasible_out
        task.leave_out(split, left_out)
        record["utterances"] = len(task.utterances(split))
        report[split] = record
    return report
