"""mini-SUPERB's Speech Commands (KS) and Audio SNIPS (SF) stand-ins; ``make_mini_superb.py`` calls these.

    python scripts/make_mini_superb.py --only ks,sf     # (re)writes only these two, the rest stays as it is

Layouts (read by downstream/data/speech_commands.py and downstream/data/snips.py as the real corpora are):

    SpeechCommands/speech_commands_v0.01/<word>/<speaker hash>_nohash_<n>.flac     the training archive
    SpeechCommands/speech_commands_v0.01/_background_noise_/<noise>.flac
    SpeechCommands/speech_commands_v0.01/{validation,testing}_list.txt            '<word>/<file>' lines
    SpeechCommands/speech_commands_test_set_v0.01/<class>/<hash>_nohash_<n>.flac  12 class folders
    SNIPS/all.iob.snips.txt, SNIPS/slots.txt, SNIPS/{train,valid,test}/<Speaker>-snips-<split>-<n>.flac

Speech Commands: every speaker says each of the 10 keywords once and a few of the 20 other v0.01 words,
each word placed at a random offset in a 1 s clip of zeros. Speaker hashes are drawn until the archive's
own split rule (the SHA-1 of the hash, s3prl's ``split_dataset``) puts the speaker in the intended list, so
validation_list.txt / testing_list.txt agree with the rule. The background-noise recordings are synthetic
noises named after the real ones (white, pink, a band-passed running tap, ...), each NOISE_SECONDS long so
the last partial 1 s window is exercised; the test set's ``_silence_`` clips are 1 s of other noise.

SNIPS: short sentences from a few SNIPS intents (SF_TEMPLATES, used in turn, so every split has them all)
with SNIPS slot types; dev and test sentences are never said in training; each training sentence is said by
one voice (variety of sentences matters more than repetition for a model to generalise), each dev and test
sentence by every voice of the split. The voices carry the SNIPS speaker names of
SUPERB's split (train: US voices; dev and test: others), drawn from espeak-ng's voices like every other
mini-SUPERB speaker; train voices use en-us / en-us-nyc accents, dev and test the British and Caribbean ones.
"""

from __future__ import annotations

import hashlib
import random
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from scripts.mini_superb.common import (
    FEMALE_VARIANTS,
    MALE_VARIANTS,
    NEUTRAL,
    SAMPLE_RATE,
    SEED,
    Speaker,
    SpeakerPool,
    write_flac,
)

SPEECH_COMMANDS = "SpeechCommands"
TRAIN_ARCHIVE = "speech_commands_v0.01"
TEST_ARCHIVE = "speech_commands_test_set_v0.01"
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
OTHER_WORDS = [
    "bed",
    "bird",
    "cat",
    "dog",
    "eight",
    "five",
    "four",
    "happy",
    "house",
    "marvin",
    "nine",
    "one",
    "seven",
    "sheila",
    "six",
    "three",
    "tree",
    "two",
    "wow",
    "zero",
]
NOISES = ("doing_the_dishes", "dude_miaowing", "exercise_bike", "pink_noise", "running_tap", "white_noise")
NOISE_SECONDS = 2.5
NOISE_PEAK = 0.12
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
MAX_UTTERANCES_PER_CLASS = 2**27 - 1  # the archive's split rule

SNIPS = "SNIPS"
SNIPS_SPEAKERS = {  # SUPERB's split (s3prl downstream/ctc/snips.yaml)
    "train": ("Ivy", "Joanna", "Joey", "Justin", "Kendra", "Kimberly", "Matthew", "Salli"),
    "valid": ("Aditi", "Amy", "Geraint", "Nicole"),
    "test": ("Brian", "Emma", "Raveena", "Russell"),
}
SNIPS_MALE = {"Joey", "Justin", "Matthew", "Geraint", "Brian", "Russell"}
SNIPS_ACCENTS = {
    "train": ("en-us", "en-us-nyc"),
    "other": ("en-gb", "en-gb-x-rp", "en-029", "en-gb-scotland"),
}
# (intent, template); {slot} is filled with one of SF_VALUES[slot] and tagged with the slot type.
SF_TEMPLATES = (
    ("PlayMusic", "PLAY {artist}"),
    ("PlayMusic", "PLAY {genre} ON {service}"),
    ("GetWeather", "WEATHER IN {city}"),
    ("GetWeather", "RAIN IN {city} {timeRange}"),
    ("BookRestaurant", "BOOK A {restaurant_type} FOR {party_size_number}"),
    ("BookRestaurant", "TABLE FOR {party_size_number} IN {city}"),
    ("AddToPlaylist", "ADD {artist} TO {playlist}"),
)
SF_VALUES = {
    "artist": (
        "ADELE",
        "JOHN LENNON",
        "MILES DAVIS",
        "ELTON JOHN",
        "BOB MARLEY",
        "NINA SIMONE",
        "STING",
        "NORAH JONES",
        "RAY CHARLES",
        "EDITH PIAF",
    ),
    "service": ("SPOTIFY", "YOUTUBE", "DEEZER", "PANDORA"),
    "genre": ("JAZZ", "ROCK", "BLUES", "REGGAE"),
    "city": ("PARIS", "BOSTON", "LONDON", "CHICAGO", "MADRID", "TOKYO", "DENVER", "BERLIN"),
    "timeRange": ("TOMORROW", "TONIGHT", "THIS WEEKEND", "NEXT MONDAY"),
    "party_size_number": ("TWO", "FOUR", "SIX", "TEN"),
    "restaurant_type": ("PIZZERIA", "STEAKHOUSE", "DINER", "BISTRO"),
    "playlist": ("ROAD TRIP", "WORKOUT", "SUNDAY MORNING", "PARTY"),
}


