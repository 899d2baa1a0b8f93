"""Every Hugging Face speech-encoder family through upstream=hf, on tiny random models the tests build from
the family's config class and save with save_pretrained: layer count, width, frame counts by the family's
own formula, padding invariance, bf16, Whisper's window options, layer subsets, padding_mode, and a
2-step run_downstream.py run per family. Nothing here touches the network."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO_ROOT, run_downstream_cli
from tests.hf_tiny import ALL_FAMILIES, family_config, load, save_tiny_family
from upstream.base import parse_layer_selection


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_families")
    cache: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in cache:
            cache[family] = save_tiny_family(root / family, family)
        return cache[family]

    return get


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        wavs[index, :length] = torch.randn(length, generator=generator) * 0.1
    return wavs, torch.tensor(lengths)


def expected_frames(family: str, n: int) -> int:
    """Each family's frame count for n samples, written out from its published arithmetic."""
    if family == "whisper":  # log-mel hop 160 (last STFT frame dropped), conv stride 2 with padding 1
        mel = n // 160
        return (mel - 1) // 2 + 1 if mel else 0
    if family == "w2v_bert":  # Kaldi fbank 400/160 without edge padding, 2 frames stacked
        return ((n - 400) // 160 + 1) // 2
    cnn = (n - 400) // 320 + 1  # wav2vec 2.0's CNN
    if family in (
        "sew",
        "sew_d",
    ):  # SEW's CNN has extra stride-1 layers: receptive field 400 + 2 * 2 * ... below
        cnn = n
        for kernel, stride in zip(
            (10, 3, 1, 3, 1, 3, 1, 3, 1, 2, 1, 2, 1), (5, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1), strict=True
        ):
            cnn = (cnn - kernel) // stride + 1
        return cnn // 2  # squeeze_factor 2
    return cnn


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_layers_width_frames_and_rate(tiny_dirs, family):
    upstream = load(tiny_dirs(family))
    assert (upstream.num_layers, upstream.hidden_size) == (3, 32)
    rate = 25.0 if family in ("sew", "sew_d") else 50.0
    assert upstream.frame_rate == rate and upstream.downsample_rate == 16000 / rate
    lengths = [16000, 9000, 4321]
    hidden_states, frame_lengths = upstream(*padded_batch(lengths))
    assert frame_lengths.tolist() == [expected_frames(family, n) for n in lengths]
    assert hidden_states.shape == (3, 3, max(frame_lengths.tolist()), 32)
    assert torch.isfinite(hidden_states).all()
    # min_samples: the shortest input with one frame by the family's own arithmetic; for Whisper, one
    # STFT window of its feature extractor (n_fft = 400), which gives 1 frame
    shortest = upstream.min_samples
    if family == "whisper":
        assert shortest == upstream.feature_extractor.n_fft == 400
    else:
        assert expected_frames(family, shortest - 1) == 0
    assert expected_frames(family, shortest) == 1
    single, frames = upstream(torch.randn(1, shortest) * 0.1, torch.tensor([shortest]))
    assert frames.tolist() == [1] and single.shape[2] == 1
    with pytest.raises(ValueError, match=rf"shorter than .*min_samples = {shortest}"):
        upstream(torch.randn(1, shortest - 1), torch.tensor([shortest - 1]))


# Padding invariance: a padded utterance equals its single run at valid frames. SEW/SEW-D pool two CNN
# frames into one, and with an odd CNN frame count the pooled mask keeps the half-padded frame as a valid
# key (transformers' max-pooled mask), so there it holds for even CNN frame counts only (lengths below).
PADDING_LENGTHS = {"sew": [16000, 8000, 6720], "sew_d": [16000, 8000, 6720]}


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_padded_batch_equals_single_runs(tiny_dirs, family):
    upstream = load(tiny_dirs(family))
    lengths = PADDING_LENGTHS.get(family, [16000, 9000, 4321])
    wavs, wav_lengths = padded_batch(lengths)
    batch, frame_lengths = upstream(wavs, wav_lengths)
    for index, length in enumerate(lengths):
        single, frames = upstream(wavs[index : index + 1, :length], wav_lengths[index : index + 1])
        valid = int(frames[0])
        assert valid == int(frame_lengths[index])
        torch.testing.assert_close(batch[:, index, :valid], single[:, 0, :valid], atol=2e-4, rtol=0)
        assert torch.all(batch[:, index, valid:] == 0)


def test_sew_odd_cnn_frame_count_is_the_documented_exception(tiny_dirs):
    """The documented exception above: 4321 samples give 13 CNN frames (odd), and the padded row differs."""
    upstream = load(tiny_dirs("sew"))
    wavs, wav_lengths = padded_batch([16000, 4321])
    batch, frames = upstream(wavs, wav_lengths)
    single, _ = upstream(wavs[1:, :4321], wav_lengths[1:])
    valid = int(frames[1])
    assert (batch[:, 1, :valid] - single[:, 0, :valid]).abs().max() > 1e-3


GROUP_NORM_FAMILIES = ["wav2vec2_group_norm", "hubert", "wavlm", "unispeech_sat", "sew"]


@pytest.mark.parametrize("family", GROUP_NORM_FAMILIES)
def test_padding_mode_s3prl_keeps_the_batch_dependent_group_norm(tiny_dirs, family):
    assert (
        load(tiny_dirs(family)).state_dict().keys()
        == load(tiny_dirs(family), padding_mode="s3prl").state_dict().keys()
    )
    """s3prl mode: a padded row equals its single run zero-padded to the batch length (statistics over the
    padded length), and differs from the unpadded single run, which exact mode reproduces."""
    s3prl = load(tiny_dirs(family), padding_mode="s3prl")
    exact = load(tiny_dirs(family))
    lengths = [16000, 6720]
    wavs, wav_lengths = padded_batch(lengths)
    batch, frames = s3prl(wavs, wav_lengths)
    zero_padded, _ = s3prl(wavs[1:], wav_lengths[1:])
    valid = int(frames[1])
    torch.testing.assert_close(batch[:, 1, :valid], zero_padded[:, 0, :valid], atol=2e-4, rtol=0)
    unpadded, _ = s3prl(wavs[1:, : lengths[1]], wav_lengths[1:])
    assert (batch[:, 1, :valid] - unpadded[:, 0, :valid]).abs().max() > 1e-2
    exact_batch, _ = exact(wavs, wav_lengths)
    torch.testing.assert_close(exact_batch[:, 1, :valid], unpadded[:, 0, :valid], atol=2e-4, rtol=0)


def test_masked_group_norm_matches_group_norm_on_each_unpadded_row():
    from upstream.base import MaskedGroupNorm

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8)
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(2, 8, 50)
    plain_long, plain_short = norm(x[:1])[0], norm(x[1:, :, :23])[0]
    masked = MaskedGroupNorm(norm)
    masked.lengths = torch.tensor([50, 23])
    out = norm(x)  # the hook replaces the output while lengths is set
    torch.testing.assert_close(out[0], plain_long)
    torch.testing.assert_close(out[1, :, :23], plain_short)
    masked.lengths = None
    torch.testing.assert_close(
        norm(x), torch.nn.functional.group_norm(x, 4, norm.weight, norm.bias, norm.eps)
    )


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_bf16_weights_within_tolerance(tiny_dirs, family):
    fp32 = load(tiny_dirs(family))
    bf16 = load(tiny_dirs(family), precision="bf16")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    batch = padded_batch([16000, 16000])
    reference, approx = fp32(*batch)[0], bf16(*batch)[0]
    assert approx.dtype == torch.float32
    for layer in range(fp32.num_layers):
        error = (approx[layer] - reference[layer]).norm() / reference[layer].norm()
        assert 0 < error < 0.03, f"layer {layer}: relative error {error:.4f}"


