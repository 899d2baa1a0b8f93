"""SD: speaker diarization of two-speaker mixtures (SUPERB), frame-level multi-label targets, PIT BCE, DER.

Protocol (s3prl's diarization recipe): Kaldi-style data folders (``downstream.data.diarization``); per frame
of the upstream's features, one binary target per speaker (2 for Libri2Mix); head LSTM(512) + Linear(2)
(``downstream.heads.LSTMFrameHead``); permutation-invariant binary cross-entropy; DER of the thresholded
outputs against the reference turns, no collar, overlap scored (``downstream.metrics.diarization``).

Frame timing: s3prl labels frame k of a recording with the speech in [k, k + 1) x frame_shift, where
frame_shift is the upstream's downsample rate, and stretches or trims the features to that many frames.
Here the upstream's T frames of an N-sample recording cover it evenly (frame shift N / T samples), which
is the downsample rate up to the upstream's edge frames, and the same timing turns outputs back into
speaker turns for scoring.

Deviations from s3prl: it cuts training recordings into chunks of 2000 frames; here training uses whole
recordings (2000 frames of a 20 ms upstream are 40 s, longer than LibriSpeech's utterances of at most about
35 s and so than Libri2Mix's mixtures; the mini corpus's are about 7 s). Evaluation, as in s3prl, uses whole
recordings.

Checkpoint and post-processing (``select_metric``, ``thresholds`` x ``medians``):
- s3prl keeps the checkpoint with the best dev frame accuracy (``diarization/expert.py``: per recording,
  the fraction of (frame, speaker) cells where logit > 0 equals the best-permutation label, 0 for a recording
  without speech; averaged over recordings, strict improvement); ``select_metric=frame_accuracy``
  (protocol=superb) does that, ``select_metric=der`` keeps the best dev DER (protocol=exact).
- s3prl's ``score.sh`` scores the test outputs at every threshold 0.3-0.7 x median filter 1, 11 and SUPERB
  reports the lowest test DER (``docs/superb.md``): recorded as test ``der_superb`` (with its setting). That
  setting is chosen on test; the honest number is test ``der``: the test DER at the setting with the lowest
  DER on dev (``der_threshold``, ``der_median``). Every setting's DER is in ``der_t<threshold>_m<median>``.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import check_choice
from downstream.data.diarization import Recording, read_diarization
from downstream.data.text import shown
from downstream.metrics.diarization import (
    DiarizationErrors,
    activity_to_turns,
    diarization_errors,
    frame_targets,
    permutation_invariant_bce,
    smooth_activity,
)
from downstream.tasks.base import Batch, Task

#: s3prl's score.sh post-processing grid: thresholds on the sigmoid outputs, median filter widths (frames).
SUPERB_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
SUPERB_MEDIANS = (1, 11)
SELECT_METRICS = ("frame_accuracy", "der")
ERROR_PARTS = ("scored", "missed", "false_alarm", "confusion")


def grid_key(threshold: float, median: int) -> str:
    """The metric key of the DER at one post-processing setting, e.g. ``der_t0.5_m11``."""
    return f"der_t{threshold:g}_m{median}"


def frame_accuracy(logits: np.ndarray, targets: np.ndarray) -> float:
    """s3prl's diarization frame accuracy of one recording: the fraction of (frame, speaker) cells where
    logit > 0 equals the (already permuted) target; 0 when the target has no active cell (s3prl's
    ``calc_diarization_error`` and the ``speech_scored > 0`` guard in ``diarization/expert.py``).
    logits, targets [T, S]."""
    if not targets.any() or targets.size == 0:
        return 0.0
    return float(((logits > 0) == (targets > 0.5)).mean())


class SpeakerDiarization(Task):
    """``num_speakers`` output columns (2); a recording with more speakers is an error, one with fewer
    leaves columns silent. Outputs become turns at every ``thresholds`` x ``medians`` setting (sigmoid
    threshold, median filter of odd width in frames; s3prl's score.sh grid); see the module docstring for
    ``select_metric`` and the test metrics."""

    name = "sd"
    metric = "der"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        num_speakers: int = 2,
        threshold: float = 0.5,
        median: int = 1,
        thresholds: Sequence[float] = SUPERB_THRESHOLDS,
        medians: Sequence[int] = SUPERB_MEDIANS,
        select_metric: str = "frame_accuracy",
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if options.get("max_seconds") is not None and options.get("on_too_long", "crop") == "crop":
            raise ValueError(
                "task=sd: max_seconds with on_too_long=crop would cut recordings away from their speaker "
                "turns; use on_too_long=skip (counted in results.json) or max_seconds=null"
            )
        if num_speakers < 1:
            raise ValueError(f"task.num_speakers must be >= 1, got {num_speakers}")
        thresholds, medians = [float(t) for t in thresholds], [int(m) for m in medians]
        if not all(0.0 < value < 1.0 for value in [*thresholds, threshold]) or not thresholds:
            raise ValueError(
                f"task.threshold and task.thresholds must be in (0, 1), got {threshold}, {thresholds}"
            )
        if not medians:
            raise ValueError("task.medians must name at least one median filter width (1: none)")
        for width in [*medians, median]:
            smooth_activity(np.zeros((max(width, 1), 1)), width)  # validates the median width
        check_choice("task (sd)", "select_metric", select_metric, SELECT_METRICS)
        self.num_speakers = num_speakers
        self.grid = [(value, width) for value in thresholds for width in medians]
        #: the one setting scored at the evaluations during training (the grid: at the final ones)
        self.training_setting = (float(threshold), int(median))
        #: the setting predictions on new audio use (downstream.inference)
        self.threshold, self.median = self.training_setting
        if select_metric == "frame_accuracy":
            self.selection_metric, self.selection_higher_is_better = "frame_accuracy", True

    def read_split(self, split: str) -> list[Recording]:
        return read_diarization(self.data_root, split)

    def encode(self, utterance: Recording, split: str) -> Recording:
        if len(utterance.speakers) > self.num_speakers:
            raise ValueError(
                f"sd: recording {utterance.described} in the {split} split has {len(utterance.speakers)} "
                f"speakers ({', '.join(shown(s) for s in utterance.speakers)}); task.num_speakers="
                f"{self.num_speakers}"
            )
        return utterance

    @property
    def num_outputs(self) -> int:
        return self.num_speakers

    @staticmethod
    def _frame_shift(samples: int, frames: int) -> float:
        """Seconds per feature frame of a whole recording: its samples (16 kHz) / its frames."""
        return samples / max(frames, 1) / SAMPLE_RATE

    def targets(self, batch: Batch, frame_lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
        """[B, num_frames, num_speakers] float activity of every recording at its feature frames."""
        rows = []
        for row, recording in enumerate(batch["targets"]):
            columns = list(recording.speakers) + [
                f"<none {k}>" for k in range(self.num_speakers - len(recording.speakers))
            ]
            rows.append(
                frame_targets(
                    recording.turns,
                    columns,
                    num_frames,
                    self._frame_shift(recording.num_samples, int(frame_lengths[row])),
                )
            )
        return torch.from_numpy(np.stack(rows))

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        targets = self.targets(batch, frame_lengths, logits.shape[1]).to(logits.device)
        loss, _ = permutation_invariant_bce(logits.float(), targets, frame_lengths)
        return loss

    def eval_statistics(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch
    ) -> dict[str, float]:
        """Seconds of scored speech, missed speech, false alarm and confusion at every post-processing
        setting, and the summed per-recording frame accuracy (s3prl's, under the loss's best permutation)."""
        targets = self.targets(batch, frame_lengths, logits.shape[1]).to(logits.device)
        _, permutation_index = permutation_invariant_bce(logits.float(), targets, frame_lengths)
        permutations = list(itertools.permutations(range(self.num_speakers)))
        probabilities = torch.sigmoid(logits.float()).cpu().numpy()
        raw = logits.float().cpu().numpy()
        target_array = targets.cpu().numpy()
        statistics: dict[str, float] = {"recordings": 0.0, "frame_accuracy_sum": 0.0}
        for row, recording in enumerate(batch["targets"]):
            length = int(frame_lengths[row])
            permuted = target_array[row, :length][:, list(permutations[int(permutation_index[row])])]
            statistics["recordings"] += 1.0
            statistics["frame_accuracy_sum"] += frame_accuracy(raw[row, :length], permuted)
            shift = self._frame_shift(recording.num_samples, length)
            for threshold, median in self._settings():
                frames = smooth_activity(probabilities[row, :length] > threshold, median)
                errors = diarization_errors(recording.reference, activity_to_turns(frames, shift))
                key = grid_key(threshold, median)
                for part in ERROR_PARTS:
                    statistics[f"{key}:{part}"] = statistics.get(f"{key}:{part}", 0.0) + getattr(errors, part)
        return statistics

    def _settings(self) -> list[tuple[float, int]]:
        """The post-processing settings scored now: the grid at the final evaluations, else the training
        setting (``threshold``, ``median``; s3prl's dev DER is at logit > 0, no median filter)."""
        return self.grid if self.final_evaluation else [self.training_setting]

    def output_names(self) -> list[str]:
        """One column per speaker: ``speaker1`` ... (a recording's speakers are unnamed at prediction)."""
        return [f"speaker{k + 1}" for k in range(self.num_speakers)]

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """``turns``: [speaker, start s, end s] of each run of active frames (sigmoid > ``threshold``, then
        the ``median`` filter), frames timed as in evaluation (samples / frames of the recording)."""
        activity = (torch.sigmoid(logits.float()) > self.threshold).cpu().numpy()
        records = []
        for row, samples in enumerate(num_samples):
            frames = int(frame_lengths[row])
            smoothed = smooth_activity(activity[row, :frames], self.median)
            turns = activity_to_turns(smoothed, self._frame_shift(samples, frames), outputs)
            records.append({"turns": [[turn.speaker, turn.start, turn.end] for turn in turns]})
        return records

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        """In percent: ``frame_accuracy`` (mean over recordings), the DER of every post-processing setting
        scored (``der_t<threshold>_m<median>``), and ``der`` = the lowest of them with its setting
        (``der_threshold``, ``der_median``) and parts (``missed``, ``false_alarm``, ``confusion``, percent of
        the scored reference speaker time)."""
        if not statistics.get("recordings"):
            raise ValueError("sd: no recording was evaluated")
        result: dict[str, float] = {
            "frame_accuracy": 100.0 * statistics["frame_accuracy_sum"] / statistics["recordings"]
        }
        best: tuple[float, float, int, DiarizationErrors] | None = None
        for threshold, median in self._settings():
            key = grid_key(threshold, median)
            errors = DiarizationErrors(*(statistics[f"{key}:{part}"] for part in ERROR_PARTS))
            result[key] = errors.der
            if best is None or errors.der < best[0]:
                best = (errors.der, threshold, median, errors)
        der, threshold, median, errors = best  # type: ignore[misc]
        scored = errors.scored if errors.scored > 0 else float("nan")
        result.update(
            der=der,
            der_threshold=threshold,
            der_median=float(median),
            missed=100.0 * errors.missed / scored,
            false_alarm=100.0 * errors.false_alarm / scored,
            confusion=100.0 * errors.confusion / scored,
        )
        return result

    def finish_test(self, dev: Mapping[str, float], test: Mapping[str, float]) -> dict[str, float]:
        """Test ``der`` at the setting chosen on dev (``der_threshold``/``der_median`` of ``dev``); SUPERB's
        number, the lowest test DER over the grid, becomes ``der_superb`` (``der_superb_threshold``,
        ``der_superb_median``; its parts ``missed_superb``, ...)."""
        finished = dict(test)
        for key in ("der", "der_threshold", "der_median", "missed", "false_alarm", "confusion"):
            finished[key.replace("der", "der_superb") if key.startswith("der") else f"{key}_superb"] = (
                finished.pop(key)
            )
        threshold, median = dev["der_threshold"], int(dev["der_median"])
        finished["der"] = test[grid_key(threshold, median)]
        finished["der_threshold"], finished["der_median"] = threshold, float(median)
        return finished
