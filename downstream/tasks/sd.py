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
35 s and so than Libri2Mix's mixtures; the mini corpus's are about 7 s). Its scoring script reports the
lowest test DER over thresholds 0.3-0.7 and median filters 1 and 11; here one ``threshold`` and ``median``
(0.5 and 1 by default) are applied to dev and test alike. Evaluation, as in s3prl, uses whole recordings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from downstream.data.audio import SAMPLE_RATE
from downstream.data.diarization import Recording, read_diarization
from downstream.metrics.diarization import (
    DiarizationErrors,
    activity_to_turns,
    diarization_errors,
    frame_targets,
    permutation_invariant_bce,
    smooth_activity,
)
from downstream.tasks.base import Batch, Task


class SpeakerDiarization(Task):
    """``num_speakers`` output columns (2); a recording with more speakers is an error, one with fewer
    leaves columns silent. ``threshold`` on the sigmoid outputs and a ``median`` filter (frames, odd)
    turn outputs into turns; s3prl's scoring script tries thresholds 0.3-0.7 and medians 1 and 11."""

    name = "sd"
    metric = "der"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        num_speakers: int = 2,
        threshold: float = 0.5,
        median: int = 1,
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
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"task.threshold must be in (0, 1), got {threshold}")
        smooth_activity(np.zeros((1, 1)), median)  # validates the median width
        self.num_speakers = num_speakers
        self.threshold = threshold
        self.median = median

    def read_split(self, split: str) -> list[Recording]:
        return read_diarization(self.data_root, split)

    def encode(self, utterance: Recording, split: str) -> Recording:
        if len(utterance.speakers) > self.num_speakers:
            raise ValueError(
                f"sd: recording {utterance.id} ({utterance.path}) in the {split} split has "
                f"{len(utterance.speakers)} speakers ({', '.join(utterance.speakers)}); task.num_speakers="
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
        """Seconds of scored speech, missed speech, false alarm and confusion, summed over the batch."""
        activity = (torch.sigmoid(logits.float()) > self.threshold).cpu().numpy()
        total = DiarizationErrors()
        for row, recording in enumerate(batch["targets"]):
            frames = smooth_activity(activity[row, : int(frame_lengths[row])], self.median)
            hypothesis = activity_to_turns(
                frames, self._frame_shift(recording.num_samples, int(frame_lengths[row]))
            )
            total = total + diarization_errors(recording.reference, hypothesis)
        return {
            "scored": total.scored,
            "missed": total.missed,
            "false_alarm": total.false_alarm,
            "confusion": total.confusion,
        }

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
        """DER and its parts, in percent of the scored reference speaker time."""
        errors = DiarizationErrors(
            statistics["scored"], statistics["missed"], statistics["false_alarm"], statistics["confusion"]
        )
        scored = errors.scored if errors.scored > 0 else float("nan")
        return {
            "der": errors.der,
            "missed": 100.0 * errors.missed / scored,
            "false_alarm": 100.0 * errors.false_alarm / scored,
            "confusion": 100.0 * errors.confusion / scored,
        }
