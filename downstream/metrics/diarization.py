"""Speaker diarization: frame targets, permutation-invariant loss, frames -> speaker turns, and DER.

Protocol facts (s3prl's diarization recipe, after Hitachi's EEND):
- Targets are frame-level multi-label activities, one column per speaker, at the label frame shift (the
  upstream's frame rate): a turn [start, end) s covers frames rint(start / shift) .. rint(end / shift) - 1.
- The loss is binary cross-entropy under the best speaker permutation per recording (PIT), summed over
  frames, averaged over speakers, divided by the number of frames in the batch.
- Predictions become turns at a threshold on the sigmoid outputs (0.5 by default; s3prl's scoring script
  also tries 0.3-0.7 and a median filter of 11 frames), and are scored with dscore against the reference
  RTTM: DER = (missed speech + false alarm + speaker confusion) / total reference speaker time, overlapped
  speech included, no forgiveness collar (dscore's default collar is 0), speakers mapped one-to-one to
  maximise the time they agree (the Hungarian algorithm, as md-eval and dscore do).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.signal import medfilt
from torch.nn import functional

from downstream.data.diarization import SpeakerTurn
from downstream.data.text import shown


def frame_targets(
    turns: Sequence[SpeakerTurn], speakers: Sequence[str], num_frames: int, frame_shift: float
) -> np.ndarray:
    """Activity [num_frames, len(speakers)] float32 (1 = speaker k talks in that frame).

    ``frame_shift`` in seconds. Turn boundaries are rounded to the nearest frame as in s3prl's dataset;
    a turn past ``num_frames`` is cut there. Raises ValueError for a speaker not in ``speakers``.
    """
    if frame_shift <= 0:
        raise ValueError(f"frame_shift must be > 0 s, got {frame_shift}")
    column = {speaker: k for k, speaker in enumerate(speakers)}
    targets = np.zeros((num_frames, len(speakers)), dtype=np.float32)
    for turn in turns:
        if turn.speaker not in column:
            raise ValueError(
                f"turn of speaker {shown(turn.speaker, True)} but the columns are {list(speakers)}"
            )
        start, end = (int(np.rint(seconds / frame_shift)) for seconds in (turn.start, turn.end))
        targets[max(start, 0) : min(end, num_frames), column[turn.speaker]] = 1.0
    return targets


def permutation_invariant_bce(
    logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIT binary cross-entropy: (loss, best permutation index per recording).

    logits, targets [B, T, S]; lengths [B] valid frames. For each recording the loss is the smallest over
    the S! column permutations of the targets of sum over valid frames of the mean over speakers of BCE;
    the batch loss is the sum of those minima divided by the total number of valid frames (s3prl's
    pit_loss). The permutation index refers to ``itertools.permutations(range(S))``.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
    num_speakers = logits.shape[-1]
    mask = (
        torch.arange(logits.shape[1], device=logits.device)[None, :] < lengths.to(logits.device)[:, None]
    ).to(logits.dtype)
    per_permutation = []
    for permutation in itertools.permutations(range(num_speakers)):
        bce = functional.binary_cross_entropy_with_logits(
            logits, targets[..., list(permutation)], reduction="none"
        )
        per_permutation.append((bce.mean(dim=-1) * mask).sum(dim=1))
    losses = torch.stack(per_permutation, dim=1)  # [B, S!]
    best, index = losses.min(dim=1)
    return best.sum() / mask.sum().clamp(min=1), index


def smooth_activity(activity: np.ndarray, median: int = 1) -> np.ndarray:
    """Median filter of ``median`` frames (odd; 1 = none) along time, per speaker column."""
    if median < 1 or median % 2 == 0:
        raise ValueError(f"median filter width must be an odd number >= 1, got {median}")
    if median == 1:
        return activity
    return medfilt(activity.astype(np.float64), (median, 1)).astype(activity.dtype)


def activity_to_turns(
    activity: np.ndarray, frame_shift: float, speakers: Sequence[str] | None = None
) -> list[SpeakerTurn]:
    """Speaker turns of a binary activity matrix [T, S] (frames of ``frame_shift`` s): every run of active
    frames of column k becomes one turn of speaker ``speakers[k]`` (default: 'k'), as s3prl's make_rttm.py."""
    activity = np.asarray(activity) > 0
    names = [str(k) for k in range(activity.shape[1])] if speakers is None else list(speakers)
    turns = []
    for k in range(activity.shape[1]):
        changes = np.flatnonzero(np.diff(np.pad(activity[:, k].astype(np.int8), 1)))
        for start, end in zip(changes[::2], changes[1::2], strict=True):
            turns.append(SpeakerTurn(names[k], float(start * frame_shift), float(end * frame_shift)))
    return sorted(turns, key=lambda turn: (turn.start, turn.speaker))


