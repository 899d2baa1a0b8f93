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
    quesst14Database/ (QUESST 2014): made by scripts/mini_superb/sd_qbe.py, see there

Usage:
    python scripts/make_mini_superb.py                      # (re)writes data/mini_superb
    python scripts/make_mini_superb.py --out /tmp/mini --tiny   # a few utterances per corpus, for tests
    python scripts/make_mini_superb.py --only ks,sf         # (re)writes only Speech Commands and SNIPS
                                                            # (scripts/mini_superb/ks_sf.py), the rest unchanged
    python scripts/make_mini_superb.py --only sd,qbe        # likewise the diarization and QUESST 2014 stand-ins
                                                            # (scripts/mini_superb/sd_qbe.py)

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
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.mini_superb import ks_sf as mini_superb_ks_sf  # noqa: E402
from scripts.mini_superb import sd_qbe as mini_superb_sd_qbe  # noqa: E402
from scripts.mini_superb.common import DEFAULT_OUT, TINY, Sizes, Synthesizer, check_vocabulary  # noqa: E402
from scripts.mini_superb.corpora import (  # noqa: E402
    write_fluent_commands,
    write_iemocap,
    write_librispeech,
    write_ml_superb,
    write_sv_trials,
    write_voxceleb1,
)
from scripts.mini_superb.readme import write_readme  # noqa: E402

__all__ = ["TINY", "main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced if it exists)")
    parser.add_argument("--tiny", action="store_true", help="a few utterances per corpus (tests)")
    parser.add_argument(
        "--only",
        help="comma-separated corpora to (re)write into an existing --out, leaving the others as they are: "
        "ks (Speech Commands), sf (SNIPS); see scripts/mini_superb/ks_sf.py; sd (diarization), qbe (QUESST "
        "2014); see scripts/mini_superb/sd_qbe.py",
    )
    args = parser.parse_args(argv)

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
