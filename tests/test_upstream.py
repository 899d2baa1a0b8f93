"""Upstreams: the tiny model, every source's real loading code on self-made tiny checkpoints, padding,
precision, frame arithmetic, fbank and the offline error. Nothing here touches the network."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf

from upstream import CheckpointNotFoundError, Upstream, conv_frame_lengths
from upstream.fbank import FbankUpstream
from upstream.tiny import TinyUpstream
from upstream.torchaudio_bundle import TorchaudioModelUpstream, TorchaudioUpstream

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = {"num_transformer_layers": 2, "hidden_size": 32, "num_heads": 2, "conv_channels": 16}


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    wavs = torch.zeros(len(lengths), max(lengths))
    for index, length in enumerate(lengths):
        wavs[index, :length] = torch.randn(length, generator=generator) * 0.1
    return wavs, torch.tensor(lengths)


def cnn_frames(n: int) -> int:
    """The wav2vec 2.0 CNN's frame count, written out independently of the code under test."""
    return (n - 400) // 320 + 1


def assert_padding_equals_single_runs(upstream: Upstream, lengths: list[int], atol: float = 1e-4) -> None:
    wavs, wav_lengths = padded_batch(lengths)
    batch_states, frame_lengths = upstream(wavs, wav_lengths)
    for index, length in enumerate(lengths):
        single_states, single_frames = upstream(
            wavs[index : index + 1, :length], wav_lengths[index : index + 1]
        )
        assert frame_lengths[index] == single_frames[0] == cnn_frames(length)
        valid = int(single_frames[0])
        torch.testing.assert_close(
            batch_states[:, index, :valid], single_states[:, 0, :valid], atol=atol, rtol=0
        )
        assert torch.all(batch_states[:, index, valid:] == 0), "frames past frame_lengths must be zero"


# --- tiny -----------------------------------------------------------------------------------------


def test_tiny_default_shapes_attributes_and_frames():
    upstream = TinyUpstream()
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (7, 192, 320)
    assert upstream.sample_rate == 16000 and upstream.name == "tiny-hubert L7 D192"
    lengths = [16000, 8000, 400, 721]
    hidden_states, frame_lengths = upstream(*padded_batch(lengths))
    assert hidden_states.shape == (7, 4, cnn_frames(16000), 192)
    assert hidden_states.dtype == torch.float32
    assert frame_lengths.tolist() == [cnn_frames(n) for n in lengths] == [49, 24, 1, 2]
    assert torch.isfinite(hidden_states).all()


def test_tiny_is_deterministic_per_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = TinyUpstream(seed=0, **TINY)
    assert torch.equal(torch.rand(1), expected_next)
    same = TinyUpstream(seed=0, **TINY)
    other = TinyUpstream(seed=1, **TINY)
    for (name, a), b in zip(first.state_dict().items(), same.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters(), strict=True))


def test_conv_frame_lengths_matches_formula():
    lengths = torch.tensor([400, 719, 720, 16000, 48000, 123457])
    frames = conv_frame_lengths(lengths, (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2))
    assert frames.tolist() == [cnn_frames(int(n)) for n in lengths]
    assert conv_frame_lengths(
        torch.tensor([399, 0]), (10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)
    ).tolist() == [0, 0]


def test_frozen_by_default_and_trainable_on_request():
    frozen = TinyUpstream(**TINY)
    assert not frozen.trainable and not frozen.training
    assert all(not p.requires_grad for p in frozen.parameters())
    frozen.train()
    assert not frozen.training and not any(m.training for m in frozen.modules())
    hidden_states, _ = frozen(*padded_batch([1600, 1200]))
    assert not hidden_states.requires_grad

    trainable = TinyUpstream(trainable=True, lr=3e-5, **TINY)
    assert trainable.lr == 3e-5 and all(p.requires_grad for p in trainable.parameters())
    trainable.train()
    assert trainable.training
    hidden_states, _ = trainable(*padded_batch([1600, 1200]))
    hidden_states.sum().backward()
    assert trainable.model.feature_extractor.conv_layers[0].conv.weight.grad is not None


