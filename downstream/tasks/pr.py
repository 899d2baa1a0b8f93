"""PR: phoneme recognition on LibriSpeech (SUPERB), CTC over stress-marked ARPAbet phones, PER."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from downstream.data.corpus import Utterance, check_choice
from downstream.data.lexicon import (
    S3PRL_PHONES,
    lexicon_files,
    load_lexicon,
    phone_inventory,
    words_to_phones,
)
from downstream.data.librispeech import read_librispeech
from downstream.data.text import shown
from downstream.tasks.ctc import EXAMPLES, CTCTask

log = logging.getLogger(__name__)


#: s3prl's end-of-sentence token (``downstream/ctc/text.py:48-52,289-296``: <pad>=0 the blank, <eos>=1, <unk>=2)
EOS = "<eos>"
UNK = "<unk>"
#: ``vocabulary``: ``s3prl`` is <blank>, <eos>, <unk> and phoneme.txt's 71 phones (S3PRL_PHONES), whatever the
#: lexicon; ``lexicon`` is the blank and the phones the lexicon uses.
VOCABULARIES = ("s3prl", "lexicon")


class PhonemeRecognition(CTCTask):
    """Transcripts become phone sequences through a pronunciation lexicon (first pronunciation of each
    word): ``lexicon`` is the path of a lexicon file or a list of them (the first pronunciation over the files
    in order wins: s3prl's librispeech-lexicon-200k-g2p.txt + librispeech-lexicon-allothers-g2p.txt), or null
    for the CMU pronouncing dictionary. ``vocabulary`` (``VOCABULARIES``) picks the output inventory;
    ``target_eos`` ends every target with ``<eos>`` as s3prl's WordTextEncoder does (it is not scored: s3prl
    drops it from hypotheses and stops references at it). ``halve_batch_above_samples``: a training batch whose
    longest utterance is longer is cut in two (s3prl ``downstream/ctc/data.py:11,24-27``). Words missing from the lexicon (out-of-lexicon, OOV) are left out of the target; per
    split, their count and the most frequent ones are logged and recorded (``data_policy.<split>.oov``).
    An utterance whose words are all OOV has no reference phone left: it is left out of every split
    (in dev/test its phones would all count as insertions against a reference that is not what was
    said, so it is not scored).
    """

    #: how many of the most frequent OOV words the log and results.json name
    MOST_FREQUENT_OOV = 10

    name = "pr"
    metric = "per"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        lexicon: str | Sequence[str] | None = None,
        train_split: str = "train-clean-100",
        dev_split: str = "dev-clean",
        test_split: str = "test-clean",
        vocabulary: str = "lexicon",
        target_eos: bool = False,
        halve_batch_above_samples: int | None = None,
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        lexicon_files(lexicon)  # DataLayoutError naming a missing file before anything else
        check_choice("task (pr)", "vocabulary", vocabulary, VOCABULARIES)
        self.lexicon_path = lexicon if lexicon is None or isinstance(lexicon, str) else list(lexicon)
        self.vocabulary_kind = vocabulary
        self.target_eos = bool(target_eos)
        self.unscored_tokens = frozenset([EOS])
        self.halve_batch_above_samples = halve_batch_above_samples
        self.splits = {"train": train_split, "dev": dev_split, "test": test_split}
        self._lexicon: dict[str, list[str]] | None = None
        #: per split: OOV word -> occurrences, and utterance id -> its OOV word count
        self.oov_words: dict[str, Counter] = {}
        self.oov_utterances: dict[str, dict[str, int]] = {}

    @property
    def lexicon(self) -> dict[str, list[str]]:
        if self._lexicon is None:
            self._lexicon = load_lexicon(self.lexicon_path)
        return self._lexicon

    def read_split(self, split: str) -> list[Utterance]:
        self.oov_words[split] = Counter()
        self.oov_utterances[split] = {}
        return read_librispeech(self.data_root, self.splits[split])

    def tokens(self) -> list[str]:
        if self.vocabulary_kind == "s3prl":
            return [EOS, UNK, *S3PRL_PHONES]
        return [*phone_inventory(self.lexicon), *([EOS] if self.target_eos else [])]

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        phones, oov = words_to_phones(utterance.text or "", self.lexicon)
        if oov:
            self.oov_words.setdefault(split, Counter()).update(oov)
            self.oov_utterances.setdefault(split, {})[utterance.id] = len(oov)
        return [*phones, EOS] if self.target_eos else phones

    def empty_reference_kind(self, utterance: Utterance) -> str:
        return "oov" if (utterance.text or "").split() else "empty_transcript"

    def review_targets(self, split: str) -> tuple[dict[str, Any], set[str]]:
        """Empty transcripts as every CTC task (``CTCTask.review_targets``), and out-of-lexicon words:
        counted, the most frequent named, all-OOV utterances left out of every split."""
        utterances = self.utterances(split)
        all_oov = [
            u
            for u in utterances
            if u.id in self.oov_utterances.get(split, {}) and not self.decode(self.target(u, split))
        ]
        if all_oov and len(all_oov) == len(utterances):
            raise ValueError(
                f"pr: every utterance of the {split} split under {self.data_root} consists of words the "
                f"lexicon ({self.lexicon_path or 'CMU dictionary'}) lacks; check task.lexicon"
            )
        records, leave_out = super().review_targets(split)
        words = self.oov_words.get(split, Counter())
        most_frequent = words.most_common(self.MOST_FREQUENT_OOV)
        if words:
            log.warning(
                "pr: %s split: %d out-of-lexicon word occurrences (%d distinct) in %d of %d utterances are "
                "left out of the phone targets; most frequent: %s; %d utterance(s) with only OOV words are "
                "left out%s",
                split,
                sum(words.values()),
                len(words),
                len(self.oov_utterances.get(split, {})),
                len(utterances),
                ", ".join(f"{shown(word)} ({count})" for word, count in most_frequent),
                len(all_oov),
                f": {', '.join(u.described for u in all_oov[:EXAMPLES])}" if all_oov else "",
            )
        records["oov"] = {
            "words": sum(words.values()),
            "distinct": len(words),
            "utterances": len(self.oov_utterances.get(split, {})),
            "most_frequent": [[word, count] for word, count in most_frequent],
            "all_oov_left_out": len(all_oov),
            "examples": [u.id for u in all_oov[:EXAMPLES]],
        }
        return records, leave_out | {u.id for u in all_oov}