@dataclass(frozen=True)
class MoreSizes:
    """Speakers and utterances of the KS and SF stand-ins."""

    # Speech Commands: speakers in the training part, validation list, testing list and the test set; how
    # many other words each says (besides the 10 keywords); the test set's _silence_ clips.
    ks_speakers: tuple[int, int, int, int] = (12, 3, 1, 2)
    ks_other_words: int = 5
    ks_test_silence: int = 8
    ks_noises: int = len(NOISES)
    # SNIPS: sentences per split (train, valid, test) and how many of them each voice of the split says.
    sf_sentences: tuple[int, int, int] = (160, 7, 7)
    sf_per_speaker: tuple[int, int, int] = (20, 7, 7)
    sf_speakers: tuple[int, int, int] = (8, 4, 4)  # the first this many names of each split


TINY_MORE = MoreSizes(
    ks_speakers=(1, 1, 1, 1),
    ks_other_words=1,
    ks_test_silence=1,
    ks_noises=1,
    sf_sentences=(2, 1, 1),
    sf_per_speaker=(1, 1, 1),
    sf_speakers=(2, 1, 1),
)


# -- Speech Commands ----------------------------------------------------------------------------------


def which_set(speaker_hash: str) -> str:
    """The archive's split rule for a file of this speaker: 'validation', 'testing' or 'training' (10/10/80 %)."""
    digest = int(hashlib.sha1(speaker_hash.encode("utf-8")).hexdigest(), 16)
    percentage = (digest % (MAX_UTTERANCES_PER_CLASS + 1)) * (100.0 / MAX_UTTERANCES_PER_CLASS)
    if percentage < 10:
        return "validation"
    if percentage < 20:
        return "testing"
    return "training"


def speaker_hash(rng: random.Random, wanted: str, used: set[str]) -> str:
    """A new 8-hex-digit speaker hash that which_set puts in ``wanted``."""
    while True:
        candidate = f"{rng.getrandbits(32):08x}"
        if candidate not in used and which_set(candidate) == wanted:
            used.add(candidate)
            return candidate


def one_second_clip(audio: np.ndarray, rng: random.Random) -> np.ndarray:
    """``audio`` at a random offset in 1 s of zeros (cut to 1 s if longer, as the corpus's clips are)."""
    audio = audio[:CLIP_SAMPLES]
    clip = np.zeros(CLIP_SAMPLES)
    offset = rng.randint(0, CLIP_SAMPLES - len(audio))
    clip[offset : offset + len(audio)] = audio
    return clip


