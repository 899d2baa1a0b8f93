"""What every mini-SUPERB corpus shares: the parameters (voices, speaker ranges, vocabulary, corpus sizes),
speakers, the espeak-ng synthesiser and FLAC writing. ``scripts/make_mini_superb.py`` documents them."""

from __future__ import annotations

import random
import shutil
import subprocess
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from downstream.data.lexicon import load_lexicon

REPO_ROOT = Path(__file__).resolve().parents[2]

DEFAULT_OUT = REPO_ROOT / "data" / "mini_superb"
SEED = 20240611
SAMPLE_RATE = 16000
EFFECTIVE_BITS = 8
SILENCE_LEVEL = 0.01  # espeak-ng ends with ~0.3 s of near-silence even with -z; trim to SILENCE_KEPT
SILENCE_KEPT = 0.08

# Accents (espeak-ng language voices) and timbres (voice variants) combined into speakers.
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
MALE_VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "klatt",
    "klatt2",
    "klatt3",
    "Alex",
    "edward",
    "michel",
    "Mike",
)
FEMALE_VARIANTS = (
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "Annie",
    "linda",
    "steph",
    "shelby",
    "aunty",
    "belinda",
    "grandma",
)
SPEAKER_PITCH = (32, 68)  # espeak -p range for speakers' base pitch (0-99, default 50)
SPEAKER_RATE = (155, 195)  # espeak -s range, words per minute (default 175)
UTTERANCE_JITTER = (3, 0.04)  # per-utterance pitch (+-, espeak units) and rate (+-, fraction) variation

WORD_GROUPS = {
    "DET": "THE A THIS THAT EVERY ONE",
    "ADJ": (
        "BIG SMALL RED GREEN BLUE OLD YOUNG HAPPY QUIET BRIGHT DARK WARM COLD SOFT FAST SLOW TALL SHORT "
        "HEAVY CLEAN EMPTY GOLDEN SILVER WILD GENTLE BRAVE CLEVER"
    ),
    "NOUN": (
        "DOG CAT BIRD HORSE FISH TREE RIVER HOUSE GARDEN WINDOW DOOR TABLE CHAIR BOOK LETTER TRAIN BOAT CAR "
        "ROAD BRIDGE CITY VILLAGE MOUNTAIN FOREST FARMER TEACHER DOCTOR CHILD SISTER BROTHER MOTHER FATHER "
        "KING QUEEN SOLDIER SAILOR BAKER SONG STORY PICTURE APPLE BREAD LAMP CLOCK BELL STONE"
    ),
    "VT": "SAW FOUND TOOK MADE BROUGHT OPENED CLOSED PAINTED CARRIED FOLLOWED WATCHED CALLED HELPED MOVED",
    "VI": "SLEPT WAITED LAUGHED SMILED STOPPED ARRIVED RETURNED FELL RAN WALKED SANG DANCED",
    "ADV": "TODAY YESTERDAY AGAIN SLOWLY QUICKLY QUIETLY EARLY LATE OUTSIDE TOGETHER",
    "PREP": "NEAR UNDER OVER BEHIND BESIDE INTO",
    "NAME": "JOHN MARY PETER ANNA DAVID SARAH TOM LUCY",
}
WORDS = {slot: words.split() for slot, words in WORD_GROUPS.items()}
TEMPLATES = (
    "DET ADJ NOUN VI",
    "DET NOUN VT DET NOUN",
    "NAME VT DET ADJ NOUN",
    "NAME VI ADV",
    "DET ADJ NOUN VI ADV",
    "NAME VT DET NOUN ADV",
    "DET NOUN VI PREP DET NOUN",
    "NAME AND NAME VI",
    "DET NOUN VT NAME",
)


@dataclass(frozen=True)
class Style:
    """A prosody style: espeak pitch shift, rate factor, SSML pitch range, and the peak amplitude."""

    pitch_shift: int
    rate_factor: float
    pitch_range: str
    peak: float


NEUTRAL = Style(pitch_shift=0, rate_factor=1.0, pitch_range="medium", peak=0.45)
STYLES = {
    "neu": NEUTRAL,
    "hap": Style(pitch_shift=22, rate_factor=1.0, pitch_range="x-high", peak=0.7),
    "ang": Style(pitch_shift=5, rate_factor=1.45, pitch_range="medium", peak=0.98),
    "sad": Style(pitch_shift=-20, rate_factor=0.68, pitch_range="x-low", peak=0.2),
}
# IEMOCAP labels written per speaker and session, and the style each is spoken in.
IEMOCAP_LABEL_STYLE = {
    "neu": "neu",
    "hap": "hap",
    "exc": "hap",
    "ang": "ang",
    "sad": "sad",
    "fru": "ang",
    "xxx": "neu",
}
IEMOCAP_VAD = {"neu": 2.5, "hap": 4.0, "exc": 4.0, "ang": 1.5, "sad": 1.5, "fru": 2.0, "xxx": 2.5}
IEMOCAP_NAMES = {
    "neu": "Neutral",
    "hap": "Happiness",
    "exc": "Excited",
    "ang": "Anger",
    "sad": "Sadness",
    "fru": "Frustration",
    "xxx": "Other",
}