@dataclass(frozen=True)
class DiarizationErrors:
    """Seconds of scored reference speaker time and of each error; they add up over recordings."""

    scored: float = 0.0
    missed: float = 0.0
    false_alarm: float = 0.0
    confusion: float = 0.0

    def __add__(self, other: DiarizationErrors) -> DiarizationErrors:
        return DiarizationErrors(
            self.scored + other.scored,
            self.missed + other.missed,
            self.false_alarm + other.false_alarm,
            self.confusion + other.confusion,
        )

    @property
    def der(self) -> float:
        """DER in percent: 100 * (missed + false alarm + confusion) / scored speaker time."""
        if self.scored <= 0:
            raise ValueError("DER over a reference without speech")
        return 100.0 * (self.missed + self.false_alarm + self.confusion) / self.scored


def _activity_per_interval(turns: Sequence[SpeakerTurn], bounds: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Speakers and [intervals, speakers] bool: speaker active anywhere in elementary interval k."""
    names = sorted({turn.speaker for turn in turns})
    active = np.zeros((len(bounds) - 1, len(names)), dtype=bool)
    column = {name: k for k, name in enumerate(names)}
    for turn in turns:
        first = np.searchsorted(bounds, turn.start, side="left")
        last = np.searchsorted(bounds, turn.end, side="left")
        active[first:last, column[turn.speaker]] = True
    return names, active


def diarization_errors(
    reference: Sequence[SpeakerTurn], hypothesis: Sequence[SpeakerTurn]
) -> DiarizationErrors:
    """Missed speech, false alarm and speaker confusion of one recording, exactly, in seconds.

    The timeline is cut at every turn boundary; in each piece of length d with n_ref reference and n_sys
    hypothesis speakers, scored += n_ref d, missed += max(n_ref - n_sys, 0) d, false alarm +=
    max(n_sys - n_ref, 0) d, confusion += (min(n_ref, n_sys) - n_correct) d, where n_correct counts the
    reference speakers whose mapped hypothesis speaker is also active. The one-to-one mapping maximises the
    total time mapped pairs are active together (NIST md-eval / dscore). No collar; overlap is scored.
    """
    if not reference and not hypothesis:
        return DiarizationErrors()
    for turn in (*reference, *hypothesis):
        if not turn.end >= turn.start:
            raise ValueError(
                f"turn of speaker {shown(turn.speaker, True)} ends ({turn.end}) before it starts "
                f"({turn.start})"
            )
    bounds = np.unique(np.array([t for turn in (*reference, *hypothesis) for t in (turn.start, turn.end)]))
    if len(bounds) < 2:
        return DiarizationErrors()
    durations = np.diff(bounds)
    _, ref = _activity_per_interval(reference, bounds)
    _, hyp = _activity_per_interval(hypothesis, bounds)
    n_ref, n_sys = ref.sum(axis=1), hyp.sum(axis=1)
    agreement = (ref * durations[:, None]).T.astype(np.float64) @ hyp.astype(np.float64)  # [R, H] seconds
    mapped = 0.0
    if agreement.size:
        rows, cols = linear_sum_assignment(agreement, maximize=True)
        mapped = float(agreement[rows, cols].sum())
    return DiarizationErrors(
        scored=float((n_ref * durations).sum()),
        missed=float((np.maximum(n_ref - n_sys, 0) * durations).sum()),
        false_alarm=float((np.maximum(n_sys - n_ref, 0) * durations).sum()),
        confusion=float((np.minimum(n_ref, n_sys) * durations).sum()) - mapped,
    )