# --- features: transformers' own extractors ---------------------------------------------------------


def test_w2v_bert_layer_zero_is_the_projection_of_transformers_fbank(tiny_dirs):
    """hidden_states[0] = feature_projection(SeamlessM4TFeatureExtractor(wave)), computed independently."""
    from transformers import SeamlessM4TFeatureExtractor

    upstream = load(tiny_dirs("w2v_bert"))
    wav = torch.randn(12345) * 0.1
    states, frames = upstream(wav[None], torch.tensor([12345]))
    features = SeamlessM4TFeatureExtractor()(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    projected, _ = upstream.model.feature_projection(features["input_features"])
    valid = int(features["attention_mask"].sum())  # 75 fbank frames -> 37 stacked (+1 half-padded, masked)
    assert valid == int(frames[0]) == expected_frames("w2v_bert", 12345) == 37
    torch.testing.assert_close(states[0, 0, :valid], projected[0, :valid], atol=1e-5, rtol=0)


def test_whisper_pad30_equals_transformers_encoder_on_the_padded_log_mel(tiny_dirs):
    """pad30: the states are WhisperModel's encoder on WhisperFeatureExtractor's 30 s input, cropped."""
    from transformers import WhisperFeatureExtractor, WhisperModel

    upstream = load(tiny_dirs("whisper"))
    wav = torch.randn(24000) * 0.1
    states, frames = upstream(wav[None], torch.tensor([24000]))
    features = WhisperFeatureExtractor(feature_size=80)(wav.numpy(), sampling_rate=16000, return_tensors="pt")
    reference = WhisperModel.from_pretrained(tiny_dirs("whisper")).encoder.eval()
    out = reference(features["input_features"], output_hidden_states=True)
    assert int(frames[0]) == 75  # 1.5 s at 50 Hz
    assert out.hidden_states[0].shape[1] == 1500
    torch.testing.assert_close(states[0, 0], out.hidden_states[0][0, :75], atol=1e-5, rtol=0)
    torch.testing.assert_close(states[-1, 0], out.last_hidden_state[0, :75], atol=1e-5, rtol=0)


def test_whisper_windows_agree_on_a_full_window_and_differ_documented_below(tiny_dirs):
    """An utterance of exactly 30 s: pad30 and trim are the same computation. Shorter: pad30 attends to the
    padded silence as Whisper was trained, trim does not, so the states differ (documented)."""
    pad30, trim = load(tiny_dirs("whisper")), load(tiny_dirs("whisper"), whisper_window="trim")
    full = padded_batch([480000])
    torch.testing.assert_close(pad30(*full)[0], trim(*full)[0], atol=1e-4, rtol=0)
    short = padded_batch([32000])
    difference = (pad30(*short)[0][1:] - trim(*short)[0][1:]).abs().max()
    assert difference > 1e-3


def test_whisper_long_audio_is_split_into_windows_or_refused(tiny_dirs):
    upstream = load(tiny_dirs("whisper"), whisper_window="trim")
    n = 480000 + 16000
    wavs, wav_lengths = padded_batch([n, 8000])
    states, frames = upstream(wavs, wav_lengths)
    assert frames.tolist() == [expected_frames("whisper", n), 25] == [1550, 25]
    assert upstream.split_utterances == 1
    first, _ = upstream(wavs[:1, :480000], torch.tensor([480000]))
    second, _ = upstream(wavs[:1, 480000:n], torch.tensor([16000]))
    torch.testing.assert_close(states[:, 0, :1500], first[:, 0], atol=1e-4, rtol=0)
    torch.testing.assert_close(states[:, 0, 1500:1550], second[:, 0], atol=1e-4, rtol=0)
    refusing = load(tiny_dirs("whisper"), whisper_long_audio="error")
    with pytest.raises(ValueError, match=r"utterance 0 .*31.0 s.*30 s window.*whisper_long_audio=split"):
        refusing(wavs, wav_lengths)


# --- layer subsets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["hubert", "wav2vec2_large", "whisper", "w2v_bert"])
def test_layer_subset_returns_exactly_those_states(tiny_dirs, family):
    full = load(tiny_dirs(family))
    for selection, ids in (("::2", (0, 2)), ([1], (1,)), ([-1], (2,))):
        subset = load(tiny_dirs(family), layers=selection)
        assert subset.layer_ids == ids and subset.num_layers == len(ids) and subset.total_layers == 3
        batch = padded_batch([16000, 7000])
        torch.testing.assert_close(subset(*batch)[0], full(*batch)[0][list(ids)], atol=1e-6, rtol=0)


def test_layer_selection_parsing_and_errors():
    assert parse_layer_selection(None, 4) == (0, 1, 2, 3)
    assert parse_layer_selection("::2", 33) == tuple(range(0, 33, 2))
    assert parse_layer_selection("1:", 3) == (1, 2)
    assert parse_layer_selection([0, -1], 25) == (0, 24)
    with pytest.raises(ValueError, match=r"upstream.layers=\[0, 13\].*outside.*13 hidden states"):
        parse_layer_selection([0, 13], 13)
    with pytest.raises(ValueError, match="strictly increasing"):
        parse_layer_selection([3, 1], 13)
    with pytest.raises(ValueError, match="not a slice"):
        parse_layer_selection("every other", 13)
    with pytest.raises(ValueError, match="selects no hidden state"):
        parse_layer_selection("5:2", 13)


def test_torchaudio_layer_subset_and_padding_mode():
    from upstream.tiny import TinyUpstream

    tiny = {"num_transformer_layers": 3, "hidden_size": 32, "num_heads": 2, "conv_channels": 16}
    full = TinyUpstream(**tiny)
    subset = TinyUpstream(layers=[1, 3], **tiny)
    batch = padded_batch([8000, 5000])
    assert subset.num_layers == 2
    torch.testing.assert_close(subset(*batch)[0], full(*batch)[0][[1, 3]], atol=1e-6, rtol=0)
    exact = TinyUpstream(extractor_mode="group_norm", **tiny)
    wavs, wav_lengths = padded_batch([12000, 5000])
    batch_states, frames = exact(wavs, wav_lengths)
    single, _ = exact(wavs[1:, :5000], wav_lengths[1:])
    valid = int(frames[1])
    torch.testing.assert_close(batch_states[:, 1, :valid], single[:, 0, :valid], atol=1e-4, rtol=0)


# --- errors, configs ----------------------------------------------------------------------------------


def test_settings_are_checked(tiny_dirs, tmp_path):
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match="upstream.padding_mode"):
        load(tiny_dirs("hubert"), padding_mode="batch")
    with pytest.raises(ValueError, match="upstream.whisper_window"):
        load(tiny_dirs("whisper"), whisper_window="pad")
    with pytest.raises(ValueError, match="upstream.compile=true.*whisper"):
        load(tiny_dirs("whisper"), compile=True)
    BertModel(
        BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    ).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type 'bert'.*expected a speech encoder"):
        load(tmp_path / "bert")


