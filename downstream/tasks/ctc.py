"""Sequence tasks trained with CTC and decoded greedily (PR over phones, ASR over characters)."""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from downstream.augment import spec_augment
from downstream.data.corpus import Utterance, check_choice
from downstream.metrics.edit import ctc_greedy_decode, edit_statistics, error_rate_percent
from downstream.tasks.base import Batch, Statistics, Task

log = logging.getLogger(__name__)

BLANK = "<blank>"
#: What happens to training utterances whose target needs more frames than the upstream gives
#: (``task.on_ctc_infeasible``): kept in the batches (they add nothing to the loss) or left out.
CTC_INFEASIBLE_POLICIES = ("keep", "skip")
#: How the batch's CTC loss averages its utterances (``task.ctc_loss_mean``): ``all`` is torch's
#: ``CTCLoss(zero_infinity=True, reduction="mean")`` as s3prl uses it (an utterance CTC cannot align counts as
#: 0 in the mean); ``feasible`` leaves such an utterance out of the mean (``masked_ctc_loss``).
CTC_LOSS_MEANS = ("all", "feasible")
#: How many utterance ids a log line or a results.json record names.
EXAMPLES = 5


def ctc_min_frames(target: Sequence[int]) -> int:
    """Frames CTC needs to emit ``target``: one per token plus one blank between each pair of equal
    neighbours (Graves et al., 2006); a shorter input has no valid alignment (infinite loss)."""
    repeats = sum(1 for left, right in zip(target, target[1:], strict=False) if left == right)
    return len(target) + repeats


def ctc_min_frames_tensor(targets: Sequence[Sequence[int]]) -> torch.Tensor:
    """``ctc_min_frames`` of every target, [B] long on the host."""
    return torch.tensor([ctc_min_frames(target) for target in targets], dtype=torch.long)


def masked_ctc_loss(
    log_probs: torch.Tensor,
    targets: torch.Tensor,
    target_lengths: torch.Tensor,
    min_frames: torch.Tensor,
    frame_lengths: torch.Tensor,
    mean: str = "feasible",
) -> torch.Tensor:
    """CTC loss of a batch averaged over its feasible utterances only (``mean="feasible"``), or over all of
    them with an infeasible one counted as 0 (``mean="all"``: torch's ``reduction="mean"`` with
    ``zero_infinity=True``, s3prl ``downstream/ctc/expert.py:45-48``, ``asr/expert.py:98-99``).

    ``log_probs`` [T, B, V] (log-softmax, blank 0); ``targets`` the concatenated token ids and
    ``target_lengths`` [B] (``ctc_target_tensors``, lengths on the host); ``min_frames`` [B]
    (``ctc_min_frames_tensor``); ``frame_lengths`` [B]. Each utterance's loss is divided by its target
    length (at least 1), as torch's ``reduction='mean'`` does, and the batch loss is the mean over the
    utterances with ``frame_lengths >= min_frames``: one that cannot be aligned is left out of the average
    (torch's mean with ``zero_infinity`` counts it as 0 and shrinks the loss). A batch with no feasible
    utterance gives a zero loss that still has a graph (backward and gradient accumulation work). The
    mask and the average stay on the device (no host synchronisation).
    """
    device = log_probs.device
    losses = F.ctc_loss(
        log_probs,
        targets.to(device, non_blocking=True),
        frame_lengths,
        target_lengths,
        blank=0,
        reduction="none",
        zero_infinity=True,
    )
    feasible = (frame_lengths.to(device) >= min_frames.to(device, non_blocking=True)).to(losses.dtype)
    per_token = losses / target_lengths.to(device, non_blocking=True).clamp(min=1).to(losses.dtype)
    if mean == "all":
        return (per_token * feasible).sum() / max(per_token.shape[0], 1)
    return (per_token * feasible).sum() / feasible.sum().clamp(min=1)


def normalised_characters(tokens: Sequence[str], word_boundary: str) -> list[str]:
    """The characters of the normalised text of character tokens: each run of word-boundary tokens is one
    space between words and none at either end, so a stray boundary token is no character; every other
    token is one character (an ``<unk>`` too). CER counts these, as ``jiwer.cer`` counts the characters
    of its stripped strings (the spaces between words included)."""
    units: list[str] = []
    for token in tokens:
        if token != word_boundary:
            units.append(token)
        elif units and units[-1] != " ":
            units.append(" ")
    if units and units[-1] == " ":
        units.pop()
    return units


