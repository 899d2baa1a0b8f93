"""mini-SUPERB's README: what was written, with counts and sizes."""

from __future__ import annotations

from pathlib import Path

import soundfile

from scripts.mini_superb.common import (
    EFFECTIVE_BITS,
    FLUENT_INTENTS,
    ML_SUPERB_SPEAKERS,
    espeak_version,
)


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
        f"({sv['test'][0]} trials over {sv['test'][2]} utterances of {sv['test'][1]} speakers, half "
        f"of them male, half female) and "
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
espeak-ng's English (ML-SUPERB's mls/eng and voxpopuli/eng), French (voxforge/fra), German (swc/deu and
voxpopuli/deu) and Swahili (ALFFA/swa) voices, {ML_SUPERB_SPEAKERS} voice variants per set. {sv_text}

| part | utterances | speakers | minutes |
|---|---|---|---|
{chr(10).join(rows)}

IEMOCAP labels written: {labels} (per session: one female and one male speaker).
Total size {size_mb:.1f} MB.
"""
    (out / "README.md").write_text(text)