def test_saved_preprocessor_config_is_used(tiny_dirs, tmp_path):
    """A Whisper checkpoint's preprocessor_config.json decides the extractor (here 128 mel bins, as large-v3)."""
    import shutil

    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = family_config("whisper")
    config.num_mel_bins = 128
    WhisperModel(config).save_pretrained(tmp_path / "w128")
    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path / "w128")
    upstream = load(tmp_path / "w128")
    assert upstream.feature_extractor.feature_size == 128
    assert isinstance(WhisperConfig.from_pretrained(tmp_path / "w128"), WhisperConfig)
    states, _ = upstream(*padded_batch([8000]))
    assert states.shape == (3, 1, 25, 32)
    shutil.rmtree(tmp_path / "w128")


# --- end to end -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_run_downstream_two_steps_through_every_family(tiny_dirs, tmp_path):
    """One multirun over every family's tiny model (one process: the imports are paid once)."""
    model_dirs = {family: tiny_dirs(family) for family in ALL_FAMILIES}
    sweep_dir = tmp_path / "sweep"
    run_downstream_cli(
        [
            "-m",
            "upstream=hf",
            f"upstream.model={','.join(str(d) for d in model_dirs.values())}",
            "task=ic",
            "trainer.max_steps=2",
            "trainer.eval_every=2",
            "trainer.batch_size=2",
            "trainer.limit_eval_batches=1",
            f"hydra.sweep.dir={sweep_dir}",
        ]
    )
    records = [json.loads(path.read_text()) for path in sweep_dir.glob("*/results.json")]
    finished = {record["upstream"]: record for record in records}
    for family, model_dir in model_dirs.items():
        record = finished.get(f"{model_dir} (hf)")
        assert record is not None, (family, sorted(finished))
        assert (record["num_layers"], record["hidden_size"]) == (3, 32), family
        assert record["steps"] == 2 and record["test"], family


