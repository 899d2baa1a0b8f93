"""ML-SUPERB: monolingual ASR (``ml_mono``) and multilingual ASR with joint LID (``ml_multi``), CTC, CER."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from downstream.data.corpus import Utterance, check_choice
from downstream.data.ml_superb import DURATIONS, MONOLINGUAL_SETS, normalize_transcript, read_ml_superb
from downstream.metrics.classification import accuracy_percent
from downstream.tasks.asr import WORD_BOUNDARY
from downstream.tasks.base import Statistics
from downstream.tasks.ctc import CTCTask, normalised_characters

UNKNOWN = "<unk>"


class MLSuperbSpeechRecognition(CTCTask):
    """Character CTC on ML-SUPERB transcripts; the vocabulary is built from the training data.

    Tokens: the word boundary '|', '<unk>' and every character of the normalised training transcripts
    (``normalize_transcript``: punctuation removed, upper case). A dev or test character the training set
    lacks becomes '<unk>', which the model never learns to emit, so it always counts as an error (as in
    ML-SUPERB's scoring, where the unseen character cannot be produced). CER (percent) counts the
    characters of the normalised text (``normalised_characters``: one space between words, as jiwer's
    cer; a stray word-boundary token is no character). ``duration`` picks the 10-minute or 1-hour training set; SpecAugment on the
    interface's features during training as in ML-SUPERB's recipe.
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
        spec_augment: Mapping[str, int] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_choice(f"task ({self.name})", "duration", duration, DURATIONS)
        self.duration = duration
        self.spec_augment = dict(spec_augment) if spec_augment else None
        self._characters: set[str] | None = None

    def characters(self, utterance: Utterance) -> list[str]:
        """The normalised transcript as character tokens, spaces as the word boundary."""
        text = normalize_transcript(utterance.text or "", drop_bracketed=self.drop_bracketed)
        return [WORD_BOUNDARY if char == " " else char for char in text]

    def training_characters(self) -> set[str]:
        if self._characters is None:
            self._characters = {char for utt in self.utterances("train") for char in self.characters(utt)}
            self._characters.discard(WORD_BOUNDARY)
        return self._characters

    def tokens(self) -> list[str]:
        return [WORD_BOUNDARY, UNKNOWN, *sorted(self.training_characters())]

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        return normalised_characters(tokens, WORD_BOUNDARY)

    def hypothesis_record(self, tokens: list[str]) -> dict[str, Any]:
        """``hypothesis``: the text (characters, one space between words) without language tokens;
        ``ml_multi`` with LID adds ``language``, the first decoded language token's code (None: none)."""
        languages = [token for token in tokens if is_language_token(token)]
        text = "".join(normalised_characters([t for t in tokens if not is_language_token(t)], WORD_BOUNDARY))
        record: dict[str, Any] = {"hypothesis": text}
        if getattr(self, "lid", False):
            record["language"] = languages[0][1:-1] if languages else None
        return record

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        known = self.training_characters()
        return [
            char if char in known or char == WORD_BOUNDARY else UNKNOWN for char in self.characters(utterance)
        ]


class MonolingualSpeechRecognition(MLSuperbSpeechRecognition):
    """ML-SUPERB's monolingual track: ``language`` is one of its sets (``MONOLINGUAL_SETS``: 'eng1' trains
    on mls/eng, 'fra1' on voxforge/fra, ...); test covers that language in every dataset. The published
    number averages the sets (one run per set).

    For jpn and cmn ML-SUPERB scores phones from a grapheme-to-phoneme converter; this task scores
    characters for every language."""

    name = "ml_mono"
    drop_bracketed = False

    def __init__(
        self,
        data_root: str,
        language: str = "eng1",
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        check_choice("task (ml_mono)", "language", language, tuple(MONOLINGUAL_SETS))
        self.language = language

    def read_split(self, split: str) -> list[Utterance]:
        return read_ml_superb(self.data_root, split, self.duration, monolingual=self.language)


class MultilingualSpeechRecognition(MLSuperbSpeechRecognition):
    """ML-SUPERB's multilingual track over every language folder. With ``lid`` (default) language
    identification is trained jointly the way ML-SUPERB does it: the target starts with a language token
    '[xxx]' (the folder's code), and the predicted language is the first language token of the decoded
    hypothesis (none: wrong). Metrics: ``cer`` without the language tokens, and ``lid_acc`` (percent)."""

    name = "ml_multi"

    def __init__(
        self,
        data_root: str,
        lid: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        self.lid = lid
        self._language_tokens: list[str] | None = None

    def read_split(self, split: str) -> list[Utterance]:
        return read_ml_superb(self.data_root, split, self.duration)

    def language_tokens(self) -> list[str]:
        """'[xxx]' for every language of the training split, sorted."""
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
                f"ml_multi: utterance {utterance.id} ({utterance.path}) in the {split} split is in language "
                f"{utterance.label!r}, which the training split does not have"
            )
        return [token, *characters]

    def error_units(self, tokens: Sequence[str]) -> list[str]:
        languages = set(self.language_tokens())
        return super().error_units([token for token in tokens if token not in languages])

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
        metrics = super().metrics(statistics)
        if self.lid:
            metrics["lid_acc"] = accuracy_percent(statistics["lid_correct"], statistics["lid_total"])
        return metrics


def language_token(language: str) -> str:
    return f"[{language}]"


def is_language_token(token: str) -> bool:
    """Whether ``token`` is a language token '[xxx]' (characters are single, '<unk>' and '|' are not)."""
    return len(token) > 2 and token.startswith("[") and token.endswith("]")
