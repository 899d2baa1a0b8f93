"""Tiny randomly initialised Hugging Face speech encoders of every family the hf upstream supports, built
from each family's own config class and written with ``save_pretrained`` (shared by the upstream tests)."""

from __future__ import annotations

from pathlib import Path

import torch

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
CNN = {
    "conv_dim": (16,) * 7,
    "conv_bias": True,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
SEW_CNN = {"conv_dim": (16,) * 13, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}


def family_config(family: str):
    """A tiny config of the family's own config class (2 layers, width 32)."""
    import transformers as tf

    if family == "wav2vec2_group_norm":  # a Base model: group-norm CNN, post-LN transformer
        return tf.Wav2Vec2Config(**SMALL, **CNN, feat_extract_norm="group")
    if family == "wav2vec2_large":  # XLS-R / MMS layout: layer-norm CNN, pre-LN transformer
        return tf.Wav2Vec2Config(**SMALL, **CNN, feat_extract_norm="layer", do_stable_layer_norm=True)
    if family == "hubert":
        return tf.HubertConfig(**SMALL, **CNN, feat_extract_norm="group")
    if family == "wavlm":
        return tf.WavLMConfig(
            **SMALL, **CNN, feat_extract_norm="group", num_buckets=32, max_bucket_distance=64
        )
    if family == "wav2vec2_conformer":
        return tf.Wav2Vec2ConformerConfig(
            **SMALL,
            **CNN,
            feat_extract_norm="layer",
            position_embeddings_type="relative",
            conv_depthwise_kernel_size=7,
        )
    if family == "data2vec_audio":
        return tf.Data2VecAudioConfig(
            **SMALL,
            conv_dim=(16,) * 7,
            conv_bias=True,
            num_conv_pos_embeddings=5,
            num_conv_pos_embedding_groups=4,
        )
    if family == "unispeech":
        return tf.UniSpeechConfig(**SMALL, **CNN, feat_extract_norm="group")
    if family == "unispeech_sat":
        return tf.UniSpeechSatConfig(**SMALL, **CNN, feat_extract_norm="group")
    if family == "sew":
        return tf.SEWConfig(**SMALL, **SEW_CNN, squeeze_factor=2)
    if family == "sew_d":
        return tf.SEWDConfig(
            **SMALL, **SEW_CNN, squeeze_factor=2, position_buckets=16, max_position_embeddings=64
        )
    if family == "w2v_bert":
        return tf.Wav2Vec2BertConfig(**SMALL, feature_projection_input_dim=160, conv_depthwise_kernel_size=7)
    if family == "whisper":
        return tf.WhisperConfig(
            d_model=32,
            encoder_layers=2,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            suppress_tokens=None,
            begin_suppress_tokens=None,
            max_target_positions=16,
            max_source_positions=1500,
        )
    raise KeyError(family)


CNN_FAMILIES = [
    "wav2vec2_group_norm",
    "wav2vec2_large",
    "hubert",
    "wavlm",
    "wav2vec2_conformer",
    "data2vec_audio",
    "unispeech",
    "unispeech_sat",
    "sew",
    "sew_d",
]
ALL_FAMILIES = [*CNN_FAMILIES, "w2v_bert", "whisper"]


def save_tiny_family(directory: Path, family: str) -> Path:
    """The family's tiny model with random weights (seed 0), written by save_pretrained."""
    from transformers import AutoModel

    torch.manual_seed(0)
    AutoModel.from_config(family_config(family)).save_pretrained(directory)
    return directory


def load(directory: Path, **kwargs):
    from upstream.hf import HfUpstream

    return HfUpstream(model=str(directory), **kwargs)