def test_padded_batch_equals_single_runs_layer_norm_cnn():
    assert_padding_equals_single_runs(TinyUpstream(**TINY), [16000, 9000, 4000, 731])


def test_pre_layer_norm_transformer_padding_too():
    assert_padding_equals_single_runs(TinyUpstream(layer_norm_first=True, **TINY), [8000, 3000])


def test_group_norm_cnn_padding_modes():
    """Group-norm CNNs (Base models). padding_mode=s3prl: the first layer's statistics include the zero
    padding, so a padded row equals its single run zero-padded to the batch length and differs from the
    unpadded single run. padding_mode=exact (default): statistics over valid samples, so a padded row
    equals its unpadded single run."""
    s3prl = TinyUpstream(extractor_mode="group_norm", padding_mode="s3prl", **TINY)
    wavs, wav_lengths = padded_batch([12000, 5000])
    batch_states, frame_lengths = s3prl(wavs, wav_lengths)
    for index in range(2):
        zero_padded, _ = s3prl(wavs[index : index + 1], wav_lengths[index : index + 1])
        torch.testing.assert_close(batch_states[:, index], zero_padded[:, 0], atol=1e-5, rtol=0)
    valid = int(frame_lengths[1])
    unpadded, _ = s3prl(wavs[1:2, :5000], wav_lengths[1:2])
    assert (batch_states[:, 1, :valid] - unpadded[:, 0, :valid]).abs().max() > 1e-2
    assert_padding_equals_single_runs(TinyUpstream(extractor_mode="group_norm", **TINY), [12000, 5000, 731])


# --- precision, compile ---------------------------------------------------------------------------

BF16_RELATIVE_TOLERANCE = 0.03  # ||h_bf16 - h_fp32||_F / ||h_fp32||_F per layer, on the tiny model


def test_bf16_weights_stay_bf16_and_states_are_within_tolerance_of_fp32():
    fp32 = TinyUpstream()
    bf16 = TinyUpstream(precision="bf16").to("cpu")
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert bf16.state_dict().keys() == fp32.state_dict().keys()
    batch = padded_batch([24000, 16000])
    reference, frames = fp32(*batch)
    approx, approx_frames = bf16(*batch)
    assert approx.dtype == torch.float32 and torch.equal(frames, approx_frames)
    for layer in range(fp32.num_layers):
        error = (approx[layer] - reference[layer]).norm() / reference[layer].norm()
        assert error < BF16_RELATIVE_TOLERANCE, f"layer {layer}: relative error {error:.4f}"
    assert (approx - reference).abs().max() > 0  # it really ran in bf16


@pytest.mark.parametrize("source", ["hf", "s3prl"])
def test_bf16_weights_for_the_loaded_sources(tmp_path, source):
    if source == "hf":
        from upstream.hf import HfUpstream

        build, kwargs = HfUpstream, {"model": str(save_tiny_hf_model(tmp_path / "hf"))}
    else:
        from upstream.s3prl_hub import S3prlUpstream

        checkpoint = save_tiny_s3prl_checkpoint("hubert", tmp_path / "hubert.pt")
        build, kwargs = S3prlUpstream, {"name": "hubert_local", "path": str(checkpoint)}
    fp32, bf16 = build(**kwargs), build(precision="bf16", **kwargs)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    batch = padded_batch([12000, 12000])
    reference, approx = fp32(*batch)[0], bf16(*batch)[0]
    assert approx.dtype == torch.float32
    for layer in range(fp32.num_layers):
        error = (approx[layer] - reference[layer]).norm() / reference[layer].norm()
        assert 0 < error < BF16_RELATIVE_TOLERANCE, f"layer {layer}: relative error {error:.4f}"


def test_trainable_bf16_keeps_fp32_weights_under_autocast():
    upstream = TinyUpstream(trainable=True, precision="bf16", **TINY)
    assert all(p.dtype == torch.float32 for p in upstream.parameters())
    hidden_states, _ = upstream(*padded_batch([3200]))
    assert hidden_states.dtype == torch.float32
    hidden_states.float().pow(2).mean().backward()
    assert upstream.model.encoder.feature_projection.projection.weight.grad.dtype == torch.float32