def make_noise(kind: str, seconds: float, generator: np.random.Generator) -> np.ndarray:
    """Synthetic stand-ins for the background-noise recordings, peak NOISE_PEAK."""
    count = round(seconds * SAMPLE_RATE)
    time = np.arange(count) / SAMPLE_RATE
    white = generator.standard_normal(count)
    spectrum = np.fft.rfft(white)
    frequencies = np.fft.rfftfreq(count, 1 / SAMPLE_RATE)
    if kind == "pink_noise":
        spectrum[1:] /= np.sqrt(frequencies[1:])
        noise = np.fft.irfft(spectrum, count)
    elif kind == "running_tap":
        spectrum[(frequencies < 800) | (frequencies > 4000)] = 0
        noise = np.fft.irfft(spectrum, count) * (1 + 0.3 * np.sin(2 * np.pi * 0.7 * time))
    elif kind == "exercise_bike":
        spectrum[frequencies > 1500] = 0
        noise = np.fft.irfft(spectrum, count) * (1 + 0.8 * np.sin(2 * np.pi * 1.6 * time)) ** 2
        noise += 0.3 * np.sin(2 * np.pi * 110 * time) * noise.std()
    elif kind == "doing_the_dishes":
        noise = 0.2 * white
        for start in generator.integers(0, count - 4000, size=max(2, round(seconds * 3))):
            ring = np.exp(-np.arange(4000) / 600) * np.sin(
                2 * np.pi * generator.uniform(1500, 5000) * np.arange(4000) / SAMPLE_RATE
            )
            noise[start : start + 4000] += 4 * ring
    elif kind == "dude_miaowing":
        noise = 0.3 * white
        for start in generator.integers(0, count - 8000, size=max(1, round(seconds / 2))):
            glide = np.linspace(500, 800, 8000) * np.linspace(1, 0.8, 8000)
            phase = 2 * np.pi * np.cumsum(glide) / SAMPLE_RATE
            noise[start : start + 8000] += 3 * np.sin(phase) * np.hanning(8000)
    else:
        noise = white
    return NOISE_PEAK * noise / np.abs(noise).max()


def write_speech_commands(out: Path, sizes: MoreSizes, synthesize) -> None:
    """The training archive and the test set (see the module docstring)."""
    rng = random.Random(f"{SEED}-speechcommands")
    generator = np.random.default_rng(SEED + 35)
    pool = SpeakerPool(rng)
    root = out / SPEECH_COMMANDS / TRAIN_ARCHIVE
    test_root = out / SPEECH_COMMANDS / TEST_ARCHIVE
    used: set[str] = set()
    lists: dict[str, list[str]] = {"validation": [], "testing": []}
    parts = ("training", "validation", "testing", "test set")
    for part, count in zip(parts, sizes.ks_speakers, strict=True):
        half = count // 2
        speakers = pool.draw(half, MALE_VARIANTS) + pool.draw(count - half, FEMALE_VARIANTS)
        for speaker in speakers:
            wanted = "training" if part == "test set" else part
            hashed = speaker_hash(rng, wanted, used)
            words = [*KEYWORDS, *rng.sample(OTHER_WORDS, sizes.ks_other_words)]
            for position, word in enumerate(words):
                clip = one_second_clip(synthesize(word, speaker, NEUTRAL, rng), rng)
                if part == "test set":  # the test set's _unknown_ folder holds several words of a speaker
                    folder = word if word in KEYWORDS else "_unknown_"
                    number = 0 if word in KEYWORDS else position - len(KEYWORDS)
                    path = test_root / folder / f"{hashed}_nohash_{number}.flac"
                else:
                    path = root / word / f"{hashed}_nohash_0.flac"
                    if part in lists:
                        lists[part].append(f"{word}/{path.name}")
                write_flac(path, clip)
    for index in range(sizes.ks_test_silence):
        hashed = speaker_hash(rng, "training", used)
        kind = NOISES[index % len(NOISES)]
        write_flac(test_root / "_silence_" / f"{hashed}_nohash_0.flac", make_noise(kind, 1.0, generator))
    for kind in NOISES[: sizes.ks_noises]:
        write_flac(root / "_background_noise_" / f"{kind}.flac", make_noise(kind, NOISE_SECONDS, generator))
    for part, name in (("validation", "validation_list.txt"), ("testing", "testing_list.txt")):
        (root / name).write_text("".join(f"{entry}\n" for entry in sorted(lists[part])))


# -- Audio SNIPS --------------------------------------------------------------------------------------


def snips_sentence(rng: random.Random, template: int) -> tuple[list[str], list[str], str]:
    """(words, one tag per word, intent) from SF_TEMPLATES[template] with random slot values."""
    intent, text = SF_TEMPLATES[template]
    words, tags = [], []
    for item in text.split():
        match = re.fullmatch(r"\{(\w+)\}", item)
        if match:
            value = rng.choice(SF_VALUES[match.group(1)]).split()
            words += value
            tags += [match.group(1)] * len(value)
        else:
            words.append(item)
            tags.append("O")
    return words, tags, intent


def snips_speakers(rng: random.Random, split: str, count: int) -> dict[str, Speaker]:
    names = SNIPS_SPEAKERS[split][:count]
    accents = SNIPS_ACCENTS["train" if split == "train" else "other"]
    males = [name for name in names if name in SNIPS_MALE]
    females = [name for name in names if name not in SNIPS_MALE]
    voices = {}
    for group, variants in ((males, MALE_VARIANTS[:7]), (females, FEMALE_VARIANTS[:5])):
        chosen = rng.sample(variants, len(group))
        for name, variant in zip(group, chosen, strict=True):
            voices[name] = Speaker(rng.choice(accents), variant, rng.randint(32, 68), rng.randint(150, 190))
    return voices