# Fluent Speech Commands stand-in: real FSC intents (action, object, location), each with phrasings in FSC's style.
FLUENT_INTENTS = {
    ("activate", "lights", "none"): ("Turn on the lights", "Switch on the lights", "Lights on"),
    ("activate", "lights", "kitchen"): ("Turn on the kitchen lights", "Switch on the lights in the kitchen"),
    ("deactivate", "lights", "bedroom"): (
        "Turn off the bedroom lights",
        "Switch off the lights in the bedroom",
    ),
    ("deactivate", "lights", "none"): ("Turn off the lights", "Lights off"),
    ("increase", "heat", "none"): ("Turn the heat up", "Increase the heating"),
    ("decrease", "heat", "washroom"): (
        "Turn the heat down in the washroom",
        "Decrease the heating in the washroom",
    ),
    ("increase", "volume", "none"): ("Turn up the volume", "Louder please"),
    ("decrease", "volume", "none"): ("Turn down the volume", "Make it quieter"),
    ("activate", "music", "none"): ("Play the music", "Put on some music"),
    ("deactivate", "music", "none"): ("Stop the music", "Pause the music"),
    ("change language", "Korean", "none"): ("Switch the language to Korean", "Change language to Korean"),
    ("bring", "newspaper", "none"): ("Bring me the newspaper", "Get the newspaper"),
}

# ML-SUPERB stand-in: (dataset folder, language folder) -> (espeak-ng voice, utterance id prefix, words). The
# pairs are ML-SUPERB's monolingual sets eng1 (mls/eng), eng3 (voxpopuli/eng), fra1, deu1 (swc/deu), swa and
# deu2 (voxpopuli/deu) (ESPnet single_lang_data_prep.py LANG_TO_SELECTED_DATASET). A new pair goes last: the sets
# draw from one random stream in this order, so appending leaves the earlier sets byte-for-byte equal.
ML_SUPERB_WORDS = {
    "fra": (
        "le la chat maison petit grand rouge bleu manger boire aller venir école été hiver pain lait fenêtre "
        "où très bientôt garçon fille voilà après déjà"
    ),
    "deu": (
        "der die das haus katze hund groß klein rot blau essen trinken gehen kommen schule sommer winter brot "
        "milch fenster wo sehr bald junge mädchen straße grün über schön"
    ),
    "swa": (
        "habari mtoto nyumba kubwa ndogo nyekundu kula kunywa kwenda kuja shule mkate maziwa dirisha wapi sana "
        "rafiki maji chakula asante jambo leo kesho mama baba"
    ),
}
ML_SUPERB_SETS = {
    ("mls", "eng"): ("en-us", "mls"),
    ("voxforge", "fra"): ("fr-fr", "voxforge"),
    ("swc", "deu"): ("de", "swc"),
    ("ALFFA", "swa"): ("sw", "ALFFA"),
    ("voxpopuli", "eng"): ("en-gb", "voxpopuli"),
    ("voxpopuli", "deu"): ("de", "voxpopuli"),
}
ML_SUPERB_SPEAKERS = 4  # per language set: voice variants at different pitches


@dataclass(frozen=True)
class Sizes:
    """How many speakers and utterances each corpus gets."""

    librispeech_train_speakers: int = 24
    librispeech_train_per_speaker: int = 26
    librispeech_eval_speakers: int = 6  # dev-clean and test-clean each
    librispeech_eval_per_speaker: int = 10
    voxceleb_speakers: int = 24
    voxceleb_per_speaker: tuple[int, int, int] = (10, 2, 2)  # train, dev, test
    voxceleb_videos: int = 3
    # Per IEMOCAP speaker (two per session, five sessions): utterances of each written label.
    iemocap_per_speaker: tuple[tuple[str, int], ...] = (
        ("neu", 6),
        ("hap", 4),
        ("exc", 2),
        ("ang", 6),
        ("sad", 6),
        ("fru", 1),
        ("xxx", 1),
    )
    # SV: speakers of the VoxCeleb1 stand-in held out for each trial list (dev and test), and target and
    # non-target trials per list. 0 writes no trial lists.
    sv_speakers_per_list: int = 4
    sv_trials_per_kind: int = 150
    fluent_speakers: tuple[int, int, int] = (5, 2, 2)  # train, valid, test; each says every intent once
    fluent_intents: int = len(FLUENT_INTENTS)  # the first this many of FLUENT_INTENTS
    # ML-SUPERB per language set: 1-hour training set, the 10-minute subset of it, dev, test; the voxpopuli
    # sets (eng3, deu2: a second set of their language) get ml_superb_small instead.
    ml_superb_sizes: tuple[int, int, int, int] = (20, 6, 5, 5)
    ml_superb_small: tuple[int, int, int, int] = (4, 2, 2, 3)
    ml_superb_sets: int = len(ML_SUPERB_SETS)  # the first this many of ML_SUPERB_SETS