def test_fp32_is_exact_under_an_outer_autocast():
    upstream = TinyUpstream(**TINY)
    batch = padded_batch([6400, 4000])
    plain, _ = upstream(*batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside, _ = upstream(*batch)
    assert torch.equal(plain, inside)


@pytest.mark.slow
def test_compile_traces_the_whole_forward_as_one_graph_with_eager_results():
    """compile=True on the tiny model: one dynamo graph (no breaks), same numbers. The "eager" backend keeps
    this CPU test cheap; the default inductor backend is exercised by the GPU benchmark."""
    from torch._dynamo.utils import counters

    plain = TinyUpstream(**TINY)
    compiled = TinyUpstream(compile=True, **TINY)
    compiled.compile_backend = "eager"
    counters.clear()
    for lengths in ([8000, 5000], [9600, 4000, 2000]):
        batch = padded_batch(lengths)
        torch.testing.assert_close(compiled(*batch)[0], plain(*batch)[0], atol=1e-5, rtol=0)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_bad_settings_fail_at_construction():
    with pytest.raises(ValueError, match="upstream.precision"):
        TinyUpstream(precision="fp16", **TINY)
    with pytest.raises(ValueError, match="upstream.lr"):
        TinyUpstream(lr=0.0, **TINY)
    with pytest.raises(ValueError, match="upstream.hidden_size"):
        TinyUpstream(num_transformer_layers=2, hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="upstream.bundle.*HUBERT_BASE"):
        TorchaudioUpstream(bundle="HUBERT_TINY")


def test_bad_inputs_name_the_parameter():
    upstream = TinyUpstream(**TINY)
    with pytest.raises(ValueError, match=r"wavs must be \[B, N\]"):
        upstream(torch.zeros(8000), torch.tensor([8000]))
    with pytest.raises(ValueError, match=r"wav_lengths\[1\] = 399 samples is shorter .*min_samples = 400"):
        upstream(torch.zeros(2, 8000), torch.tensor([8000, 399]))
    # a batch whose padded length is itself below the minimum (issue 14: the range was printed [400, 300])
    with pytest.raises(
        ValueError, match=r"wav_lengths\[0\] = 300 samples is shorter .*min_samples = 400 \(25 ms"
    ):
        upstream(torch.zeros(1, 300), torch.tensor([300]))
    with pytest.raises(ValueError, match=r"wav_lengths\[0\] = 9000 samples exceeds the padded length"):
        upstream(torch.zeros(1, 8000), torch.tensor([9000]))
    with pytest.raises(ValueError, match=r"wav_lengths must be \[B\]"):
        upstream(torch.zeros(2, 8000), torch.tensor([8000]))


# --- Base / Large arithmetic without downloading -------------------------------------------------


@pytest.mark.parametrize(
    ("bundle", "num_layers", "hidden_size", "normalizes"),
    [
        ("HUBERT_BASE", 13, 768, False),
        ("WAVLM_BASE_PLUS", 13, 768, False),
        ("WAV2VEC2_BASE", 13, 768, False),
        ("HUBERT_LARGE", 25, 1024, True),
        ("WAVLM_LARGE", 25, 1024, True),
        ("WAV2VEC2_XLSR53", 25, 1024, True),
    ],
)
def test_base_and_large_architectures_layer_and_frame_arithmetic(bundle, num_layers, hidden_size, normalizes):
    with torch.device("meta"):  # the real architecture, no weights allocated, nothing downloaded
        upstream = TorchaudioUpstream(bundle=bundle, pretrained=False)
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (
        num_layers,
        hidden_size,
        320,
    )
    assert (upstream.waveform_norm_eps is not None) == normalizes
    lengths = torch.tensor([400, 16000, 16399, 16400, 192000])
    assert upstream.frame_lengths(lengths).tolist() == [cnn_frames(int(n)) for n in lengths]


# --- hf and torchaudio on the same tiny weights --------------------------------------------------


def save_tiny_hf_model(directory: Path, family: str = "hubert", stable_layer_norm: bool = False) -> Path:
    """A random 2-layer transformers model (HubertModel or WavLMModel) written with save_pretrained."""
    from transformers import HubertConfig, HubertModel, WavLMConfig, WavLMModel

    config_class, model_class = (
        (HubertConfig, HubertModel) if family == "hubert" else (WavLMConfig, WavLMModel)
    )
    config = config_class(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        conv_bias=True,
        feat_extract_norm="layer",
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        do_stable_layer_norm=stable_layer_norm,
    )
    torch.manual_seed(0)
    model_class(config).save_pretrained(directory)
    return directory


@pytest.mark.parametrize(
    ("family", "stable_layer_norm"),
    [("hubert", False), ("hubert", True), ("wavlm", False)],
    ids=["hubert_post_ln_base_style", "hubert_pre_ln_large_style", "wavlm"],
)
def test_hf_and_torchaudio_import_give_the_same_hidden_states(tmp_path, family, stable_layer_norm):
    from upstream.hf import HfUpstream

    model_dir = save_tiny_hf_model(tmp_path / f"tiny_{family}", family, stable_layer_norm)
    hf_upstream = HfUpstream(model=str(model_dir))
    torchaudio_upstream = TorchaudioUpstream(path=str(model_dir))
    for upstream in (hf_upstream, torchaudio_upstream):
        assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (3, 32, 320)
    lengths = [12000, 7000, 2500]
    batch = padded_batch(lengths)
    hf_states, hf_frames = hf_upstream(*batch)
    ta_states, ta_frames = torchaudio_upstream(*batch)
    assert hf_frames.tolist() == ta_frames.tolist() == [cnn_frames(n) for n in lengths]
    torch.testing.assert_close(hf_states, ta_states, atol=1e-5, rtol=0)
    assert_padding_equals_single_runs(hf_upstream, lengths)
    assert_padding_equals_single_runs(torchaudio_upstream, lengths)


def test_hf_missing_local_directory_is_a_clear_error(tmp_path):
    from upstream.hf import HfUpstream

    missing = tmp_path / "no_such_model"
    with pytest.raises(CheckpointNotFoundError, match="upstream.model=.*no_such_model"):
        HfUpstream(model=str(missing))


def test_torchaudio_path_with_the_wrong_architecture_is_a_clear_error(tmp_path):
    state_dict_path = tmp_path / "tiny_state_dict.pt"
    torch.save(TinyUpstream(**TINY).model.state_dict(), state_dict_path)
    with pytest.raises(ValueError, match="upstream.path=.*HUBERT_BASE architecture"):
        TorchaudioUpstream(bundle="HUBERT_BASE", path=str(state_dict_path))
    with pytest.raises(CheckpointNotFoundError, match="upstream.path="):
        TorchaudioUpstream(bundle="HUBERT_BASE", path=str(tmp_path / "missing.pth"))


# --- s3prl on tiny checkpoints in its converted format --------------------------------------------

S3PRL_CNN = "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2"
S3PRL_ENCODER = {
    "extractor_mode": "layer_norm",
    "encoder_layers": 2,
    "encoder_embed_dim": 32,
    "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2,
    "conv_feature_layers": S3PRL_CNN,
    "conv_pos": 16,
    "conv_pos_groups": 4,
    "conv_bias": True,
}


def _plain(config: object) -> dict:
    """A dataclass config as the plain dict s3prl's converted checkpoints store."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_tiny_s3prl_checkpoint(family: str, path: Path) -> Path:
    """A random 2-layer checkpoint in the format s3prl's ``<family>_local`` entry loads."""
    from upstream import _s3prl_compat

    _s3prl_compat.install()
    torch.manual_seed(0)
    if family == "hubert":
        from s3prl.upstream.hubert.hubert_model import HubertConfig, HubertModel, HubertPretrainingConfig

        model_cfg, task_cfg = (
            HubertConfig(label_rate=50, final_dim=16, **S3PRL_ENCODER),
            HubertPretrainingConfig(),
        )
        model = HubertModel(model_cfg, task_cfg, [["a", "b", "c"]])
        state = {
            "task_cfg": _plain(task_cfg),
            "model_cfg": _plain(model_cfg),
            "model_weight": model.state_dict(),
        }
        state["dictionaries_symbols"] = [["a", "b", "c"]]
    elif family == "wav2vec2":
        from s3prl.upstream.wav2vec2.wav2vec2_model import (
            AudioPretrainingConfig,
            Wav2Vec2Config,
            Wav2Vec2Model,
        )

        model_cfg = Wav2Vec2Config(final_dim=16, latent_vars=8, latent_groups=2, **S3PRL_ENCODER)
        model = Wav2Vec2Model(model_cfg)
        state = {"task_cfg": _plain(AudioPretrainingConfig()), "model_cfg": _plain(model_cfg)}
        state["model_weight"] = model.state_dict()
    else:
        from s3prl.upstream.wavlm.WavLM import WavLM, WavLMConfig

        cfg = {**S3PRL_ENCODER, "relative_position_embedding": True, "num_buckets": 32, "max_distance": 64}
        state = {"cfg": cfg, "model": WavLM(WavLMConfig(cfg)).state_dict()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("family", ["hubert", "wavlm", "wav2vec2"])
def test_s3prl_local_checkpoints_load_with_every_layer(tmp_path, family):
    from upstream.s3prl_hub import S3prlUpstream

    checkpoint = save_tiny_s3prl_checkpoint(family, tmp_path / f"{family}.pt")
    upstream = S3prlUpstream(name=f"{family}_local", path=str(checkpoint))
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (3, 32, 320)
    assert upstream.conv_kernels == (10, 3, 3, 3, 3, 2, 2) and not upstream.training
    wavs, wav_lengths = padded_batch([9000, 4000])
    hidden_states, frame_lengths = upstream(wavs, wav_lengths)
    assert hidden_states.shape == (3, 2, cnn_frames(9000), 32)
    assert frame_lengths.tolist() == [cnn_frames(9000), cnn_frames(4000)]
    if family == "wav2vec2":  # exact frame padding mask
        assert_padding_equals_single_runs(upstream, [9000, 4000])
    else:
        # Documented s3prl behaviour: fairseq's approximate frame mask lets the padded utterance attend to a
        # frame computed over padding, so only the longest (unpadded) utterance matches its single run.
        longest, _ = upstream(wavs[:1], wav_lengths[:1])
        torch.testing.assert_close(hidden_states[:, 0], longest[:, 0], atol=1e-4, rtol=0)
        shorter, _ = upstream(wavs[1:, :4000], wav_lengths[1:])
        valid = cnn_frames(4000)
        assert (hidden_states[:, 1, :valid] - shorter[:, 0, :valid]).abs().max() > 1e-3


def test_s3prl_layer_subset_keeps_exactly_those_states(tmp_path):
    """upstream.layers on a source whose extract returns every state: the base class keeps the subset."""
    from upstream.s3prl_hub import S3prlUpstream

    checkpoint = save_tiny_s3prl_checkpoint("hubert", tmp_path / "hubert.pt")
    full = S3prlUpstream(name="hubert_local", path=str(checkpoint))
    subset = S3prlUpstream(name="hubert_local", path=str(checkpoint), layers=[0, -1])
    assert (subset.num_layers, subset.total_layers, subset.layer_ids) == (2, 3, (0, 2))
    batch = padded_batch([8000, 8000])
    torch.testing.assert_close(subset(*batch)[0], full(*batch)[0][[0, 2]], atol=1e-6, rtol=0)


def test_s3prl_layer_order_matches_torchaudio_on_the_same_weights(tmp_path):
    """s3prl's hidden states (layer inputs + encoder output) == the transformer input + every layer."""
    from torchaudio.models.wav2vec2.utils import import_fairseq_model

    from upstream.s3prl_hub import S3prlUpstream

    checkpoint = save_tiny_s3prl_checkpoint("hubert", tmp_path / "hubert.pt")
    s3prl_upstream = S3prlUpstream(name="hubert_local", path=str(checkpoint))
    imported = import_fairseq_model(s3prl_upstream.model.upstream.model)
    torchaudio_upstream = TorchaudioModelUpstream(imported, name="imported")
    batch = padded_batch([8000, 8000])  # unpadded: s3prl's approximate frame mask plays no part
    torch.testing.assert_close(s3prl_upstream(*batch)[0], torchaudio_upstream(*batch)[0], atol=1e-5, rtol=0)


def test_s3prl_settings_are_checked(tmp_path):
    from upstream.s3prl_hub import S3prlUpstream

    with pytest.raises(ValueError, match="upstream.name must be an s3prl entry that takes a checkpoint"):
        S3prlUpstream(name="hubert", path=str(tmp_path / "x.pt"))
    with pytest.raises(ValueError, match="upstream.name='no_such_model'"):
        S3prlUpstream(name="no_such_model")
    with pytest.raises(ValueError, match="upstream.compile"):
        S3prlUpstream(name="hubert", compile=True)
    with pytest.raises(CheckpointNotFoundError, match="upstream.path="):
        S3prlUpstream(name="hubert_local", path=str(tmp_path / "missing.pt"))


# --- fbank ------------------------------------------------------------------------------------------


def test_fbank_shapes_frames_and_normalisation():
    upstream = FbankUpstream()
    assert (upstream.num_layers, upstream.hidden_size, upstream.downsample_rate) == (1, 80, 160)
    lengths = [16000, 7000, 400]
    hidden_states, frame_lengths = upstream(*padded_batch(lengths))
    assert frame_lengths.tolist() == [(n - 400) // 160 + 1 for n in lengths] == [98, 42, 1]
    assert hidden_states.shape == (1, 3, 98, 80)
    for index in range(2):
        valid = hidden_states[0, index, : frame_lengths[index]]
        torch.testing.assert_close(valid.mean(0), torch.zeros(80), atol=1e-4, rtol=0)
        torch.testing.assert_close(valid.std(0), torch.ones(80), atol=1e-3, rtol=0)
    wavs, _ = padded_batch(lengths)
    single, _ = upstream(wavs[1:2, :7000], torch.tensor([7000]))
    torch.testing.assert_close(hidden_states[0, 1, :42], single[0, 0], atol=1e-5, rtol=0)
    assert torch.all(hidden_states[0, 1, 42:] == 0)
    assert FbankUpstream(delta_order=2).hidden_size == 240


def test_fbank_peak_bin_follows_the_tone_frequency():
    """Without normalisation, a pure tone's energy peaks in the mel band whose centre is nearest to it."""
    upstream = FbankUpstream(cmvn=False)
    t = torch.arange(16000) / 16000
    low_mel, high_mel = 1127 * math.log(1 + 20 / 700), 1127 * math.log(1 + 8000 / 700)
    centres_mel = torch.linspace(low_mel, high_mel, 82)[1:-1]
    centres_hz = 700 * (torch.exp(centres_mel / 1127) - 1)
    for frequency in (300.0, 1000.0, 3000.0):
        tone = torch.sin(2 * math.pi * frequency * t)[None]
        features, _ = upstream(tone, torch.tensor([16000]))
        peak = int(features[0, 0, 10:-10].mean(0).argmax())
        nearest = int((centres_hz - frequency).abs().argmin())
        assert abs(peak - nearest) <= 1, (frequency, peak, nearest)


# --- configs ------------------------------------------------------------------------------------------

CONFIG_TARGETS = {
    "tiny": "upstream.tiny.TinyUpstream",
    "s3prl": "upstream.s3prl_hub.S3prlUpstream",
    "hf": "upstream.hf.HfUpstream",
    "torchaudio": "upstream.torchaudio_bundle.TorchaudioUpstream",
    "fbank": "upstream.fbank.FbankUpstream",
}


# Every upstream config with its own _target_ (tiny_pretrained extends tiny), an added one included.
UPSTREAM_CONFIGS = sorted(
    path.stem
    for path in (REPO_ROOT / "configs" / "upstream").glob("*.yaml")
    if "_target_" in OmegaConf.load(path)
)


def test_upstream_configs_include_the_shipped_sources():
    assert set(CONFIG_TARGETS) <= set(UPSTREAM_CONFIGS)  # an added upstream needs no edit here


@pytest.mark.parametrize("config_name", UPSTREAM_CONFIGS)
def test_every_config_key_is_a_constructor_parameter(config_name):
    config = OmegaConf.load(REPO_ROOT / "configs" / "upstream" / f"{config_name}.yaml")
    assert config._target_ == CONFIG_TARGETS.get(config_name, config._target_)
    module_name, class_name = config._target_.rsplit(".", 1)
    target = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    parameters = inspect.signature(target.__init__).parameters
    for key, value in OmegaConf.to_container(config, resolve=False).items():
        if key != "_target_":
            assert key in parameters, f"{config_name}.yaml: {key} is not a parameter of {class_name}"
            if parameters[key].default is inspect.Parameter.empty:
                continue  # required by the constructor: the config supplies it (fusion's members)
            if isinstance(value, str) and value.startswith("${protocol."):
                # set by the protocol; the code default is protocol=exact's value
                value = with_protocol(config, "exact")[key]
            assert value == parameters[key].default, (
                f"{config_name}.yaml: {key} differs from the code default"
            )


def with_protocol(config, protocol: str):
    """An upstream config node resolved as it is inside a job config of ``protocol``."""
    protocol_config = OmegaConf.load(REPO_ROOT / "configs" / "protocol" / f"{protocol}.yaml")
    return OmegaConf.create({"protocol": protocol_config, "upstream": config}).upstream


@pytest.mark.parametrize("config_name", ["tiny", "fbank"])
def test_offline_configs_instantiate(config_name):
    config = OmegaConf.load(REPO_ROOT / "configs" / "upstream" / f"{config_name}.yaml")
    upstream = hydra.utils.instantiate(with_protocol(config, "superb"))
    assert isinstance(upstream, Upstream) and upstream.num_layers >= 1


# --- offline: nothing cached, no network ----------------------------------------------------------

OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from upstream import CheckpointNotFoundError
    from upstream.hf import HfUpstream
    from upstream.s3prl_hub import S3prlUpstream
    from upstream.torchaudio_bundle import TorchaudioUpstream
    from upstream import _s3prl_compat
    _s3prl_compat.install()
    import s3prl.nn, transformers  # imports are not part of the timing
    builders = {
        "s3prl": lambda: S3prlUpstream(name="hubert"),
        "hf": lambda: HfUpstream(model="facebook/hubert-base-ls960"),
        "torchaudio": lambda: TorchaudioUpstream(bundle="HUBERT_BASE"),
    }
    # The test suite never touches the network: the flag makes every source skip its download attempt,
    # and no source (nor a library under it) even looks a host up.
    import socket
    lookups = []
    real_getaddrinfo = socket.getaddrinfo
    from upstream._offline import NetworkBlockedError
    def recording_getaddrinfo(host, *args, **kwargs):
        try:
            answer = real_getaddrinfo(host, *args, **kwargs)
        except NetworkBlockedError:
            raise  # stopped by the project's own guard before any query went out
        except OSError:
            lookups.append(host)
            raise
        lookups.append(host)
        return answer
    socket.getaddrinfo = recording_getaddrinfo
    os.environ["SSL_BENCH_OFFLINE"] = "1"
    results = {}
    for source, build in builders.items():
        started = time.perf_counter()
        try:
            build()
            outcome = {"error": None}
        except CheckpointNotFoundError as error:
            outcome = {"error": "CheckpointNotFoundError", "message": str(error)}
        except Exception as error:
            outcome = {"error": type(error).__name__, "message": str(error)}
        outcome["seconds"] = time.perf_counter() - started
        results[f"offline_flag/{source}"] = outcome
    results["host_lookups"] = lookups
    # Then the same names with a (tiny) checkpoint in each source's own cache: found there, offline.
    import shutil
    from pathlib import Path
    from s3prl.util.download import urls_to_filepaths
    os.environ["SSL_BENCH_OFFLINE"] = "1"
    s3prl_url = "https://huggingface.co/s3prl/converted_ckpts/resolve/main/hubert_base_ls960.pt"
    shutil.copy(os.environ["TINY_S3PRL_CHECKPOINT"], urls_to_filepaths(s3prl_url, download=False))
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--facebook--hubert-base-ls960"
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(os.environ["TINY_HF_DIR"], repo / "snapshots" / revision)
    for source in ("s3prl", "hf"):
        results[f"cached/{source}"] = {"num_layers": builders[source]().num_layers}
    print("RESULTS" + json.dumps(results))
    """
)


@pytest.mark.slow
def test_offline_with_nothing_cached_fails_fast_with_one_clear_message_and_finds_cached_ones(tmp_path):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    tiny_s3prl = save_tiny_s3prl_checkpoint("hubert", tmp_path / "tiny_s3prl_hubert.pt")
    tiny_hf = save_tiny_hf_model(tmp_path / "tiny_hf_hubert")
    env = {key: value for key, value in os.environ.items() if not key.endswith("_OFFLINE")}
    env.update(
        HOME=str(empty),  # s3prl caches in ~/.cache/s3prl
        HF_HOME=str(empty / "hf"),
        TORCH_HOME=str(empty / "torch"),
        XDG_CACHE_HOME=str(empty / "xdg"),
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",
        TINY_S3PRL_CHECKPOINT=str(tiny_s3prl),
        TINY_HF_DIR=str(tiny_hf),
    )
    completed = subprocess.run(
        [sys.executable, "-c", OFFLINE_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(completed.stdout.split("RESULTS", 1)[1])
    expected = {
        "s3prl": ("hubert (s3prl)", "https://huggingface.co/s3prl/converted_ckpts/", str(empty)),
        "hf": (
            "facebook/hubert-base-ls960 (hf)",
            "https://huggingface.co/facebook/hubert-base-ls960",
            str(empty),
        ),
        "torchaudio": ("HUBERT_BASE (torchaudio)", "https://download.pytorch.org/", str(empty / "torch")),
    }
    assert results.pop("cached/s3prl") == results.pop("cached/hf") == {"num_layers": 3}
    assert results.pop("host_lookups") == []  # e.g. huggingface_hub's agent registry, unless told offline
    assert set(results) == {f"offline_flag/{source}" for source in expected}  # every source was tried
    for key, outcome in results.items():
        source = key.split("/")[1]
        model, url, cache = expected[source]
        assert outcome["error"] == "CheckpointNotFoundError", (key, outcome)
        message = outcome["message"]
        assert model in message and url in message and cache in message, (key, message)
        assert "Looked in:" in message and "To fix:" in message
        assert outcome["seconds"] < 10, (key, outcome["seconds"])


SHIPPED_TINY = REPO_ROOT / "data" / "tiny_hubert" / "mini_superb_hubert.pt"


def test_tiny_checkpoint_replaces_random_weights_exactly():
    state = torch.load(SHIPPED_TINY, weights_only=True)
    pretrained = TinyUpstream(checkpoint=str(SHIPPED_TINY))
    random_init = TinyUpstream()
    for key, value in pretrained.model.state_dict().items():
        assert torch.equal(value, state[key].float()), key
    differs = [k for k, v in random_init.model.state_dict().items() if not torch.equal(v, state[k].float())]
    assert differs  # the checkpoint is not the seed's random init
    assert pretrained.num_layers == 7 and pretrained.hidden_size == 192
    assert "mini_superb_hubert" in pretrained.name


def test_tiny_checkpoint_for_another_architecture_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="saved for another tiny architecture"):
        TinyUpstream(num_transformer_layers=2, hidden_size=32, checkpoint=str(SHIPPED_TINY))
    with pytest.raises(FileNotFoundError, match="upstream.checkpoint: no file at"):
        TinyUpstream(checkpoint=str(tmp_path / "missing.pt"))


@pytest.mark.slow
def test_pretraining_script_runs_and_its_checkpoint_loads(tmp_path):
    """scripts/pretrain_tiny_hubert.py end to end for two steps: a checkpoint the tiny upstream loads."""
    output = tmp_path / "tiny.pt"
    command = [
        sys.executable,
        "scripts/pretrain_tiny_hubert.py",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--clusters",
        "8",
        "--device",
        "cpu",
        "--output",
        str(output),
    ]
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(output.with_suffix(".json").read_text())["recipe"]["steps"] == 2
    upstream = TinyUpstream(checkpoint=str(output))
    hidden_states, _ = upstream(torch.randn(1, 16000), torch.tensor([16000]))
    assert torch.isfinite(hidden_states).all()
