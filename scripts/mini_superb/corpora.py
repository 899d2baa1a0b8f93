"""The LibriSpeech, VoxCeleb1 (with SV trial lists), IEMOCAP, Fluent Speech Commands and ML-SUPERB stand-ins."""

from __future__ import annotations

import csv
import random
import string
from collections import Counter
from dataclasses import replace
from pathlib import Path

from scripts.mini_superb.common import (
    FEMALE_VARIANTS,
    FLUENT_INTENTS,
    IEMOCAP_LABEL_STYLE,
    IEMOCAP_NAMES,
    IEMOCAP_VAD,
    MALE_VARIANTS,
    ML_SUPERB_SETS,
    ML_SUPERB_SPEAKERS,
    ML_SUPERB_WORDS,
    NEUTRAL,
    SEED,
    SPEAKER_PITCH,
    SPEAKER_RATE,
    STYLES,
    Sizes,
    Speaker,
    SpeakerPool,
    Synthesizer,
    make_sentence,
    write_flac,
)


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
    """Verification trial lists over the VoxCeleb1 stand-in (no new audio): sv_speakers_per_list speakers
    for test (veri_test.txt) and as many others for dev (dev_trials.txt), half of each list from the male
    speakers (the first half of write_voxceleb1's speakers) and half from the female ones, as VoxCeleb1's
    test speakers are of both genders (the last ones of each half for test, the ones before them for dev);
    the other speakers are SV's training speakers. Each list has sv_trials_per_kind distinct target and
    non-target trials."""
    count = sizes.sv_speakers_per_list
    if not count:
        return {}
    rng = random.Random(f"{SEED}-sv")
    wav_dir = out / "VoxCeleb1" / "wav"
    speakers = sorted(folder.name for folder in wav_dir.iterdir() if folder.is_dir())
    male, female = speakers[: sizes.voxceleb_speakers // 2], speakers[sizes.voxceleb_speakers // 2 :]
    from_male = count // 2
    if len(male) < 2 * from_male + 1 or len(female) < 2 * (count - from_male) + 1:
        raise SystemExit(
            f"make_mini_superb: SV needs {2 * count + 2} VoxCeleb1 speakers of both genders, got {len(speakers)}"
        )

    def pick(lists_after: int) -> list[str]:
        """count speakers of both genders, lists_after lists' worth of speakers before each half's end."""
        end_male, end_female = (
            len(male) - lists_after * from_male,
            len(female) - lists_after * (count - from_male),
        )
        return male[end_male - from_male : end_male] + female[end_female - (count - from_male) : end_female]

    summary = {}
    for split, name, chosen in (("dev", "dev_trials.txt", pick(1)), ("test", "veri_test.txt", pick(0))):
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
