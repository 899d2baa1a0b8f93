"""ML-SUPERB: monolingual ASR (``ml_mono``) and multilingual ASR with joint LID (``ml_multi``), CTC, CER."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from downstream.data.audio import SAMPLE_RATE
from downstream.data.corpus import Utterance, check_choice
from downstream.data.dataset import longer_than
from downstream.data.ml_superb import (
    DURATIONS,
    MONOLINGUAL_SETS,
    check_monolingual_set,
    few_shot_selection,
    normalize_transcript,
    read_ml_superb,
    reserve_few_shot,
)
from downstream.data.text import shown
from downstream.encoder_front import conv2d2_min_input_frames
from downstream.metrics.classification import accuracy_percent
from downstream.metrics.edit import ctc_greedy_decode
from downstream.tasks.asr import WORD_BOUNDARY
from downstream.tasks.base import Batch, Statistics
from downstream.tasks.ctc import EXAMPLES, CTCTask, ctc_target_tensors, normalised_characters

#: What the trainer chooses the tested model by (``task.select_by``): the dev metric (CER) or the dev loss.
SELECT_BY = ("cer", "loss")
#: How a training batch's CTC loss is reduced (``task.ctc_loss``).
CTC_LOSSES = ("espnet", "feasible_token_mean")
#: ESPnet's split_results.py few_shot_rule: the CER (and LID accuracy) of the reserved languages apart.
GROUPS = ("normal", "few_shot")
#: The splits ESPnet's asr.sh stage 4 filters by length (``task.wav_duration_splits``): train and valid, never
#: the test sets ("Not applying to test_sets to keep original data").
WAV_DURATION_SPLITS = ("train", "dev")

log = logging.getLogger(__name__)

UNKNOWN = "<unk>"


class MLSuperbSpeechRecognition(CTCTask):
    """Character CTC on ML-SUPERB transcripts; the vocabulary is built from the training data.

    Tokens: the word boundary '|', '<unk>' and every character of the normalised training transcripts
    (``normalize_transcript``: punctuation removed, upper case) that the length rule keeps
    (``vocabulary_utterances``: as ESPnet's token list, written from the training text after data_prep.py's
    and asr.sh's 20 s rule). A dev or test character the vocabulary lacks becomes '<unk>', which the model
    never learns to emit, so it always counts as an error (as in ML-SUPERB's scoring, where the unseen
    character cannot be produced). CER (percent) counts the characters of the normalised text
    (``normalised_characters``: one space between words, as jiwer's cer; a stray word-boundary token is no
    character). ``duration`` picks the 10-minute or 1-hour training set; SpecAugment on the interface's
    features during training as in ML-SUPERB's recipe.

    With ``word_tokens`` (ml_mono's cmn and jpn under protocol=superb) the tokens are the words of the
    normalised text instead, its whitespace-separated units, with '<unk>' and no word boundary (ESPnet's
    ``token_type=word``: ``WordTokenizer`` splits on whitespace), and the reported ``cer`` is the error rate
    over those units, the ``score_wer`` result that mono_superb_score.py reports for cmn and jpn.
    """

    metric = "cer"
    higher_is_better = False
    #: ML-SUPERB gathers sources recorded at different rates: every file is resampled to 16 kHz on load.
    native_sample_rate = None
    #: ML-SUPERB's multilingual preparation drops '[...]' spans; its monolingual one does not.
    drop_bracketed = True

    def __init__(
        self,
        data_root: str,
        duration: str = "1h",
        spec_augment: Mapping[str, Any] | None = None,
        select_by: str = "cer",
        average_best: int = 1,
        ctc_loss: str = "feasible_token_mean",
        head_input_layer: str = "linear",
        wav_duration_splits: Sequence[str] = (),
        min_wav_seconds: float = 0.1,
        **options: Any,
    ) -> None:
        """``select_by`` (cer | loss): the dev number that ranks checkpoints; ``average_best``: the tested
        model is the parameter average of this many best checkpoints by it (1: the best one). ESPnet's
        recipe: loss and 5 (``best_model_criterion: valid loss min``, ``keep_nbest_models: 5``,
        ``--inference_asr_model valid.loss.ave.pth``). ``ctc_loss``: ``espnet``, each utterance's CTC loss
        summed over its tokens and averaged over the batch, an infeasible one counting 0 (espnet2/asr/ctc.py:
        reduction 'sum' divided by the batch size, zero_infinity), or ``feasible_token_mean``
        (``CTCTask.loss``). ``head_input_layer``: the head's ``input_layer`` (the config passes it), so
        the data check counts CTC-infeasible targets at the head's frame rate (conv2d2 halves it).
        ``wav_duration_splits`` (some of train, dev): the splits that keep only audio of more than
        ``min_wav_seconds`` and less than ``max_seconds`` and a non-empty transcript, as ESPnet's asr.sh
        stage 4 filters train and valid (``stage4_reason``); empty: none (``max_seconds`` still limits
        training through ``on_too_long``)."""
        super().__init__(data_root, **options)
        for split in wav_duration_splits:
            check_choice(f"task ({self.name})", "wav_duration_splits entry", split, WAV_DURATION_SPLITS)
        self.wav_duration_splits = tuple(wav_duration_splits)
        self.min_wav_seconds = float(min_wav_seconds)
        check_choice(f"task ({self.name})", "ctc_loss", ctc_loss, CTC_LOSSES)
        check_choice(f"task ({self.name})", "head_input_layer", head_input_layer, ("linear", "conv2d2"))
        self.ctc_loss = ctc_loss
        self.head_input_layer = head_input_layer
        check_choice(f"task ({self.name})", "duration", duration, DURATIONS)
        check_choice(f"task ({self.name})", "select_by", select_by, SELECT_BY)
        if average_best < 1:
            raise ValueError(f"task ({self.name}): average_best must be >= 1, got {average_best}")
        self.duration = duration
        self.spec_augment = dict(spec_augment) if spec_augment else None
        self.select_by = select_by
        if select_by == "loss":  # ESPnet: best_model_criterion valid loss min
            self.selection_metric, self.selection_higher_is_better = "loss", False
        self.average_best = int(average_best)
        #: word tokens (ESPnet's token_type=word) instead of characters; ``MonolingualSpeechRecognition``
        #: sets it for the sets of ``word_token_sets``
        self.word_tokens = False
        self._units: set[str] | None = None

    def units(self, utterance: Utterance) -> list[str]:
        """The normalised transcript as tokens: its characters, spaces as the word boundary, or with
        ``word_tokens`` its whitespace-separated words."""
        text = normalize_transcript(utterance.text or "", drop_bracketed=self.drop_bracketed)
        if self.word_tokens:
            return text.split()
        return [WORD_BOUNDARY if char == " " else char for char in text]

    def vocabulary_utterances(self) -> list[Utterance]:
        """The training utterances whose transcripts make the vocabulary: those the length rule keeps
        (``task.max_seconds``; a transcript task skips longer ones, ``longer_than``). ESPnet writes its token
        list from the training text that data_prep.py (multilingual: over 20 s skipped) and asr.sh stage 4
        (``max_wav_duration`` 20) left, so a token of a skipped utterance is not in it."""
        return [
            u
            for u in self.utterances("train")
            if not longer_than(u, self.max_seconds) and self.stage4_reason(u, "train") is None
        ]

    def stage4_reason(self, utterance: Utterance, split: str) -> str | None:
        """'too_short' or 'too_long' when ESPnet's asr.sh stage 4 leaves ``utterance`` out of ``split``
        (one of ``wav_duration_splits``), else None. Stage 4 keeps an utterance whose samples at 16 kHz
        are more than int(min_wav_duration x 16000) and fewer than int(max_wav_duration x 16000)
        (egs2/TEMPLATE/asr1/asr.sh, min_wav_duration 0.1 and max_wav_duration 20, which run_mono.sh and
        run_multi.sh keep): 0.1 s or less and 20 s or more go."""
        if split not in self.wav_duration_splits:
            return None
        if utterance.num_samples <= int(self.min_wav_seconds * SAMPLE_RATE):
            return "too_short"
        if self.max_seconds is not None and utterance.num_samples >= int(self.max_seconds * SAMPLE_RATE):
            return "too_long"
        return None

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """``CTCTask.review_targets`` plus, for a split of ``wav_duration_splits``, asr.sh stage 4's rule:
        ``wav_duration`` counts the utterances ``stage4_reason`` leaves out (training audio over
        ``max_seconds``, left out too, is the ``too_long`` policy's and counted there), and a dev utterance with an empty
        transcript is left out too (stage 4 removes empty text from valid as from train; its
        ``empty_transcript`` record says so)."""
        records, leave_out = super().review_targets(split)
        if split not in self.wav_duration_splits:
            return records, leave_out
        utterances = self.utterances(split)
        out = {u.id: reason for u in utterances if (reason := self.stage4_reason(u, split)) is not None}
        # training audio over max_seconds is the too_long policy's (left out and counted there)
        counted = {
            u.id: out[u.id]
            for u in utterances
            if u.id in out and not (split == "train" and longer_than(u, self.max_seconds))
        }
        records["wav_duration"] = {
            "count": len(counted),
            "too_short": sum(reason == "too_short" for reason in counted.values()),
            "too_long": sum(reason == "too_long" for reason in counted.values()),
            "min_samples": int(self.min_wav_seconds * SAMPLE_RATE),
            "max_samples": None if self.max_seconds is None else int(self.max_seconds * SAMPLE_RATE),
            "policy": "left out (ESPnet asr.sh stage 4: kept when min_samples < samples < max_samples)",
            "examples": list(counted)[:EXAMPLES],
        }
        if counted:
            log.warning(
                "%s: %s split: %d of %d utterances are %g s or shorter%s and are left out "
                "(ESPnet asr.sh stage 4, task.wav_duration_splits): %s",
                self.name,
                split,
                len(counted),
                len(utterances),
                self.min_wav_seconds,
                "" if self.max_seconds is None else f" or {self.max_seconds:g} s or longer",
                ", ".join(shown(utterance_id) for utterance_id in list(counted)[:EXAMPLES]),
            )
        empty = records.get("empty_transcript", {})
        if split != "train" and empty.get("count"):
            empty_ids = {
                u.id
                for u in utterances
                if self.empty_reference_kind(u) == "empty_transcript"
                and not self.error_units(self.decode(self.target(u, split)))
            }
            empty["policy"] = "left out (ESPnet asr.sh stage 4 removes empty text from valid)"
            leave_out |= empty_ids
        return records, leave_out | set(out)

    def training_units(self) -> set[str]:
        """The distinct tokens of ``vocabulary_utterances`` (the word boundary aside)."""
        if self._units is None:
            self._units = {unit for utt in self.vocabulary_utterances() for unit in self.units(utt)}
            self._units.discard(WORD_BOUNDARY)
        return self._units

    def tokens(self) -> list[str]:
        units = sorted(self.training_units())
        return [UNKNOWN, *units] if self.word_tokens else [WORD_BOUNDARY, UNKNOWN, *units]

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        """The units the error rate counts: the characters of the text (``normalised_characters``), or
        with ``word_tokens`` the words themselves (ESPnet's score_wer)."""
        return list(tokens) if self.word_tokens else normalised_characters(tokens, WORD_BOUNDARY)

    def hypothesis_record(self, tokens: list[str]) -> dict[str, Any]:
        """``hypothesis``: the text (characters, one space between words; words joined by spaces with
        ``word_tokens``) without language tokens; ``ml_multi`` with LID adds ``language``, the first decoded
        language token's code (None: none)."""
        languages = [token for token in tokens if is_language_token(token)]
        units = self.error_units([t for t in tokens if not is_language_token(t)])
        text = " ".join(units) if self.word_tokens else "".join(units)
        record: dict[str, Any] = {"hypothesis": text}
        if getattr(self, "lid", False):
            record["language"] = languages[0][1:-1] if languages else None
        return record

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        known = self.training_units()
        return [unit if unit in known or unit == WORD_BOUNDARY else UNKNOWN for unit in self.units(utterance)]

    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """CTC's statistics (``CTCTask.eval_statistics``) plus ESPnet's validation loss: each utterance's
        CTC loss summed over its tokens (``zero_infinity``: an infeasible one counts 0), as ``loss_sum``
        over ``loss_utterances`` (espnet2/asr/ctc.py divides the batch's sum by the batch size, and the
        reporter weights batches by their size: the mean over utterances)."""
        return {
            **super().eval_statistics(logits, frame_lengths, batch),
            **self.loss_statistics(logits, frame_lengths, batch),
        }

    def required_frames(self, target: Sequence[int]) -> int:
        """Input frames the head needs to emit ``target``: CTC's count, through conv2d2 when the head has it."""
        frames = super().required_frames(target)
        return conv2d2_min_input_frames(frames) if self.head_input_layer == "conv2d2" else frames

    def loss(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> torch.Tensor:
        """``CTCTask.loss``, or with ``ctc_loss='espnet'`` the mean over the batch of each utterance's CTC
        loss summed over its tokens (0 for one CTC cannot align)."""
        if self.ctc_loss != "espnet":
            return super().loss(logits, frame_lengths, batch)
        return self.utterance_losses(logits, frame_lengths, batch).mean()

    def utterance_losses(
        self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch
    ) -> torch.Tensor:
        """Each utterance's CTC loss [B] summed over its tokens, 0 where CTC cannot align it."""
        if "ctc_targets" in batch:
            targets, target_lengths = batch["ctc_targets"], batch["ctc_target_lengths"]
        else:
            targets, target_lengths = ctc_target_tensors(batch["targets"])
        log_probs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)
        return F.ctc_loss(
            log_probs,
            targets.to(log_probs.device, non_blocking=True),
            frame_lengths.to(log_probs.device),
            target_lengths,
            blank=0,
            reduction="none",
            zero_infinity=True,
        )

    def loss_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """``loss_sum`` and ``loss_utterances`` of ``eval_statistics``."""
        losses = self.utterance_losses(logits, frame_lengths, batch)
        return {"loss_sum": float(losses.sum()), "loss_utterances": len(batch["targets"])}

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        """``cer`` and, from ``eval_statistics``, ``loss`` (mean CTC loss per utterance)."""
        metrics = super().metrics(statistics)
        if statistics.get("loss_utterances"):
            metrics["loss"] = statistics["loss_sum"] / statistics["loss_utterances"]
        return metrics


class MonolingualSpeechRecognition(MLSuperbSpeechRecognition):
    """ML-SUPERB's monolingual track: ``language`` is one of ESPnet's 13 sets (``MONOLINGUAL_SETS``: 'eng1'
    trains on mls/eng, 'deu2' on voxpopuli/deu, ...; the retired names 'deu' and 'sat' raise ValueError
    naming the new ones); test covers that language in every dataset, as single_lang_data_prep.py does. The
    published number averages the sets (one run per set): each language's sets, then the languages
    (``downstream.data.ml_superb.MONOLINGUAL_SCORE_SOURCE``; make_table does it).

    ``word_token_sets``: the sets tokenised into words (``MLSuperbSpeechRecognition`` ``word_tokens``) and
    scored over them; ESPnet's run_mono.sh uses ``token_type=word`` for cmn and jpn and
    mono_superb_score.py reports their ``score_wer``. Every other set uses characters. ValueError for a
    name that is not a monolingual set."""

    name = "ml_mono"
    drop_bracketed = False

    def __init__(
        self,
        data_root: str,
        language: str = "eng1",
        word_token_sets: Sequence[str] = (),
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_monolingual_set(language)
        self.language = language
        unknown = sorted(set(word_token_sets) - set(MONOLINGUAL_SETS))
        if unknown:
            raise ValueError(
                f"task (ml_mono): word_token_sets names {', '.join(map(repr, unknown))}, which are not "
                f"monolingual sets (expected some of {', '.join(MONOLINGUAL_SETS)})"
            )
        self.word_token_sets = tuple(word_token_sets)
        self.word_tokens = language in self.word_token_sets

    def read_split(self, split: str) -> list[Utterance]:
        return read_ml_superb(self.data_root, split, self.duration, monolingual=self.language)


class MultilingualSpeechRecognition(MLSuperbSpeechRecognition):
    """ML-SUPERB's multilingual track over every language folder. With ``lid`` (default) language
    identification is trained jointly the way ML-SUPERB does it: the target starts with a language token
    '[xxx]' (the folder's code), and the predicted language is the first language token of the decoded
    hypothesis (none: wrong). Metrics: ``cer`` without the language tokens, and ``lid_acc`` (percent).

    With ``few_shot`` (default) the training set follows ESPnet's data_prep.py: each of the 20 reserved
    languages of ``downstream/data/ml_superb_recipe/few_shot.txt`` keeps only its 5 selected training
    utterances (counted in results.json's ``data_policy.train.few_shot_reserved``), and the metrics add
    ``cer_normal`` / ``cer_few_shot`` (and ``lid_acc_normal`` / ``lid_acc_few_shot``): the trained and the
    reserved languages apart, as split_results.py's few_shot_rule reports them."""

    name = "ml_multi"

    def __init__(
        self,
        data_root: str,
        lid: bool = True,
        few_shot: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        self.lid = lid
        self.few_shot = few_shot
        #: reserved language -> its selected training utterance ids (empty without ``few_shot``)
        self.reserved = few_shot_selection() if few_shot else {}
        self._language_tokens: list[str] | None = None
        self._reserved_out: list[Utterance] = []

    def read_split(self, split: str) -> list[Utterance]:
        utterances = read_ml_superb(self.data_root, split, self.duration)
        if split == "train" and self.reserved:
            utterances, self._reserved_out = reserve_few_shot(utterances, self.reserved)
        return utterances

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """``CTCTask.review_targets`` plus, for train with ``few_shot``, ``few_shot_reserved``: the training
        utterances of reserved languages that the reservation left out (``read_split``), per language."""
        records, leave_out = super().review_targets(split)
        if split == "train" and self.few_shot:
            per_language: dict[str, int] = {}
            for utterance in self._reserved_out:
                per_language[utterance.label or ""] = per_language.get(utterance.label or "", 0) + 1
            records["few_shot_reserved"] = {
                "count": len(self._reserved_out),
                "policy": "left out (ESPnet data_prep.py: a reserved language keeps its 5 selected utterances)",
                "per_language": dict(sorted(per_language.items())),
                "examples": [u.id for u in self._reserved_out[:EXAMPLES]],
            }
        return records, leave_out

    def group(self, utterance: Utterance) -> str:
        """'few_shot' for an utterance of a reserved language, else 'normal' (split_results.py)."""
        return "few_shot" if utterance.label in self.reserved else "normal"

    def collate(self, items: list[dict], split: str, utterances: list[Utterance]) -> Batch:
        """``CTCTask.collate`` plus ``groups``: each utterance's ``group`` (with ``few_shot``)."""
        batch = super().collate(items, split, utterances)
        if self.reserved:
            batch["groups"] = [self.group(utterances[index]) for index in batch["indices"].tolist()]
        return batch

    def language_tokens(self) -> list[str]:
        """'[xxx]' for every language of the training split, sorted (every training utterance counts, the
        ones the length rule skips too: a language all of whose training utterances are skipped keeps its
        token, which the model then never learns, and its dev and test utterances are scored as wrong)."""
        if self._language_tokens is None:
            languages = sorted({utterance.label for utterance in self.utterances("train")})
            self._language_tokens = [language_token(language) for language in languages]
        return self._language_tokens

    def tokens(self) -> list[str]:
        return [*super().tokens(), *(self.language_tokens() if self.lid else [])]

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        characters = super().tokenize(utterance, split)
        if not self.lid:
            return characters
        token = language_token(utterance.label)
        if token not in self.language_tokens():
            raise ValueError(
                f"ml_multi: utterance {utterance.described} in the {split} split is in language "
                f"{utterance.label!r}, which the training split does not have"
            )
        return [token, *characters]

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        languages = set(self.language_tokens())
        return super().error_units([token for token in tokens if token not in languages])

    def eval_statistics(self, logits: torch.Tensor, frame_lengths: torch.Tensor, batch: Batch) -> Statistics:
        """Statistics of the whole batch (``sequence_statistics``, decoded once) and, with ``few_shot``, of
        its normal and few-shot utterances apart (keys suffixed '_normal' / '_few_shot'), plus the loss."""
        hypotheses = [self.decode(ids) for ids in ctc_greedy_decode(logits, frame_lengths)]
        references = [self.decode(ids) for ids in batch["targets"]]
        statistics = dict(self.sequence_statistics(references, hypotheses))
        groups = batch.get("groups")  # set by ``collate`` (absent from a batch built by hand)
        if self.reserved and groups is not None:
            for group in GROUPS:
                chosen = [index for index, name in enumerate(groups) if name == group]
                part = self.sequence_statistics(
                    [references[i] for i in chosen], [hypotheses[i] for i in chosen]
                )
                statistics.update({f"{key}_{group}": value for key, value in part.items()})
        return {**statistics, **self.loss_statistics(logits, frame_lengths, batch)}

    def sequence_statistics(self, references: list[list[str]], hypotheses: list[list[str]]) -> Statistics:
        """CER statistics without the language tokens, and with ``lid`` the utterances whose first decoded
        language token is the reference's (``lid_correct`` of ``lid_total``)."""
        statistics = dict(super().sequence_statistics(references, hypotheses))
        if not self.lid:
            return statistics
        languages = set(self.language_tokens())
        correct = 0
        for reference, hypothesis in zip(references, hypotheses, strict=True):
            predicted = next((token for token in hypothesis if token in languages), None)
            correct += predicted == reference[0]
        statistics.update(lid_correct=correct, lid_total=len(references))
        return statistics

    def metrics(self, statistics: Mapping[str, Any]) -> dict[str, float]:
        """``cer``, ``loss`` and with ``lid`` ``lid_acc``; with ``few_shot`` the same per group for every
        group the split has utterances of (``cer_normal``, ``cer_few_shot``, ...)."""
        metrics = super().metrics(statistics)
        if self.lid:
            metrics["lid_acc"] = accuracy_percent(statistics["lid_correct"], statistics["lid_total"])
        for group in GROUPS if self.reserved else ():
            if statistics.get(f"reference_units_{group}"):
                part = {
                    key[: -len(group) - 1]: value for key, value in statistics.items() if key.endswith(group)
                }
                metrics[f"cer_{group}"] = CTCTask.metrics(self, part)["cer"]
                if self.lid:
                    metrics[f"lid_acc_{group}"] = accuracy_percent(part["lid_correct"], part["lid_total"])
        return metrics


def language_token(language: str) -> str:
    return f"[{language}]"


def is_language_token(token: str) -> bool:
    """Whether ``token`` is a language token '[xxx]' (characters are single, '<unk>' and '|' are not)."""
    return len(token) > 2 and token.startswith("[") and token.endswith("]")
