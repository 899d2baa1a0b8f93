"""Data side of the tasks: corpus readers in the official layouts, audio I/O, datasets, samplers.

Readers return ``Utterance`` lists and fail before training with ``DataLayoutError`` (layout) or
``AudioDecodeError`` (unreadable audio), both ValueErrors whose message names the path.
"""

from downstream.data.audio import SAMPLE_RATE, AudioDecodeError, load_audio, resampled_length
from downstream.data.corpus import DataLayoutError, Utterance, label_vocabulary
from downstream.data.dataset import AudioDataset, collate_wavs
from downstream.data.iemocap import EMOTIONS, read_iemocap
from downstream.data.lexicon import load_lexicon, phone_inventory, words_to_phones
from downstream.data.librispeech import read_librispeech
from downstream.data.sampler import BucketBatchSampler
from downstream.data.snips import read_snips
from downstream.data.speech_commands import read_speech_commands
from downstream.data.voxceleb1 import read_voxceleb1_sid, speakers

__all__ = [
    "EMOTIONS",
    "SAMPLE_RATE",
    "AudioDataset",
    "AudioDecodeError",
    "BucketBatchSampler",
    "DataLayoutError",
    "Utterance",
    "collate_wavs",
    "label_vocabulary",
    "load_audio",
    "load_lexicon",
    "phone_inventory",
    "read_iemocap",
    "read_librispeech",
    "read_snips",
    "read_speech_commands",
    "read_voxceleb1_sid",
    "resampled_length",
    "speakers",
    "words_to_phones",
]
