"""Synthesise mini-SUPERB: a small speech corpus in the LibriSpeech, VoxCeleb1, IEMOCAP, Fluent Speech Commands
and ML-SUPERB layouts.

The machines this project runs on may have no datasets and no internet, so the repository ships this
corpus (data/mini_superb) for the default run and the tests. It is made with espeak-ng (Debian package
espeak-ng) and read by the same readers as the real corpora (downstream/data):

    LibriSpeech/<split>/<speaker>/<chapter>/<speaker>-<chapter>-<nnnn>.flac + <speaker>-<chapter>.trans.txt
    LibriSpeech/librispeech-lexicon.txt       first CMU pronunciation of every word used
    VoxCeleb1/wav/id1nnnn/<video>/<nnnnn>.flac + VoxCeleb1/iden_split.txt ('<1|2|3> <path>')
    IEMOCAP/Session{1..5}/sentences/wav/<dialog>/<utterance>.flac
    IEMOCAP/Session{1..5}/dialog/EmoEvaluation/<dialog>.txt ('[start - end]<TAB>utt<TAB>emo<TAB>[V, A, D]')
    VoxCeleb1/veri_test.txt, VoxCeleb1/dev_trials.txt      SV trials '<1|0> <path> <path>' over the VoxCeleb1 audio
    FluentSpeechCommands/data/{train,valid,test}_data.csv + wavs/speakers/<speakerId>/<id>.flac
    ML-SUPERB/<dataset>/<language>/wav/<id>.flac + transcript_{1h,10min}_train.txt, transcript_10min_{dev,test}.txt
    Diarization/{train,dev,test}/ (Kaldi-style: wav.scp, segments, utt2spk, reco2dur, rttm) and
    quesst14Database/ (QUESST 2014): made by scripts/mini_superb_sd_qbe.py, see there

Usage:
    python scripts/make_mini_superb.py                      # (re)writes data/mini_superb
    python scripts/make_mini_superb.py --out /tmp/mini --tiny   # a few utterances per corpus, for tests
    python scripts/make_mini_superb.py --only ks,sf         # (re)writes only Speech Commands and SNIPS
                                                            # (scripts/mini_superb_ks_sf.py), the rest unchanged
    python scripts/make_mini_superb.py --only sd,qbe        # likewise the diarization and QUESST 2014 stand-ins
                                                            # (scripts/mini_superb_sd_qbe.py)

Parameters (the committed corpus was made with exactly these; the output is byte-for-byte deterministic
for a given espeak-ng and libsndfile version):
- Speakers: an espeak-ng English voice (accent) + a voice variant (timbre, pitch) + a pitch setting
  (espeak -p, SPEAKER_PITCH) + a speaking rate (-s, SPEAKER_RATE words per minute). Every corpus (and
  every LibriSpeech split) has its own speakers; no two speakers share voice, variant and pitch.
- Sentences: 3-6 words from TEMPLATES filled with WORDS, all in the CMU dictionary, so phone labels come
  from the lexicon exactly as for LibriSpeech. Transcripts are upper case like LibriSpeech's.
- Emotions (IEMOCAP): four prosody STYLES, each a pitch shift, a rate factor, an espeak pitch range and
  a peak amplitude; 'exc' utterances use the happy style (the reader merges exc into hap), and a few
  'fru'/'xxx' utterances are written so the reader's label filter is exercised.
- IC: FLUENT_INTENTS, real Fluent Speech Commands intents with FSC-style phrasings, said once per speaker.
- ML-SUPERB: ML_SUPERB_SETS, espeak-ng voices of four languages under ML-SUPERB's dataset/language folders,
  random sentences from per-language word lists (ML_SUPERB_WORDS; English uses the sentences above).
- SV: trial lists over the VoxCeleb1 speakers (Sizes.sv_*); they add no audio.
- Every corpus draws from its own seeded random stream, so adding one leaves the others byte-for-byte equal.
- Signal: espeak-ng's 22,050 Hz output is resampled to 16 kHz (polyphase, scipy), peak-normalised to the
  style's or recording's amplitude and quantised to EFFECTIVE_BITS bits inside 16-bit FLAC (FLAC stores
  the unused low bits for free), which keeps the committed corpus under 15 MB.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import string
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from downstream.data.lexicon import load_lexicon  # noqa: E402

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
# pairs are ML-SUPERB's monolingual sets eng1 (mls/eng), eng3 (voxpopuli/eng), fra1, deu and swa.
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
    sv_trials_per_kind: int = 40
    fluent_speakers: tuple[int, int, int] = (5, 2, 2)  # train, valid, test; each says every intent once
    fluent_intents: int = len(FLUENT_INTENTS)  # the first this many of FLUENT_INTENTS
    # ML-SUPERB per language set: 1-hour training set, the 10-minute subset of it, dev, test; the second
    # English set (voxpopuli) gets ml_superb_small instead.
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


def write_librispeech(
    out: Path, sizes: Sizes, synthesize: Synthesizer, lexicon: dict[str, list[str]]
) -> dict:
    rng = random.Random(f"{SEED}-librispeech")
    pool = SpeakerPool(rng)
    speaker_ids = iter(rng.sample(range(100, 9000), 200))
    counts = {}
    splits = (
        ("train-clean-100", sizes.librispeech_train_speakers, sizes.librispeech_train_per_speaker),
        ("dev-clean", sizes.librispeech_eval_speakers, sizes.librispeech_eval_per_speaker),
        ("test-clean", sizes.librispeech_eval_speakers, sizes.librispeech_eval_per_speaker),
    )
    for split, num_speakers, per_speaker in splits:
        half = num_speakers // 2
        speakers = pool.draw(half, MALE_VARIANTS) + pool.draw(num_speakers - half, FEMALE_VARIANTS)
        seconds = 0.0
        for speaker in speakers:
            speaker_id = next(speaker_ids)
            chapters = sorted(rng.sample(range(1000, 9999), 2))
            for chapter_index, chapter in enumerate(chapters):
                chapter_dir = out / "LibriSpeech" / split / str(speaker_id) / str(chapter)
                lines = []
                for number in range(chapter_index, per_speaker, 2):  # alternate chapters
                    utterance_id = f"{speaker_id}-{chapter}-{number // 2:04d}"
                    text = make_sentence(rng)
                    seconds += write_flac(
                        chapter_dir / f"{utterance_id}.flac", synthesize(text, speaker, NEUTRAL, rng)
                    )
                    lines.append(f"{utterance_id} {text}")
                if lines:
                    (chapter_dir / f"{speaker_id}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
        counts[split] = (num_speakers * per_speaker, num_speakers, seconds)
    lexicon_lines = [f"{word}\t{' '.join(phones)}" for word, phones in sorted(lexicon.items())]
    (out / "LibriSpeech" / "librispeech-lexicon.txt").write_text("\n".join(lexicon_lines) + "\n")
    return counts


def write_voxceleb1(out: Path, sizes: Sizes, synthesize: Synthesizer) -> dict:
    rng = random.Random(f"{SEED}-voxceleb1")
    pool = SpeakerPool(rng)
    half = sizes.voxceleb_speakers // 2
    speakers = pool.draw(half, MALE_VARIANTS) + pool.draw(sizes.voxceleb_speakers - half, FEMALE_VARIANTS)
    video_alphabet = string.ascii_letters + string.digits + "-_"
    split_lines = []
    seconds = Counter()
    for number, speaker in enumerate(speakers, 1):
        speaker_id = f"id1{number:04d}"
        videos = [
            "".join(rng.choice(video_alphabet) for _ in range(11)) for _ in range(sizes.voxceleb_videos)
        ]
        video_peaks = [rng.uniform(0.3, 0.8) for _ in videos]  # recording level differs per video
        sets = [
            code for code, count in zip("123", sizes.voxceleb_per_speaker, strict=True) for _ in range(count)
        ]
        rng.shuffle(sets)
        next_file = Counter()
        for position, code in enumerate(sets):
            video = position % len(videos)
            next_file[video] += 1
            relative = f"{speaker_id}/{videos[video]}/{next_file[video]:05d}.flac"
            style = replace(NEUTRAL, peak=video_peaks[video])
            audio = synthesize(make_sentence(rng), speaker, style, rng)
            seconds[code] += write_flac(out / "VoxCeleb1" / "wav" / relative, audio)
            split_lines.append(f"{code} {relative}")
    (out / "VoxCeleb1" / "iden_split.txt").write_text(
        "\n".join(sorted(split_lines, key=lambda line: line[2:])) + "\n"
    )
    names = {"1": "train", "2": "dev", "3": "test"}
    return {
        names[code]: (sum(line[0] == code for line in split_lines), len(speakers), seconds[code])
        for code in "123"
    }


def write_iemocap(out: Path, sizes: Sizes, synthesize: Synthesizer) -> dict:
    rng = random.Random(f"{SEED}-iemocap")
    pool = SpeakerPool(rng)
    males = pool.draw(5, MALE_VARIANTS)
    females = pool.draw(5, FEMALE_VARIANTS)
    label_counts: Counter = Counter()
    seconds = 0.0
    for session in range(1, 6):
        session_dir = out / "IEMOCAP" / f"Session{session}"
        dialogs = [f"Ses0{session}F_impro01", f"Ses0{session}F_script01_1", f"Ses0{session}M_impro01"]
        turns: dict[str, list[tuple[str, str]]] = {
            dialog: [] for dialog in dialogs
        }  # dialog -> (gender, label)
        for gender in "FM":
            labels = [label for label, count in sizes.iemocap_per_speaker for _ in range(count)]
            rng.shuffle(labels)
            for position, label in enumerate(labels):
                turns[dialogs[position % len(dialogs)]].append((gender, label))
        for dialog in dialogs:
            rng.shuffle(turns[dialog])
            records = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            clock = rng.uniform(1.0, 5.0)
            turn_numbers = Counter()
            for gender, label in turns[dialog]:
                utterance_id = f"{dialog}_{gender}{turn_numbers[gender]:03d}"
                turn_numbers[gender] += 1
                speaker = (females if gender == "F" else males)[session - 1]
                style = STYLES[IEMOCAP_LABEL_STYLE[label]]
                audio = synthesize(make_sentence(rng), speaker, style, rng)
                duration = write_flac(
                    session_dir / "sentences" / "wav" / dialog / f"{utterance_id}.flac", audio
                )
                seconds += duration
                label_counts[label] += 1
                vad = IEMOCAP_VAD[label]
                records.append(
                    f"[{clock:.4f} - {clock + duration:.4f}]\t{utterance_id}\t{label}\t[{vad:.4f}, {vad:.4f}, {vad:.4f}]"
                )
                records += [f"C-E{evaluator}:\t{IEMOCAP_NAMES[label]};\t()" for evaluator in (1, 2, 3)]
                records += [
                    f"A-E{evaluator}:\tval {round(vad)}; act {round(vad)}; dom  {round(vad)};\t()"
                    for evaluator in (1, 2)
                ]
                records.append("")
                clock += duration + rng.uniform(0.3, 2.0)
            label_file = session_dir / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
            label_file.parent.mkdir(parents=True, exist_ok=True)
            label_file.write_text("\n".join(records) + "\n")
    return {"labels": dict(label_counts), "seconds": seconds, "speakers": 10}


def write_sv_trials(out: Path, sizes: Sizes) -> dict:
    """Verification trial lists over the VoxCeleb1 stand-in (no new audio): the last sv_speakers_per_list
    speakers for test (veri_test.txt), the ones before them for dev (dev_trials.txt); the other speakers
    are SV's training speakers. Each list has sv_trials_per_kind distinct target and non-target trials."""
    count = sizes.sv_speakers_per_list
    if not count:
        return {}
    rng = random.Random(f"{SEED}-sv")
    wav_dir = out / "VoxCeleb1" / "wav"
    speakers = sorted(folder.name for folder in wav_dir.iterdir() if folder.is_dir())
    if len(speakers) < 2 * count + 1:
        raise SystemExit(
            f"make_mini_superb: SV needs {2 * count + 1} VoxCeleb1 speakers, got {len(speakers)}"
        )
    summary = {}
    for split, name, chosen in (
        ("dev", "dev_trials.txt", speakers[-2 * count : -count]),
        ("test", "veri_test.txt", speakers[-count:]),
    ):
        files = {
            speaker: sorted(str(path.relative_to(wav_dir)) for path in (wav_dir / speaker).glob("*/*.flac"))
            for speaker in chosen
        }
        lines: list[str] = []
        seen: set[tuple[str, str]] = set()
        for label in ("1", "0"):
            made = 0
            while made < sizes.sv_trials_per_kind:
                if label == "1":
                    first, second = rng.sample(files[rng.choice(chosen)], 2)
                else:
                    speaker_a, speaker_b = rng.sample(chosen, 2)
                    first, second = rng.choice(files[speaker_a]), rng.choice(files[speaker_b])
                if (first, second) in seen or (second, first) in seen:
                    continue
                seen.add((first, second))
                lines.append(f"{label} {first} {second}")
                made += 1
        rng.shuffle(lines)
        (out / "VoxCeleb1" / name).write_text("\n".join(lines) + "\n")
        summary[split] = (len(lines), len(chosen), sum(len(paths) for paths in files.values()))
    summary["train_speakers"] = len(speakers) - 2 * count
    return summary