S3PRL_NAMES = [
    "data2vec_base_960",
    "data2vec_large_ll60k",
    "unispeech_sat_base_plus",
    "wav2vec2_conformer_relpos",
    "xls_r_300m",
    "xls_r_1b",
    "wavlm_large",
]

S3PRL_OFFLINE = textwrap.dedent(
    """
    import json, sys
    from upstream import CheckpointNotFoundError
    from upstream.s3prl_hub import S3prlUpstream
    outcome = {}
    for name in sys.argv[1:]:
        try:
            S3prlUpstream(name=name)
            outcome[name] = "loaded"
        except CheckpointNotFoundError as error:
            outcome[name] = str(error)
    print("RESULTS" + json.dumps(outcome))
    """
)


@pytest.mark.slow
def test_s3prl_hub_names_of_the_same_families_are_found_offline(tmp_path):
    """The s3prl names resolve to their upstream (lookup works); offline each stops with the one message."""
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    env.update(HOME=str(tmp_path), SSL_BENCH_OFFLINE="1", PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", S3PRL_OFFLINE, *S3PRL_NAMES],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    outcome = json.loads(completed.stdout.split("RESULTS", 1)[1])
    for name in S3PRL_NAMES:
        assert f"cannot load upstream model {name} (s3prl)" in outcome[name] and "https://" in outcome[name]


def test_frame_formulas_agree_with_a_direct_count(tiny_dirs):
    """The whisper and w2v-BERT formulas against the extractors' own frame counts on unpadded input."""
    from transformers import SeamlessM4TFeatureExtractor, WhisperFeatureExtractor

    whisper, fbank = WhisperFeatureExtractor(), SeamlessM4TFeatureExtractor()
    for n in (400, 559, 560, 719, 4321, 16000):
        audio = np.random.default_rng(n).standard_normal(n).astype(np.float32)
        mel = whisper(audio, sampling_rate=16000, padding="longest", return_tensors="np")["input_features"]
        assert expected_frames("whisper", n) == math.ceil(mel.shape[-1] / 2)
        if n >= 560:
            stacked = fbank(audio, sampling_rate=16000, return_tensors="np", return_attention_mask=True)
            assert expected_frames("w2v_bert", n) == int(stacked["attention_mask"].sum())


# name in scripts/bench/upstream_forward.py: (L, D, frame rate) of the published checkpoint
REAL_SIZES = {
    "hubert-base": (13, 768, 50),
    "wavlm-large": (25, 1024, 50),
    "xls-r-300m": (25, 1024, 50),
    "xls-r-1b": (49, 1280, 50),
    "xls-r-2b": (49, 1920, 50),
    "wav2vec2-conformer-rel-pos-large": (25, 1024, 50),
    "w2v-bert-2.0": (25, 1024, 50),
    "whisper-tiny": (5, 384, 50),
    "whisper-base": (7, 512, 50),
    "whisper-small": (13, 768, 50),
    "whisper-medium": (25, 1024, 50),
    "whisper-large-v3": (33, 1280, 50),
}


@pytest.mark.parametrize("arch", sorted(REAL_SIZES))
def test_real_size_architectures_of_the_benchmark(arch):
    """The benchmark's real-sized architectures (built on the meta device: no weights, no download) give
    the L, D and frame rate the README's upstream table states."""
    from scripts.bench.upstream_forward import build

    upstream = build(arch, torch.device("meta"))
    assert (upstream.num_layers, upstream.hidden_size, upstream.frame_rate) == REAL_SIZES[arch]
    assert upstream.min_samples == (560 if arch == "w2v-bert-2.0" else 400)


@pytest.mark.parametrize("model_id", ["openai/whisper-large-v3", "facebook/w2v-bert-2.0"])
def test_hub_ids_offline_missing_then_cached(tiny_dirs, tmp_path, monkeypatch, model_id):
    """Offline (SSL_BENCH_OFFLINE=1) with nothing cached: one message naming the model, the cache folder
    and the URL. With the files in the Hugging Face cache layout: loaded from there, no network."""
    import shutil

    from upstream import CheckpointNotFoundError
    from upstream.hf import HfUpstream

    monkeypatch.setenv("SSL_BENCH_OFFLINE", "1")
    cache = tmp_path / "hub"
    repo = cache / ("models--" + model_id.replace("/", "--"))
    with pytest.raises(CheckpointNotFoundError) as caught:
        HfUpstream(model=model_id, cache_dir=str(cache))
    message = str(caught.value)
    assert f"{model_id} (hf)" in message and str(repo) in message
    assert f"https://huggingface.co/{model_id}" in message and "hf download" in message
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    family = "whisper" if "whisper" in model_id else "w2v_bert"
    shutil.copytree(tiny_dirs(family), repo / "snapshots" / revision)
    upstream = HfUpstream(model=model_id, cache_dir=str(cache))
    assert upstream.family == ("whisper" if family == "whisper" else "wav2vec2-bert")
    assert upstream.num_layers == 3


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["upstream.layers='::2'", "upstream.layers=[0,2]"])
def test_layer_subset_from_the_command_line(tmp_path, selection):
    """upstream.layers as a user types it: the interface is built for the subset (L = 2 of 3)."""
    from tests.helpers import TINY_UPSTREAM

    run_dir = tmp_path / "run"
    run_downstream_cli(
        [
            *TINY_UPSTREAM,
            selection,
            "task=ic",
            "trainer.max_steps=2",
            "trainer.eval_every=2",
            "trainer.batch_size=2",
            "trainer.limit_eval_batches=1",
            f"hydra.run.dir={run_dir}",
        ]
    )
    assert json.loads((run_dir / "results.json").read_text())["num_layers"] == 2
