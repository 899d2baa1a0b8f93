"""SV: speaker verification on VoxCeleb1 (SUPERB), x-vector head with AM-softmax, cosine scoring, EER."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import DataLayoutError, Utterance, label_vocabulary, probe_audio, require_dir
from downstream.data.sox_vad import VAD_EFFECT, vad_files
from downstream.data.text import shown
from downstream.data.voxceleb1 import LAYOUT, Trial, read_trials, read_voxceleb1_sv
from downstream.metrics.verification import equal_error_rate, minimum_detection_cost
from downstream.tasks.base import Batch, Statistics, Task

log = logging.getLogger(__name__)


#: Where s3prl keeps SUPERB's SV dev trial list (20,000 trials over 40 VoxCeleb1 dev speakers).
S3PRL_DEV_TRIALS = "s3prl/downstream/sv_voxceleb1/dev_meta_data/dev_meta_data.txt (s3prl 0.4.18)"


class SpeakerVerification(Task):
    """Train a speaker embedding on VoxCeleb1's dev speakers, score trials by cosine (SUPERB SV).

    Training: the head (``downstream.heads.XVectorHead``) returns cosines cos_c between the utterance and
    each training speaker; AM-softmax (additive margin) loss
    L = -log( e^{s (cos_y - m)} / (e^{s (cos_y - m)} + sum_{c != y} e^{s cos_c}) ),
    scale s = ``am_softmax_scale``, margin m = ``am_softmax_margin`` (SUPERB: 30 and 0.4). Training crops
    ``train_crop_seconds`` (8 s in SUPERB). The training speakers are every speaker the test list does not
    name, and with ``hold_out_dev_speakers`` not those of the dev list either; every one of them is a class
    (s3prl: every speaker folder), even one whose utterances the length rule removes.

    Audio (s3prl ``sv_voxceleb1/dataset.py:22-27``): ``gain_db`` on every split (the shared loader), and with
    ``vad`` sox's ``silence 1 0.1 0.1% -1 0.1 0.1%`` after that gain on every split
    (``downstream.data.sox_vad``: the sox program, output cached in ``vad_cache_dir``). Training utterances
    of ``min_train_seconds`` or less (after the VAD) are left out (s3prl keeps ``length > min_sec`` =
    32,000 samples, ``dataset.py:62``); results.json's ``data_policy`` counts them (``short_train``) and
    what the VAD did (``vad``). A dev or test utterance that the VAD empties is an error.

    Evaluation: every utterance of the split's trial list is embedded whole (the head in eval mode), a
    trial's score is the cosine similarity of its two embeddings, and the metrics are the equal error
    rate ``eer`` (percent, the primary metric) and ``min_dcf`` (normalised minimum detection cost at
    ``min_dcf_p_target``). Trials whose utterances were not evaluated (``trainer.limit_eval_batches``,
    ``on_too_long=skip``) are left out and counted in a warning.
    """

    name = "sv"
    metric = "eer"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        test_trials: str = "veri_test.txt",
        dev_trials: str = "dev_trials.txt",
        train_crop_seconds: float | None = 8.0,
        min_train_seconds: float | None = None,
        hold_out_dev_speakers: bool = True,
        vad: bool = False,
        vad_cache_dir: str | None = None,
        am_softmax_scale: float = 30.0,
        am_softmax_margin: float = 0.4,
        min_dcf_p_target: float = 0.01,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if am_softmax_scale <= 0:
            raise ValueError(f"task.am_softmax_scale must be > 0, got {am_softmax_scale}")
        if not 0.0 <= am_softmax_margin < 1.0:
            raise ValueError(f"task.am_softmax_margin must be in [0, 1), got {am_softmax_margin}")
        if not 0.0 < min_dcf_p_target < 1.0:
            raise ValueError(f"task.min_dcf_p_target must be in (0, 1), got {min_dcf_p_target}")
        if min_train_seconds is not None and min_train_seconds < 0:
            raise ValueError(f"task.min_train_seconds must be >= 0 or null, got {min_train_seconds}")
        self.trial_files = {"dev": dev_trials, "test": test_trials}
        require_dir(Path(self.data_root), "VoxCeleb1 root", LAYOUT)  # before the dev list it should hold
        dev_path = Path(self.data_root) / dev_trials
        if not dev_path.is_file():
            raise DataLayoutError(
                f"sv: the dev trial list task.dev_trials='{dev_path}' does not exist. SUPERB's is s3prl's "
                f"{S3PRL_DEV_TRIALS}: copy it there or point task.dev_trials at it"
            )
        self.train_crop_seconds = train_crop_seconds
        self.min_train_seconds = min_train_seconds
        self.hold_out_dev_speakers = bool(hold_out_dev_speakers)
        self.vad = bool(vad)
        self.vad_cache_dir = vad_cache_dir
        self.am_softmax_scale = am_softmax_scale
        self.am_softmax_margin = am_softmax_margin
        self.min_dcf_p_target = min_dcf_p_target
        self._trials: dict[str, list[Trial]] = {}
        self._speaker_ids: dict[str, int] | None = None
        self._speakers: list[str] | None = None
        self._policy: dict[str, dict[str, Any]] = {}

    # -- data -------------------------------------------------------------------------------
    def read_split(self, split: str) -> list[Utterance]:
        utterances = read_voxceleb1_sv(
            self.data_root,
            split,
            self.trial_files["test"],
            self.trial_files["dev"],
            hold_out_dev_speakers=self.hold_out_dev_speakers,
        )
        if self.vad:
            utterances = self._apply_vad(split, utterances)
        if split == "train":
            self._speakers = label_vocabulary(utterances)
            minimum = round((self.min_train_seconds or 0.0) * SAMPLE_RATE)
            short = [utterance for utterance in utterances if utterance.num_samples <= minimum]
            self._policy.setdefault(split, {})["short_train"] = {
                "count": len(short),
                "min_train_seconds": self.min_train_seconds,
                "policy": "left out (kept: longer than min_train_seconds"
                + (", after the VAD)" if self.vad else ")"),
                "examples": [utterance.id for utterance in short[:5]],
            }
            if short:  # a warning when it is more than a tenth of the corpus (a corpus of short clips?)
                log.log(
                    logging.WARNING if 10 * len(short) > len(utterances) else logging.INFO,
                    "sv: %d of %d training utterances are %s s or shorter%s and left out (task.min_train_seconds)",
                    len(short),
                    len(utterances),
                    self.min_train_seconds or 0,
                    " after the VAD" if self.vad else "",
                )
            dropped = {id(utterance) for utterance in short}
            utterances = [utterance for utterance in utterances if id(utterance) not in dropped]
        return utterances

    def evaluation_inputs(self, utterances: list[Utterance]) -> list[Utterance]:
        """With ``vad``: the utterances read from sox's VAD output (cached), with their new lengths (0, with
        the original path, for one whose every sample it removed); without: unchanged. The splits are
        read through this (``read_split``), and so are a trained run's new inputs (``downstream.predict``)."""
        return self._vad(utterances, "inputs") if self.vad else list(utterances)

    def _vad(self, utterances: list[Utterance], name: str) -> list[Utterance]:
        outputs = vad_files([u.path for u in utterances], gain_db=self.gain_db, directory=self.vad_cache_dir)
        kept = [(u, path) for u, path in zip(utterances, outputs, strict=True) if path is not None]
        infos = probe_audio([path for _, path in kept], f"VoxCeleb1/sv-vad-{name}")
        lengths = {id(u): info.num_samples for (u, _), info in zip(kept, infos, strict=True)}
        paths = {id(u): path for u, path in kept}
        return [
            dataclasses.replace(
                u,
                path=paths.get(id(u), u.path),
                num_samples=lengths.get(id(u), 0),
                derived_from=u.corpus_file,
            )
            for u in utterances
        ]

    def _apply_vad(self, split: str, utterances: list[Utterance]) -> list[Utterance]:
        """The VAD of a split's utterances (``evaluation_inputs``); emptied ones keep length 0 on train (the length rule
        removes them) and are an error on dev and test."""
        result = self._vad(utterances, split)
        emptied = [u for u, after in zip(utterances, result, strict=True) if after.num_samples == 0]
        if emptied and split != "train":
            raise DataLayoutError(
                f"sv: sox's VAD (silence {' '.join(VAD_EFFECT[1:])}) removed every sample of {len(emptied)} "
                f"{split} utterance(s) (first: {', '.join(shown(u.id) for u in emptied[:3])}, "
                f"{shown(emptied[0].corpus_file, True)}); these cannot be scored: remove them from the trial "
                "list or set task.vad=false"
            )
        before = sum(u.num_samples for u in utterances) / SAMPLE_RATE
        after = sum(u.num_samples for u in result) / SAMPLE_RATE
        self._policy.setdefault(split, {})["vad"] = {
            "policy": f"sox gain {self.gain_db:g} dB + silence {' '.join(VAD_EFFECT[1:])} (s3prl sv_voxceleb1)",
            "seconds_before": round(before, 2),
            "seconds_after": round(after, 2),
            "emptied": len(emptied),
        }
        log.info("sv: sox's VAD kept %.1f of %.1f s of the %s audio", after, before, split)
        return result

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """``vad`` (seconds before and after) and, on train, ``short_train`` (utterances left out by the
        length rule) for results.json's ``data_policy``."""
        self.utterances(split)
        return dict(self._policy.get(split, {})), set()

    def trials(self, split: str) -> list[Trial]:
        """The trials scored on ``split`` ('dev' or 'test')."""
        if split not in self._trials:
            self._trials[split] = read_trials(Path(self.data_root) / self.trial_files[split])
        return self._trials[split]

    def speakers(self) -> list[str]:
        """The training speakers (the AM-softmax classes): every speaker of the training folders, also one
        whose utterances the length rule left out (s3prl's class list, ``dataset.py:59``)."""
        self.utterances("train")
        assert self._speakers is not None
        return self._speakers

    def shared_audio(self, splits: frozenset[str], first: Utterance, second: Utterance) -> str | None:
        """protocol=superb trains on every VoxCeleb1 dev speaker, the dev trials' speakers included."""
        if splits == {"train", "dev"} and not self.hold_out_dev_speakers:
            return (
                "the dev trials' utterances are training utterances: SUPERB's SV trains on every VoxCeleb1 dev "
                "speaker (s3prl sv_voxceleb1/dataset.py:58-66; task.hold_out_dev_speakers=false)"
            )
        return None

    def label_values(self, utterance: Utterance) -> list[tuple[str, str]]:
        return [("speaker", str(utterance.label))]

    def encode(self, utterance: Utterance, split: str) -> int | None:
        """Training: the speaker's class index. Evaluation needs no target (trials are scored)."""
        if split != "train":
            return None
        if self._speaker_ids is None:
            self._speaker_ids = {speaker: index for index, speaker in enumerate(self.speakers())}
        return self._speaker_ids[utterance.label]

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> dict[str, Any]:
        batch = super().collate(items, split, utterances)
        batch["split"] = split
        batch["utterance_ids"] = [utterances[index].id for index in batch["indices"].tolist()]
        return batch

    # -- model ------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        return len(self.speakers())

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """AM-softmax over the head's cosines [B, speakers]: cross-entropy of s * (cos - m * one_hot(y))."""
        targets = torch.tensor(batch["targets"], dtype=torch.long, device=logits.device)
        margins = F.one_hot(targets, logits.shape[-1]).to(torch.float32) * self.am_softmax_margin
        return F.cross_entropy(self.am_softmax_scale * (logits.float() - margins), targets)

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """One (split, utterance id, embedding) record per utterance; ``logits`` are the embeddings [B, E]."""
        if logits.dim() != 2:
            raise ValueError(
                f"sv: expected utterance embeddings [B, E] from the head, got shape {tuple(logits.shape)}"
            )
        embeddings = logits.detach().float().cpu().numpy()
        return {
            "embeddings": [
                (batch["split"], utterance_id, embedding)
                for utterance_id, embedding in zip(batch["utterance_ids"], embeddings, strict=True)
            ]
        }

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        records = statistics.get("embeddings") or []
        splits = {split for split, _, _ in records}
        if len(splits) != 1:
            raise ValueError(f"sv: expected embeddings of one split, got {sorted(splits) or 'none'}")
        split = splits.pop()
        embeddings = {utterance_id: embedding for _, utterance_id, embedding in records}
        trials = self.trials(split)
        scored = [t for t in trials if t.enrollment in embeddings and t.test in embeddings]
        if len(scored) < len(trials):
            log.warning(
                "sv: %d of %d %s trials have an utterance that was not evaluated and are left out",
                len(trials) - len(scored),
                len(trials),
                split,
            )
        if len({trial.same_speaker for trial in scored}) < 2:
            raise ValueError(
                f"sv: only {len(scored)} of the {len(trials)} {split} trials have both utterances evaluated, "
                "too few for target and non-target trials; do not limit evaluation (trainer.limit_eval_batches) "
                "for sv"
            )
        scores = cosine_scores(embeddings, scored)
        labels = np.array([trial.same_speaker for trial in scored], dtype=np.int64)
        return {
            "eer": equal_error_rate(scores, labels),
            "min_dcf": minimum_detection_cost(scores, labels, p_target=self.min_dcf_p_target),
        }

    # -- prediction -------------------------------------------------------------------------
    def output_names(self) -> list[str]:
        return self.speakers()

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """``embedding``: the head's eval-mode speaker embedding [E] (what trials are scored with)."""
        return [{"embedding": row} for row in logits.detach().float().cpu().numpy()]


def cosine_scores(embeddings: Mapping[str, np.ndarray], trials: list[Trial]) -> np.ndarray:
    """cos(e_a, e_b) = e_a . e_b / (|e_a| |e_b|) for every trial (a zero embedding scores 0)."""
    first = np.stack([embeddings[trial.enrollment] for trial in trials]).astype(np.float64)
    second = np.stack([embeddings[trial.test] for trial in trials]).astype(np.float64)
    norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
    return (first * second).sum(axis=1) / np.maximum(norms, 1e-12)