def write_fluent_commands(out: Path, sizes: Sizes, synthesize: Synthesizer) -> dict:
    """Fluent Speech Commands layout: every speaker says each intent once, in one of its phrasings."""
    rng = random.Random(f"{SEED}-fluent")
    pool = SpeakerPool(rng)
    total = sum(sizes.fluent_speakers)
    half = total // 2
    speakers = pool.draw(half, MALE_VARIANTS) + pool.draw(total - half, FEMALE_VARIANTS)
    rng.shuffle(speakers)
    intents = list(FLUENT_INTENTS.items())[: sizes.fluent_intents]
    speaker_alphabet = string.ascii_letters + string.digits
    root = out / "FluentSpeechCommands"
    (root / "data").mkdir(parents=True, exist_ok=True)
    summary = {}
    start = 0
    for split, csv_name, count in zip(
        ("train", "valid", "test"),
        ("train_data.csv", "valid_data.csv", "test_data.csv"),
        sizes.fluent_speakers,
        strict=True,
    ):
        rows = []
        seconds = 0.0
        for speaker in speakers[start : start + count]:
            speaker_id = "".join(rng.choice(speaker_alphabet) for _ in range(16))
            for (action, obj, location), phrasings in intents:
                phrase = rng.choice(phrasings)
                digits = f"{rng.getrandbits(128):032x}"
                file_id = "-".join((digits[:8], digits[8:12], digits[12:16], digits[16:20], digits[20:]))
                relative = f"wavs/speakers/{speaker_id}/{file_id}.flac"
                seconds += write_flac(root / relative, synthesize(phrase, speaker, NEUTRAL, rng))
                rows.append([relative, speaker_id, phrase, action, obj, location])
        start += count
        with (root / "data" / csv_name).open("w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(["", "path", "speakerId", "transcription", "action", "object", "location"])
            writer.writerows([index, *row] for index, row in enumerate(rows))
        summary[split] = (len(rows), count, seconds)
    return summary


def ml_superb_sentence(language: str, rng: random.Random) -> str:
    """3-5 words in sentence case with final punctuation (which ML-SUPERB's normalisation removes)."""
    if language == "eng":
        words = make_sentence(rng).lower().split()
    else:
        vocabulary = ML_SUPERB_WORDS[language].split()
        words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 5))]
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".?!")


