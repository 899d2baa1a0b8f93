"""PR: phoneme recognition on LibriSpeech (SUPERB), CTC over stress-marked ARPAbet phones, PER."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from downstream.data.corpus import Utterance
from downstream.data.lexicon import load_lexicon, phone_inventory, words_to_phones
from downstream.data.librispeech import read_librispeech
from downstream.tasks.ctc import CTCTask

log = logging.getLogger(__name__)


class PhonemeRecognition(CTCTask):
    """Transcripts become phone sequences through a pronunciation lexicon (first pronunciation of each
    word): ``lexicon`` is the path of a librispeech-lexicon.txt, or null for the CMU pronouncing
    dictionary. Words missing from the lexicon are left out of the target and counted per split.
    """

    name = "pr"
    metric = "per"
    higher_is_better = False

    def __init__(
        self,
        data_root: str,
        lexicon: str | None = None,
        train_split: str = "train-clean-100",
        dev_split: str = "dev-clean",
        test_split: str = "test-clean",
        **options: Any,
    ) -> None:
        super().__init__(data_root, **options)
        if lexicon is not None and not Path(lexicon).is_file():
            raise FileNotFoundError(
                f"task.lexicon: no file at {lexicon}; expected a librispeech-lexicon.txt "
                "('WORD PH1 PH2 ...' per line) or null for the CMU pronouncing dictionary"
            )
        self.lexicon_path = lexicon
        self.splits = {"train": train_split, "dev": dev_split, "test": test_split}
        self._lexicon: dict[str, list[str]] | None = None
        self.oov_words: dict[str, int] = {}

    @property
    def lexicon(self) -> dict[str, list[str]]:
        if self._lexicon is None:
            self._lexicon = load_lexicon(self.lexicon_path)
        return self._lexicon

    def read_split(self, split: str) -> list[Utterance]:
        self.oov_words[split] = 0
        return read_librispeech(self.data_root, self.splits[split])

    def tokens(self) -> list[str]:
        return phone_inventory(self.lexicon)

    def tokenize(self, utterance: Utterance, split: str) -> list[str]:
        phones, oov = words_to_phones(utterance.text or "", self.lexicon)
        self.oov_words[split] = self.oov_words.get(split, 0) + len(oov)
        return phones

    def utterances(self, split: str) -> list[Utterance]:
        fresh = split not in self._utterances
        utterances = super().utterances(split)
        if fresh:
            log.info(
                "pr: %s split: %d utterances, %d out-of-lexicon words left out of the targets",
                split,
                len(utterances),
                self.oov_words[split],
            )
        return utterances