def split_sentences(rng: random.Random, count: int, avoid: list, distinct: bool) -> list:
    """``count`` sentences, the templates in turn, none of them in ``avoid`` (and no repeats if ``distinct``)."""
    texts: list[tuple[list[str], list[str], str]] = []
    for _ in range(100 * count):
        if len(texts) == count:
            break
        sentence = snips_sentence(rng, len(texts) % len(SF_TEMPLATES))
        if sentence not in avoid and not (distinct and sentence in texts):
            texts.append(sentence)
    if len(texts) < count:
        raise SystemExit(f"make_mini_superb: SF_VALUES allow too few sentences ({len(texts)} of {count})")
    rng.shuffle(texts)
    return texts


def write_snips(out: Path, sizes: MoreSizes, synthesize) -> None:
    """Audio SNIPS layout (see the module docstring). dev and test sentences are drawn first, distinct and
    never said in training; training sentences may repeat (each is said by one voice)."""
    rng = random.Random(f"{SEED}-snips")
    root = out / SNIPS
    lines: list[str] = []
    tag_counts: Counter = Counter()
    texts = {}
    for split, count in (("valid", sizes.sf_sentences[1]), ("test", sizes.sf_sentences[2])):
        texts[split] = split_sentences(rng, count, [s for t in texts.values() for s in t], distinct=True)
    texts["train"] = split_sentences(
        rng, sizes.sf_sentences[0], texts["valid"] + texts["test"], distinct=False
    )
    splits = ("train", "valid", "test")
    for split, per_speaker, speakers in zip(splits, sizes.sf_per_speaker, sizes.sf_speakers, strict=True):
        sentences = len(texts[split])
        voices = snips_speakers(rng, split, speakers)
        for position, (name, voice) in enumerate(voices.items()):
            # consecutive shares, wrapping around, so every sentence is said by about as many voices
            chosen = sorted((position * per_speaker + k) % sentences for k in range(per_speaker))
            for number in chosen:
                words, tags, intent = texts[split][number]
                utterance_id = f"{name}-snips-{split}-{number}"
                write_flac(
                    root / split / f"{utterance_id}.flac", synthesize(" ".join(words), voice, NEUTRAL, rng)
                )
                lines.append(f"{utterance_id} BOS {' '.join(words)} EOS\tO {' '.join(tags)} {intent}")
                tag_counts.update(tags)
    (root / "all.iob.snips.txt").write_text("\n".join(lines) + "\n")
    ordered = sorted(tag_counts, key=lambda tag: (-tag_counts[tag], tag))
    (root / "slots.txt").write_text("\n".join(ordered))


# -- hooks for make_mini_superb.py --------------------------------------------------------------------

#: Corpus name (for --only) -> (writer, the folders it writes under the output root).
CORPORA = {"ks": (write_speech_commands, (SPEECH_COMMANDS,)), "sf": (write_snips, (SNIPS,))}
README_BEGIN = "<!-- ks,sf: written by scripts/mini_superb/ks_sf.py -->"
README_END = "<!-- end ks,sf -->"


def write_corpora(out: Path, names: list[str], synthesize, tiny: bool = False) -> None:
    """Write the named corpora (of CORPORA) under ``out``, replacing their folders."""
    sizes = TINY_MORE if tiny else MoreSizes()
    for name in names:
        writer, folders = CORPORA[name]
        for folder in folders:
            if (out / folder).exists():
                shutil.rmtree(out / folder)
        writer(out, sizes, synthesize)


def _minutes(paths: list[Path]) -> float:
    return sum(soundfile.info(str(path)).duration for path in paths) / 60