def write_ml_superb(out: Path, sizes: Sizes, synthesize: Synthesizer) -> dict:
    """ML-SUPERB layout: <dataset>/<language>/wav/<id>.flac and transcript_{1h,10min}_train.txt,
    transcript_10min_{dev,test}.txt with lines '<id> <duration> <text>'; the 10-minute set is the start
    of the 1-hour set."""
    rng = random.Random(f"{SEED}-mlsuperb")
    summary = {}
    for (dataset, language), (voice, prefix) in list(ML_SUPERB_SETS.items())[: sizes.ml_superb_sets]:
        hour, ten_minutes, dev, test = (
            sizes.ml_superb_small if dataset == "voxpopuli" else sizes.ml_superb_sizes
        )
        variants = rng.sample(MALE_VARIANTS[:7] + FEMALE_VARIANTS[:5], ML_SUPERB_SPEAKERS)
        speakers = [
            Speaker(voice, variant, rng.randint(*SPEAKER_PITCH), rng.randint(*SPEAKER_RATE))
            for variant in variants
        ]
        folder = out / "ML-SUPERB" / dataset / language
        lines: dict[str, list[str]] = {}
        seconds = 0.0
        number = 0
        for split, count in (("train", hour), ("dev", dev), ("test", test)):
            lines[split] = []
            for _ in range(count):
                utterance_id = f"{prefix}_{language}_{number:06d}"
                number += 1
                text = ml_superb_sentence(language, rng)
                duration = write_flac(
                    folder / "wav" / f"{utterance_id}.flac",
                    synthesize(text, rng.choice(speakers), NEUTRAL, rng),
                )
                seconds += duration
                lines[split].append(f"{utterance_id} {duration:.2f} {text}")
        files = {
            "transcript_1h_train.txt": lines["train"],
            "transcript_10min_train.txt": lines["train"][:ten_minutes],
            "transcript_10min_dev.txt": lines["dev"],
            "transcript_10min_test.txt": lines["test"],
        }
        for name, file_lines in files.items():
            (folder / name).write_text("\n".join(file_lines) + "\n", encoding="utf-8")
        summary[f"{dataset}/{language}"] = (hour, ten_minutes, dev, test, seconds)
    return summary


