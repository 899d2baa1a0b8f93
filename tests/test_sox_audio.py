"""SUPERB's audio effects against the sox program itself: the shared loader's gain (SV, KS, QbE) and SV's
VAD (sox ``silence``, cached), on the shipped mini corpus's files and on crafted ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from downstream.data.audio import load_audio
from downstream.data.corpus import Utterance
from downstream.data.dataset import AudioDataset
from downstream.data.sox_vad import SoxError, vad_files
from tests.helpers import MINI_SUPERB, S3PRL_KS_QBE, S3PRL_SV, sox_output

pytestmark = pytest.mark.skipif(
    shutil.which("sox") is None, reason="needs the sox program (.ci/run installs it)"
)


def mini_files(pattern: str, count: int) -> list[Path]:
    files = sorted(MINI_SUPERB.glob(pattern))
    assert len(files) >= count, pattern
    return files[:: max(1, len(files) // count)][:count]


@pytest.mark.parametrize(
    "pattern",
    [
        "SpeechCommands/speech_commands_v0.01/*/*.flac",
        "quesst14Database/Audio/*.flac",
        "VoxCeleb1/wav/*/*/*.flac",
    ],
)
def test_loader_gain_equals_sox_gain(tmp_path, pattern):
    for source in mini_files(pattern, 3):
        expected = sox_output(source, S3PRL_KS_QBE, tmp_path)
        plain = load_audio(source).numpy()
        gained = load_audio(source, gain_db=-3.0).numpy()
        assert gained.shape == expected.shape
        np.testing.assert_allclose(gained, expected, rtol=0, atol=1e-6)
        # and the gain is really applied: the unscaled audio is far from sox's output
        assert np.abs(plain - expected).max() > 100 * 1e-6
    # the dataset (what every task reads) applies it too
    source = mini_files(pattern, 1)[0]
    utterance = Utterance("u", source, soundfile.info(str(source)).frames)
    item = AudioDataset([utterance], gain_db=-3.0)[0]["wav"].numpy()
    np.testing.assert_allclose(item, sox_output(source, S3PRL_KS_QBE, tmp_path), rtol=0, atol=1e-6)


def test_vad_cache_equals_s3prl_sox_chain(tmp_path):
    sources = mini_files("VoxCeleb1/wav/*/*/*.flac", 8)
    # a crafted file: speech-like tone, 0.5 s of digital silence in the middle, tone again; and one silent
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000)
    gapped, silent = tmp_path / "gapped.wav", tmp_path / "silent.wav"
    soundfile.write(str(gapped), np.concatenate([tone, np.zeros(8000), tone]), 16000, subtype="PCM_16")
    soundfile.write(str(silent), np.zeros(16000), 16000, subtype="PCM_16")
    float_source = tmp_path / "float.wav"  # not 16-bit: cached as float WAV
    soundfile.write(
        str(float_source), np.concatenate([np.zeros(4000), tone]).astype(np.float32), 16000, subtype="FLOAT"
    )
    sources = [*sources, gapped, float_source]
    outputs = vad_files(sources, gain_db=-3.0, directory=tmp_path / "cache")
    for source, output in zip(sources, outputs, strict=True):
        expected = sox_output(source, S3PRL_SV, tmp_path)
        ours = load_audio(output, gain_db=-3.0).numpy()
        assert ours.shape == expected.shape, source
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-6)
    assert outputs[-2].suffix == ".flac" and outputs[-1].suffix == ".wav"
    # the middle silence is cut out, not only the edges
    assert len(load_audio(outputs[-2])) < 16000 + 0.15 * 16000
    assert len(load_audio(outputs[-1])) < 8000 + 0.15 * 16000
    # a file the VAD empties is None (and sox agrees that nothing is left)
    assert vad_files([silent], gain_db=-3.0, directory=tmp_path / "cache") == [None]
    assert sox_output(silent, S3PRL_SV, tmp_path).size == 0
    # cached: a second call runs no sox (it works without the program)
    again = vad_files(sources, gain_db=-3.0, directory=tmp_path / "cache")
    assert again == outputs


def test_vad_without_sox_names_the_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sox on PATH
    source = mini_files("VoxCeleb1/wav/*/*/*.flac", 1)
    with pytest.raises(SoxError, match="'sox' program .* apt-get install sox.* task.vad=false"):
        vad_files(source, gain_db=-3.0, directory=tmp_path / "cache")