def ctc_target_tensors(targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token id lists -> (concatenated targets [sum of lengths], target lengths [B]), both long, on the
    host: the 1-D target layout ``F.ctc_loss`` takes."""
    lengths = torch.tensor([len(target) for target in targets], dtype=torch.long)
    flat = torch.tensor([token for target in targets for token in target], dtype=torch.long)
    return flat, lengths


class CTCTask(Task):
    """Frame logits [B, T, V] against token sequences with CTC (blank = index 0).

    Subclasses define ``tokens`` (the vocabulary without the blank), ``tokenize`` (utterance ->
    token strings) and ``error_units`` (token strings -> the units the error rate counts: phones for
    PER, words for WER).
    """

    #: SpecAugment of the interface's features in training (``downstream.augment.spec_augment`` keyword
    #: arguments; None: off). ASR and ML-SUPERB set it from their config.
    spec_augment: dict[str, Any] | None = None
    transcript_target = True
    #: Tokens the target carries but scoring does not see (an end-of-sentence token: s3prl drops it from
    #: hypotheses and stops references at it, ``downstream/ctc/expert.py:88-101``).
    unscored_tokens: frozenset[str] = frozenset()

    def __init__(
        self,
        data_root: str,
        on_ctc_infeasible: str = "keep",
        ctc_loss_mean: str = "feasible",
        **options: Any,
    ) -> None:
        """``on_ctc_infeasible`` (keep | skip): training utterances whose target needs more frames than the
        upstream gives them are kept in the batches, where the loss counts them as ``ctc_loss_mean`` says
        (``CTC_LOSS_MEANS``), or left out before training. Either way they are counted; dev and test keep
        them."""
        super().__init__(data_root, **options)
        self.on_ctc_infeasible = on_ctc_infeasible
        check_choice(f"task ({self.name})", "on_ctc_infeasible", on_ctc_infeasible, CTC_INFEASIBLE_POLICIES)
        self.ctc_loss_mean = ctc_loss_mean
        check_choice(f"task ({self.name})", "ctc_loss_mean", ctc_loss_mean, CTC_LOSS_MEANS)
        self._vocabulary: list[str] | None = None
        self._token_ids: dict[str, int] | None = None

    # -- vocabulary -------------------------------------------------------------------------
    @abstractmethod
    def tokens(self) -> list[str]:
        """The vocabulary without the blank; token i + 1 is output i + 1 of the head (0 is the blank)."""

    @abstractmethod
    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        """The target of ``utterance`` as tokens of ``tokens()``."""

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        return list(tokens)

    @property
    def vocabulary(self) -> list[str]:
        if self._vocabulary is None:
            self._vocabulary = [BLANK, *self.tokens()]
            self._token_ids = {token: index for index, token in enumerate(self._vocabulary)}
        return self._vocabulary

    @property
    def num_outputs(self) -> int:
        return len(self.vocabulary)

    def encode(self, utterance: Utterance, split: str) -> list[int]:
        self.vocabulary  # noqa: B018 - builds the token table on first use
        assert self._token_ids is not None
        ids = []
        for token in self.tokenize(utterance, split):
            if token not in self._token_ids:
                raise ValueError(
                    f"{self.name}: token {token!r} of utterance {utterance.described} is not in the "
                    "vocabulary"
                )
            ids.append(self._token_ids[token])
        return ids

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Token ids -> the tokens scoring sees (``unscored_tokens`` left out)."""
        return [self.vocabulary[index] for index in ids if self.vocabulary[index] not in self.unscored_tokens]

    def required_frames(self, target: Sequence[int]) -> int:
        return ctc_min_frames(target)

    # -- data policies ----------------------------------------------------------------------
    def empty_reference_kind(self, utterance: Utterance) -> str:
        """Why ``utterance``'s reference has no unit: 'empty_transcript' here; PR tells out-of-lexicon
        words apart ('oov')."""
        return "empty_transcript"

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """Utterances whose reference has no unit (nothing the metric counts).

        Empty transcripts (one policy for every CTC task): left out of training, where an empty target
        only teaches blanks; kept in dev and test, where they are scored as they are (every emitted unit
        is an insertion, and they add no reference unit), as corpus-level scoring does. A dev/test split
        whose references are all empty has no error rate: ValueError before training.
        """
        utterances = self.utterances(split)
        empty = [u for u in utterances if not self.error_units(self.decode(self.target(u, split)))]
        transcripts = [u for u in empty if self.empty_reference_kind(u) == "empty_transcript"]
        leave_out = {u.id for u in transcripts} if split == "train" else set()
        if split != "train" and len(empty) == len(utterances):
            raise ValueError(
                f"{self.name}: every reference of the {split} split under {self.data_root} is empty "
                f"(e.g. {', '.join(u.described for u in empty[:EXAMPLES])}); its error rate is undefined"
            )
        if transcripts:
            log.warning(
                "%s: %s split: %d of %d utterances have an empty transcript; %s: %s",
                self.name,
                split,
                len(transcripts),
                len(utterances),
                "left out of training" if split == "train" else "kept and scored",
                ", ".join(u.described for u in transcripts[:EXAMPLES]),
            )
        record = {
            "count": len(transcripts),
            "policy": "left out" if split == "train" else "kept",
            "examples": [u.id for u in transcripts[:EXAMPLES]],
        }
        return {"empty_transcript": record}, leave_out

    # -- training ---------------------------------------------------------------------------
    def augment(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """SpecAugment of features [B, T, D'] when ``spec_augment`` is set, else identity."""
        if not self.spec_augment:
            return features
        return spec_augment(features, lengths, **self.spec_augment)

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> Batch:
        """``Task.collate`` plus the CTC targets as tensors (``ctc_target_tensors``) and the frames each
        needs (``ctc_min_frames_tensor``), built here, in the
        DataLoader's workers; the DataLoader pins them on CUDA so the loss copies them asynchronously."""
        batch = super().collate(items, split, utterances)
        batch["ctc_targets"], batch["ctc_target_lengths"] = ctc_target_tensors(batch["targets"])
        batch["ctc_min_frames"] = ctc_min_frames_tensor(batch["targets"])
        return batch

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """CTC loss of logits [B, T, V] over ``frame_lengths`` [B]: ``masked_ctc_loss``, the mean over the
        batch of each utterance's loss divided by its target length (torch's ``reduction="mean"``); an
        infeasible utterance is left out of the average (``ctc_loss_mean=feasible``) or counted as zero
        (``all``, s3prl's ``zero_infinity=True``).

        No host synchronisation of its own: the targets, their lengths and the frames each needs come from
        ``collate`` (a batch without them, e.g. one built by hand, gets them here) and are copied with
        ``non_blocking=True``; the target lengths stay on the host, where torch's CTC reads them. torch's
        CUDA CTC kernels still copy the lengths to the device themselves, and read ``frame_lengths`` on the
        host when they live on the device (both are synchronising copies inside ``F.ctc_loss``).
        """
        if "ctc_targets" in batch:
            targets, target_lengths = batch["ctc_targets"], batch["ctc_target_lengths"]
            min_frames = batch["ctc_min_frames"]
        else:
            targets, target_lengths = ctc_target_tensors(batch["targets"])
            min_frames = ctc_min_frames_tensor(batch["targets"])
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return masked_ctc_loss(
            log_probs, targets, target_lengths, min_frames, frame_lengths, mean=self.ctc_loss_mean
        )

    # -- evaluation -------------------------------------------------------------------------
    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """Greedy CTC decoding of ``logits`` [B, T, V] (once), then ``sequence_statistics``."""
        hypotheses = [self.decode(ids) for ids in ctc_greedy_decode(logits, frame_lengths)]
        references = [self.decode(ids) for ids in batch["targets"]]
        return self.sequence_statistics(references, hypotheses)

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """Statistics of decoded token sequences: ``edits`` and ``reference_units``, counted in
        ``error_units`` (the metric is 100 * edits / reference_units)."""
        edits, length = edit_statistics(
            [self.error_units(r) for r in references], [self.error_units(h) for h in hypotheses]
        )
        return {"edits": edits, "reference_units": length}

    def metrics(self, statistics: Mapping[str, float]) -> dict[str, float]:
        return {self.metric: error_rate_percent(statistics["edits"], statistics["reference_units"])}

    # -- prediction -------------------------------------------------------------------------
    def output_names(self) -> list[str]:
        return list(self.vocabulary)

    def predictions(
        self,
        logits: torch.Tensor,
        frame_lengths: torch.Tensor,
        num_samples: list[int],
        outputs: list[str],
    ) -> list[dict[str, Any]]:
        """Greedy CTC decoding (as in evaluation: ``unscored_tokens`` left out), each hypothesis as
        ``hypothesis_record`` writes it."""
        decoded = ctc_greedy_decode(logits, frame_lengths)
        return [
            self.hypothesis_record([outputs[i] for i in ids if outputs[i] not in self.unscored_tokens])
            for ids in decoded
        ]

    def hypothesis_record(self, tokens: list[str]) -> dict[str, Any]:
        """A decoded token sequence as the user reads it: ``hypothesis``, the units the error rate counts
        joined by spaces (PR: phones)."""
        return {"hypothesis": " ".join(self.error_units(tokens))}