def espeak_version() -> str:
    result = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True)
    return result.stdout.split("Data at")[0].strip()


def write_readme(
    out: Path, librispeech: dict, voxceleb: dict, iemocap: dict, sv: dict, fluent: dict, ml_superb: dict
) -> None:
    size_mb = sum(path.stat().st_size for path in out.rglob("*") if path.is_file()) / 1e6
    kept = sum(
        count for label, count in iemocap["labels"].items() if label in ("neu", "hap", "exc", "ang", "sad")
    )
    rows = [
        f"| LibriSpeech {split} | {n} | {speakers} | {sec / 60:.1f} |"
        for split, (n, speakers, sec) in librispeech.items()
    ]
    rows += [
        f"| VoxCeleb1 {split} | {n} | {speakers} | {sec / 60:.1f} |"
        for split, (n, speakers, sec) in voxceleb.items()
    ]
    rows.append(
        f"| IEMOCAP (5 sessions) | {kept} kept of {sum(iemocap['labels'].values())} | 10 | {iemocap['seconds'] / 60:.1f} |"
    )
    rows += [
        f"| Fluent Speech Commands {split} | {n} | {speakers} | {sec / 60:.1f} |"
        for split, (n, speakers, sec) in fluent.items()
    ]
    rows += [
        f"| ML-SUPERB {name} | {hour} (10 min: {ten}) / {dev} / {test} | {ML_SUPERB_SPEAKERS} | {sec / 60:.1f} |"
        for name, (hour, ten, dev, test, sec) in ml_superb.items()
    ]
    sv_text = (
        f"SV trial lists over the VoxCeleb1 audio (no audio of their own): `VoxCeleb1/veri_test.txt` "
        f"({sv['test'][0]} trials over {sv['test'][2]} utterances of {sv['test'][1]} speakers) and "
        f"`VoxCeleb1/dev_trials.txt` ({sv['dev'][0]} trials, {sv['dev'][1]} other speakers), half of them "
        f"target trials; SV trains on the remaining {sv['train_speakers']} speakers."
        if sv
        else "No SV trial lists (tiny corpus)."
    )
    labels = ", ".join(f"{label} {count}" for label, count in sorted(iemocap["labels"].items()))
    text = f"""# mini-SUPERB

A small synthetic speech corpus that ships with the project so that every task runs, and the tests pass,
without downloads. It imitates the layouts of LibriSpeech (PR, ASR), VoxCeleb1 (SID, SV), IEMOCAP (ER),
Fluent Speech Commands (IC) and ML-SUPERB (ml_mono, ml_multi), so the readers in `downstream/data/` read it
exactly as they read the real corpora. It is *not* speech data
for research: it checks that the pipeline learns, it does not measure how well a model understands speech.

Made by `python scripts/make_mini_superb.py` (parameters at the top of that script) with {espeak_version()},
libsndfile {soundfile.__libsndfile_version__}: espeak-ng voices and voice variants with different pitch
and speaking rate are the speakers; sentences of 3-6 words from a fixed vocabulary of CMU-dictionary words
are the transcripts; four prosody styles (pitch, rate, pitch range, amplitude) are the emotions neutral,
happy (also written as 'exc', which the reader merges into happy), angry and sad. A few utterances carry
IEMOCAP labels that SUPERB leaves out ('fru', 'xxx'). Audio: 16 kHz mono FLAC with {EFFECTIVE_BITS}
significant bits. All audio is FLAC, including VoxCeleb1 and IEMOCAP, whose real files are WAV: the
VoxCeleb1 split file lists the `.flac` paths, and the IEMOCAP reader accepts `<utterance>.wav` or `.flac`.
`LibriSpeech/librispeech-lexicon.txt` holds the first CMU pronunciation of every word used.

Fluent Speech Commands: `FluentSpeechCommands/data/{{train,valid,test}}_data.csv` (columns index, path,
speakerId, transcription, action, object, location) list `wavs/speakers/<speakerId>/<id>.flac`; each
speaker says each of {len(FLUENT_INTENTS)} real FSC intents once in one of its phrasings, and the splits have
different speakers. ML-SUPERB: `ML-SUPERB/<dataset>/<language>/wav/<id>.flac` with
`transcript_{{1h,10min}}_train.txt` (the 10-minute set is the start of the 1-hour set) and
`transcript_10min_{{dev,test}}.txt`, lines `<id> <duration> <text>`; random 3-5 word sentences spoken by
espeak-ng's English (ML-SUPERB's mls/eng and voxpopuli/eng), French (voxforge/fra), German (swc/deu) and
Swahili (ALFFA/swa) voices, {ML_SUPERB_SPEAKERS} voice variants per set. {sv_text}

| part | utterances | speakers | minutes |
|---|---|---|---|
{chr(10).join(rows)}

IEMOCAP labels written: {labels} (per session: one female and one male speaker).
Total size {size_mb:.1f} MB.
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced if it exists)")
    parser.add_argument("--tiny", action="store_true", help="a few utterances per corpus (tests)")
    parser.add_argument(
        "--only",
        help="comma-separated corpora to (re)write into an existing --out, leaving the others as they are: "
        "ks (Speech Commands), sf (SNIPS); see scripts/mini_superb_ks_sf.py; sd (diarization), qbe (QUESST "
        "2014); see scripts/mini_superb_sd_qbe.py",
    )
    args = parser.parse_args(argv)
    from scripts import mini_superb_ks_sf, mini_superb_sd_qbe  # noqa: PLC0415 - they import this module

    if args.only is not None:
        names = [name.strip() for name in args.only.split(",") if name.strip()]
        known = (*mini_superb_ks_sf.CORPORA, *mini_superb_sd_qbe.CORPORA)
        unknown = sorted(set(names) - set(known))
        if unknown or not names:
            raise SystemExit(f"make_mini_superb: --only takes {', '.join(known)}, got {args.only!r}")
        readme = args.out / "README.md"
        if not (readme.is_file() and readme.read_text().startswith("# mini-SUPERB")):
            raise SystemExit(
                f"make_mini_superb: --only needs an existing mini-SUPERB folder as --out, got '{args.out}'"
            )
        ks_sf = [name for name in names if name in mini_superb_ks_sf.CORPORA]
        sd_qbe = tuple(name for name in names if name in mini_superb_sd_qbe.CORPORA)
        with tempfile.TemporaryDirectory() as workdir:
            synthesize = Synthesizer(Path(workdir))
            if ks_sf:
                mini_superb_ks_sf.write_corpora(args.out, ks_sf, synthesize, tiny=args.tiny)
            sections = mini_superb_sd_qbe.write(args.out, sd_qbe, args.tiny, synthesize) if sd_qbe else {}
        if ks_sf:
            mini_superb_ks_sf.update_readme(args.out)
        if sd_qbe:
            mini_superb_sd_qbe.update_readme(args.out, sections)
        print(readme.read_text(), file=sys.stderr)
        return
    sizes = TINY if args.tiny else Sizes()
    lexicon = check_vocabulary()
    if args.out.exists() and any(args.out.iterdir()):
        readme = args.out / "README.md"
        if not (readme.is_file() and readme.read_text().startswith("# mini-SUPERB")):
            raise SystemExit(
                f"make_mini_superb: --out '{args.out}' exists and is not a mini-SUPERB folder; not replacing it"
            )
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        synthesize = Synthesizer(Path(workdir))
        librispeech = write_librispeech(args.out, sizes, synthesize, lexicon)
        voxceleb = write_voxceleb1(args.out, sizes, synthesize)
        iemocap = write_iemocap(args.out, sizes, synthesize)
        sv = write_sv_trials(args.out, sizes)
        fluent = write_fluent_commands(args.out, sizes, synthesize)
        ml_superb = write_ml_superb(args.out, sizes, synthesize)
        mini_superb_ks_sf.write_corpora(args.out, list(mini_superb_ks_sf.CORPORA), synthesize, tiny=args.tiny)
        sections = mini_superb_sd_qbe.write(args.out, mini_superb_sd_qbe.CORPORA, args.tiny, synthesize)
    write_readme(args.out, librispeech, voxceleb, iemocap, sv, fluent, ml_superb)
    mini_superb_ks_sf.update_readme(args.out)
    mini_superb_sd_qbe.update_readme(args.out, sections)
    print((args.out / "README.md").read_text(), file=sys.stderr)


if __name__ == "__main__":
    main()