TINY = Sizes(
    librispeech_train_speakers=1,
    librispeech_train_per_speaker=2,
    librispeech_eval_speakers=1,
    librispeech_eval_per_speaker=1,
    voxceleb_speakers=2,
    voxceleb_per_speaker=(1, 1, 1),
    voxceleb_videos=1,
    iemocap_per_speaker=(("neu", 1), ("exc", 1), ("fru", 1)),
    sv_speakers_per_list=0,
    fluent_speakers=(1, 1, 1),
    fluent_intents=2,
    ml_superb_sizes=(1, 1, 1, 1),
    ml_superb_sets=2,
)


@dataclass(frozen=True)
class Speaker:
    voice: str
    variant: str
    pitch: int
    rate: int


class SpeakerPool:
    """Hands out distinct speakers: every (voice, variant, pitch) combination is used at most once."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[tuple[str, str, int]] = set()

    def draw(self, count: int, variants: tuple[str, ...]) -> list[Speaker]:
        # Cycle through shuffled variants and voices so a corpus's speakers differ as much as possible.
        variant_order = self.rng.sample(variants, len(variants))
        voice_order = self.rng.sample(VOICES, len(VOICES))
        pitches = np.linspace(*SPEAKER_PITCH, num=max(count, 2)).round().astype(int).tolist()
        self.rng.shuffle(pitches)
        speakers = []
        for i in range(count):
            variant = variant_order[i % len(variant_order)]
            voice = voice_order[(i + i // len(variant_order)) % len(voice_order)]
            pitch = pitches[i]
            while (voice, variant, pitch) in self.used:
                pitch += 1
            self.used.add((voice, variant, pitch))
            speakers.append(Speaker(voice, variant, pitch, self.rng.randint(*SPEAKER_RATE)))
        return speakers


def check_vocabulary() -> dict[str, list[str]]:
    """First CMU pronunciation of every word the sentences can use; fails if one is missing."""
    cmu = load_lexicon(None)
    words = sorted({word for group in WORDS.values() for word in group} | {"AND"})
    missing = [word for word in words if word not in cmu]
    if missing:
        raise SystemExit(f"make_mini_superb: words not in the CMU dictionary: {missing}")
    return {word: cmu[word] for word in words}


def make_sentence(rng: random.Random) -> str:
    template = rng.choice(TEMPLATES)
    return " ".join("AND" if slot == "AND" else rng.choice(WORDS[slot]) for slot in template.split())


class Synthesizer:
    """espeak-ng -> float32 16 kHz audio, peak-normalised and quantised (see the module docstring)."""

    def __init__(self, workdir: Path) -> None:
        if shutil.which("espeak-ng") is None:
            raise SystemExit(
                "make_mini_superb: espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)"
            )
        self.wav_path = workdir / "espeak.wav"

    def __call__(self, text: str, speaker: Speaker, style: Style, rng: random.Random) -> np.ndarray:
        pitch_jitter, rate_jitter = UTTERANCE_JITTER
        pitch = min(max(speaker.pitch + style.pitch_shift + rng.randint(-pitch_jitter, pitch_jitter), 0), 99)
        rate = round(speaker.rate * style.rate_factor * (1 + rng.uniform(-rate_jitter, rate_jitter)))
        ssml = f'<speak><prosody range="{style.pitch_range}">{text.lower()}</prosody></speak>'
        command = ["espeak-ng", "-m", "-z", "-v", f"{speaker.voice}+{speaker.variant}"]
        command += ["-p", str(pitch), "-s", str(rate), "-w", str(self.wav_path), ssml]
        subprocess.run(command, check=True, capture_output=True)
        audio, rate_in = soundfile.read(str(self.wav_path), dtype="float64")
        divisor = gcd(SAMPLE_RATE, rate_in)
        audio = resample_poly(audio, SAMPLE_RATE // divisor, rate_in // divisor)
        audio = audio / max(np.abs(audio).max(), 1e-9)
        return trim_silence(audio) * style.peak


def trim_silence(audio: np.ndarray) -> np.ndarray:
    """Cut leading and trailing stretches below SILENCE_LEVEL (of the peak) to at most SILENCE_KEPT seconds."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_LEVEL)
    kept = round(SILENCE_KEPT * SAMPLE_RATE)
    return audio[max(loud[0] - kept, 0) : loud[-1] + kept + 1]


def write_flac(path: Path, audio: np.ndarray) -> float:
    """Write ``audio`` as 16-bit FLAC holding EFFECTIVE_BITS significant bits; returns its duration in s."""
    step = 2 ** (16 - EFFECTIVE_BITS)
    levels = 2 ** (EFFECTIVE_BITS - 1)
    samples = (np.clip(np.round(audio * levels), -levels, levels - 1) * step).astype(np.int16)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), samples, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return len(samples) / SAMPLE_RATE


def espeak_version() -> str:
    result = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    return result.stdout.split("Data at")[0].strip()