def readme_section(out: Path) -> str:
    """The README block describing the KS and SF stand-ins as they are on disk under ``out``."""
    text, rows = [README_BEGIN, ""], []
    root = out / SPEECH_COMMANDS / TRAIN_ARCHIVE
    if root.is_dir():
        listed = {
            name: set((root / f"{name}_list.txt").read_text().split()) for name in ("validation", "testing")
        }
        files = sorted(path for path in root.glob("*/*.flac") if path.parent.name != "_background_noise_")
        parts = {"train": [], "validation": [], "testing": []}
        for path in files:
            entry = f"{path.parent.name}/{path.name}"
            parts[next((name for name in listed if entry in listed[name]), "train")].append(path)
        labels = {
            "train": "train",
            "validation": "dev (validation_list.txt)",
            "testing": "testing_list.txt (unused)",
        }
        for part, paths in parts.items():
            unknown = sum(path.parent.name not in KEYWORDS for path in paths)
            speakers = len({path.name.split("_nohash_")[0] for path in paths})
            rows.append(
                f"| Speech Commands {labels[part]} | {len(paths)} ({unknown} _unknown_) | {speakers} | {_minutes(paths):.1f} |"
            )
        test = sorted((out / SPEECH_COMMANDS / TEST_ARCHIVE).glob("*/*.flac"))
        by_class = Counter(path.parent.name for path in test)
        speakers = len({path.name.split("_nohash_")[0] for path in test if path.parent.name != "_silence_"})
        rows.append(
            f"| Speech Commands test set | {len(test)} ({by_class['_unknown_']} _unknown_, {by_class['_silence_']} "
            f"_silence_) | {speakers} | {_minutes(test):.1f} |"
        )
        noise = sorted((root / "_background_noise_").glob("*.flac"))
        rows.append(
            f"| Speech Commands _background_noise_ | {len(noise)} recordings | - | {_minutes(noise):.1f} |"
        )
        text.append(
            "Speech Commands (KS): `SpeechCommands/speech_commands_v0.01/<word>/<hash>_nohash_0.flac` with "
            "`validation_list.txt`, `testing_list.txt` and `_background_noise_/` (synthetic noises named as the "
            f"real recordings, {NOISE_SECONDS} s each), and the separate test set `SpeechCommands/speech_commands_test_set_v0.01/"
            "<class>/` whose `_unknown_` and `_silence_` folders hold other words and 1 s of noise; each speaker "
            "says the 10 keywords and a few other v0.01 words, each in a 1 s clip, and the two lists agree with "
            "the archive's hash rule."
        )
        text.append("")
    snips = out / SNIPS
    if snips.is_dir():
        lines = (snips / "all.iob.snips.txt").read_text().splitlines()
        tags = {tag for line in lines for tag in line.split("\t")[1].split()[1:-1]} - {"O"}
        for split in ("train", "valid", "test"):
            ids = [line.split()[0] for line in lines if f"-snips-{split}-" in line.split()[0]]
            voices = len({utterance_id.split("-")[0] for utterance_id in ids})
            sentences = len(
                {line.split("\t")[0].split(maxsplit=1)[1] for line in lines if line.split()[0] in ids}
            )
            paths = [snips / split / f"{utterance_id}.flac" for utterance_id in ids]
            rows.append(
                f"| SNIPS {split} ({sentences} distinct sentences) | {len(ids)} | {voices} | {_minutes(paths):.1f} |"
            )
        text.append(
            "Audio SNIPS (SF): `SNIPS/all.iob.snips.txt` (lines `<Speaker>-snips-<split>-<n> BOS <WORDS> EOS<TAB>O "
            f"<tags> <intent>`), `SNIPS/slots.txt` and `SNIPS/{{train,valid,test}}/<id>.flac`: {len(SF_TEMPLATES)} "
            f"templates of SNIPS intents with {len(tags)} SNIPS slot types, said by voices named after SUPERB's "
            "speaker split (train Ivy ... Salli, dev Aditi, Amy, Geraint, Nicole, test Brian, Emma, Raveena, "
            "Russell)."
        )
    text += ["", "| part | utterances | speakers | minutes |", "|---|---|---|---|", *rows, "", README_END]
    return "\n".join(text) + "\n"


def update_readme(out: Path) -> None:
    """Put the KS/SF block into ``out``/README.md (replacing an earlier one) before the 'Total size' line,
    and recompute that line over every file but the README."""
    readme = out / "README.md"
    text = readme.read_text()
    if README_BEGIN in text:
        before, _, rest = text.partition(README_BEGIN)
        _, _, after = rest.partition(README_END + "\n\n")
        text = before + after
    size_mb = sum(path.stat().st_size for path in out.rglob("*") if path.is_file() and path != readme) / 1e6
    total = re.search(r"^Total size [0-9.]+ MB\.\n", text, flags=re.MULTILINE)
    block = readme_section(out) + "\n"
    if total is None:
        text = text.rstrip("\n") + "\n\n" + block + f"Total size {size_mb:.1f} MB.\n"
    else:
        text = text[: total.start()] + block + f"Total size {size_mb:.1f} MB.\n" + text[total.end() :]
    readme.write_text(text)
