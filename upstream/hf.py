"""Hugging Face transformers speech encoders with all hidden states out, chosen by the config's model_type.

Three kinds of front end:
- waveform CNN (wav2vec 2.0 incl. XLS-R/MMS, HuBERT, WavLM, wav2vec2-conformer, data2vec-audio, UniSpeech,
  UniSpeech-SAT, SEW, SEW-D): the 16 kHz waveform, normalised per utterance if the checkpoint's
  preprocessor says so;
- w2v-BERT 2.0 (``wav2vec2-bert``): 80-bin Kaldi-style fbank, 2 frames stacked (160-dim, 50 Hz), by
  transformers' ``SeamlessM4TFeatureExtractor``;
- Whisper (``whisper``): the encoder of ``WhisperModel`` on log-mel from ``WhisperFeatureExtractor``, with
  its 30 s window (``whisper_window``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from upstream._offline import (
    CheckpointNotFoundError,
    missing_checkpoint_message,
    network_unreachable_reason,
    tell_hf_hub_when_offline,
)
from upstream.base import (
    PADDING_MODES,
    LayerSelection,
    MaskedGroupNorm,
    Upstream,
    conv_frame_lengths,
    receptive_field,
    valid_mask,
)
from upstream.whisper import WHISPER_LONG_AUDIO, WHISPER_WINDOWS, WhisperEncoding

logger = logging.getLogger(__name__)

# Wav2Vec2FeatureExtractor's do_normalize: (x - mean) / sqrt(var + 1e-7) per utterance.
HF_WAVEFORM_NORM_EPS = 1e-7
PREPROCESSOR_FILE = "preprocessor_config.json"

# model_type -> front-end kind. Unlisted types with a wav2vec 2.0-style CNN config are taken as "waveform".
WAVEFORM_FAMILIES = (
    "wav2vec2",
    "hubert",
    "wavlm",
    "wav2vec2-conformer",
    "data2vec-audio",
    "unispeech",
    "unispeech-sat",
    "sew",
    "sew-d",
)
FBANK_FAMILIES = ("wav2vec2-bert",)
LOG_MEL_FAMILIES = ("whisper",)
SUPPORTED_FAMILIES = WAVEFORM_FAMILIES + FBANK_FAMILIES + LOG_MEL_FAMILIES
# Families whose last recorded hidden state must stay the last layer's output: SEW/SEW-D upsample their
# output to the CNN's rate after the last layer; w2v-BERT's output adds its intermediate FFN / adapter.
UNTIED_LAST_STATE = ("sew", "sew-d", "wav2vec2-bert")


def _looks_like_path(model: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else that points at the filesystem is a path."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def _hf_cache_dir(cache_dir: str | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _waveform_norm_eps(model: str, cache_dir: str | None, local_only: bool) -> float | None:
    """HF_WAVEFORM_NORM_EPS if the checkpoint's feature extractor normalises the waveform, else None.

    Reads ``do_normalize`` from preprocessor_config.json; a checkpoint without that file declares no
    preprocessing and gets none.
    """
    if os.path.isdir(model):
        config_path: str | None = os.path.join(model, PREPROCESSOR_FILE)
    else:
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(
                model, PREPROCESSOR_FILE, cache_dir=cache_dir, local_files_only=local_only
            )
        except Exception:  # no such file in the repo, or not cached while offline
            config_path = None
    if config_path is None or not os.path.isfile(config_path):
        return None
    with open(config_path) as handle:
        do_normalize = json.load(handle).get("do_normalize", False)
    return HF_WAVEFORM_NORM_EPS if do_normalize else None


def prepare_config(config: Any) -> Any:
    """Switch off what only pretraining or fine-tuning uses (layerdrop, SpecAugment-style masking), on the
    attributes this family's config has, and fix which tensor the last hidden state is.

    transformers 5 records each layer's raw output; ``tie_last_hidden_states`` makes the last one the
    encoder's output, which for pre-LN ("stable layer norm", Large, conformer) models includes the final
    layer norm that s3prl/fairseq and transformers 4 include.
    """
    for key in ("layerdrop", "encoder_layerdrop"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    for key in ("mask_time_prob", "mask_feature_prob"):
        if hasattr(config, key):
            setattr(config, key, 0.0)
    if hasattr(config, "apply_spec_augment"):
        config.apply_spec_augment = False
    config.tie_last_hidden_states = config.model_type not in UNTIED_LAST_STATE
    return config


def model_from_config(config: Any) -> nn.Module:
    """A randomly initialised encoder for ``config`` (a transformers config object), prepared as loaded
    ones are: for benchmarks and tests at real sizes without weights (use ``torch.device("meta")`` or a GPU
    device context to avoid a slow CPU initialisation)."""
    from transformers import AutoModel

    return AutoModel.from_config(prepare_config(config), dtype=torch.float32)


def _load(model: str, cache_dir: str | None, local_only: bool) -> tuple[nn.Module, str]:
    """(encoder, where its files are: a directory or the Hub id) from a directory or the Hugging Face cache/Hub."""
    from transformers import AutoConfig, AutoModel

    kwargs: dict[str, Any] = {"local_files_only": local_only}
    if not os.path.isdir(model):
        kwargs["cache_dir"] = cache_dir
    config = prepare_config(AutoConfig.from_pretrained(model, **kwargs))
    loaded = AutoModel.from_pretrained(model, config=config, dtype=torch.float32, **kwargs)
    return loaded, model


def load_offline_first(model: str, cache_dir: str | None, load: Callable[[str, bool], Any]) -> Any:
    """Run ``load(model, local_only)`` for a local directory or a cached Hub id; download only when online.

    Raises CheckpointNotFoundError with one message (model, where it looked, what it needs, where to put
    it) when the files are neither there nor downloadable.
    """
    tell_hf_hub_when_offline()
    model = os.path.expanduser(model) if model.startswith("~") else model
    if os.path.isdir(model):
        if not (Path(model) / "config.json").is_file():
            raise CheckpointNotFoundError(
                f"upstream.model={model!r} is a directory without config.json; expected a directory written "
                "by save_pretrained (config.json + model.safetensors or pytorch_model.bin)"
            )
        return load(model, True)
    if _looks_like_path(model):
        raise CheckpointNotFoundError(
            f"upstream.model={model!r} looks like a local path but is not an existing directory; expected a "
            "directory written by save_pretrained, or a Hugging Face id such as facebook/hubert-base-ls960"
        )
    try:
        return load(model, True)
    except OSError:
        pass
    from huggingface_hub import constants

    reason = network_unreachable_reason(constants.ENDPOINT)
    if reason is not None:
        repo_folder = "models--" + model.replace("/", "--")
        cache = _hf_cache_dir(cache_dir)
        raise CheckpointNotFoundError(
            missing_checkpoint_message(
                model=f"{model} (hf)",
                looked_in=[f"Hugging Face cache {os.path.join(cache, repo_folder)}"],
                needs=f"{constants.ENDPOINT}/{model} (config.json, model.safetensors or pytorch_model.bin, "
                f"{PREPROCESSOR_FILE})",
                put_it=f"run `hf download {model}` where there is internet and copy {repo_folder} into {cache} "
                "(set HF_HOME or upstream.cache_dir to move it), or save the files in a directory and pass "
                "upstream.model=<that directory>",
                reason=reason,
            )
        )
    return load(model, False)


def load_hf_model(model: str, cache_dir: str | None) -> tuple[nn.Module, float | None]:
    """Load a transformers speech encoder offline-first: a local directory, else the HF cache, else (online
    only) the Hub. Returns (model in fp32 with layerdrop and SpecAugment-style masking off, waveform-norm eps
    or None). Attention is transformers' default: PyTorch SDPA for the families that support it."""

    def load(location: str, local_only: bool) -> tuple[nn.Module, float | None]:
        loaded, _ = _load(location, cache_dir, local_only)
        return loaded, _waveform_norm_eps(location, cache_dir, local_only)

    return load_offline_first(str(model), cache_dir, load)


def load_feature_extractor(family: str, location: str | None, cache_dir: str | None, config: Any) -> Any:
    """transformers' own feature extractor for a log-mel / fbank family: from the checkpoint's
    preprocessor_config.json when it has one, else the family's default settings for this config."""
    from transformers import SeamlessM4TFeatureExtractor, WhisperFeatureExtractor

    extractor_class = WhisperFeatureExtractor if family == "whisper" else SeamlessM4TFeatureExtractor
    if location is not None:
        kwargs: dict[str, Any] = {"local_files_only": True}
        if not os.path.isdir(location):
            kwargs["cache_dir"] = cache_dir
        try:
            return extractor_class.from_pretrained(location, **kwargs)
        except OSError:
            pass  # no preprocessor_config.json: the family's defaults below
    if family == "whisper":
        return WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return SeamlessM4TFeatureExtractor()


class PaddedFrameZeroing:
    """Zeroes padded frames ([B, C, T] input, frames at or beyond ``lengths[b]``) before convolutions that
    mix frames inside the transformer, where transformers leaves padding values in: data2vec-audio's
    stacked positional convolutions (only the first one's input is zeroed) and wav2vec2-conformer's
    depthwise convolution. ``lengths`` is set per forward; None leaves the input alone."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.lengths: torch.Tensor | None = None
        self.handles = [module.register_forward_pre_hook(self._hook) for module in modules]

    def _hook(self, module: nn.Module, args: tuple) -> tuple | None:
        if self.lengths is None:
            return None
        x = args[0]
        mask = valid_mask(self.lengths.to(x.device), x.shape[-1])[:, None, :].to(x.dtype)
        return (x * mask, *args[1:])


def frame_mixing_convolutions(model: nn.Module) -> list[nn.Module]:
    """The convolutions inside the encoder that see padded frames (see PaddedFrameZeroing)."""
    return [
        module
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv1d)
        and (name.endswith("conv_module.depthwise_conv") or ".pos_conv_embed.layers." in name)
    ]


class HfEncoderUpstream(WhisperEncoding, Upstream):
    """Every hidden state of a transformers speech encoder (a loaded or randomly initialised model).

    Order: the encoder input (the input of the first layer), then each layer's output; the last one
    after the final layer norm for pre-LN models (wav2vec 2.0 "stable layer norm" Large, conformers,
    Whisper), so L = layers + 1, the order of the s3prl and torchaudio sources. Per family:

    - waveform CNN families: frames follow the CNN (T = floor((n - 400) / 320) + 1 for the usual CNN,
      ``min_samples`` its receptive field, 400); SEW/SEW-D run their layers at the CNN rate divided by
      ``squeeze_factor`` (25 Hz for the published models), and their hidden states are at that rate
      (T = floor(T_cnn / squeeze_factor)). The waveform attention mask is passed.
      ``padding_mode="exact"`` (default) takes a group-norm CNN's first-layer statistics over each
      utterance's valid samples (``MaskedGroupNorm``), so a padded utterance equals its single run;
      ``"s3prl"`` normalises over the padded length as s3prl, fairseq and transformers do. Exact mode also
      zeroes padded frames before data2vec-audio's 2nd-5th positional convolutions and the conformer's
      depthwise convolutions, which transformers (and fairseq) let see the padding.
    - w2v-BERT 2.0: ``SeamlessM4TFeatureExtractor`` per utterance (80 log-mel bins, 25 ms / 10 ms,
      per-bin mean/variance normalisation, 2 frames stacked): T = floor(F / 2) with
      F = floor((n - 400) / 160) + 1, 50 Hz, ``min_samples`` 560; the frame mask is passed.
    - Whisper: ``WhisperFeatureExtractor`` log-mel (hop 160), then the encoder's convolutions (the second
      with stride 2): T = ceil(floor(n / 160) / 2), 50 Hz, ``min_samples`` = the STFT window (400).
      ``whisper_window="pad30"`` (default, as Whisper was trained) pads each utterance to 30 s of audio,
      runs all 1500 positions without a mask and keeps the utterance's own T frames; ``"trim"`` computes
      each utterance's log-mel alone, pads the batch's features with zeros, zeroes padded frames between
      the convolutions, uses the first T positional embeddings and masks padded frames out of attention,
      so a padded utterance equals its single trimmed run. Audio longer than 30 s is cut into 30 s windows
      whose frames are concatenated (``whisper_long_audio="split"``, default) or refused (``"error"``).

    ``layers`` keeps a subset of the hidden states; only those are recorded during the forward.
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        feature_extractor: Any = None,
        waveform_norm_eps: float | None = None,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        padding_mode: str = "exact",
        layers: LayerSelection = None,
        whisper_window: str = "pad30",
        whisper_long_audio: str = "split",
    ) -> None:
        super().__init__(
            trainable=trainable, lr=lr, name=name, precision=precision, compile=compile, layers=layers
        )
        config = model.config
        family = config.model_type
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"upstream.padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if whisper_window not in WHISPER_WINDOWS:
            raise ValueError(
                f"upstream.whisper_window must be one of {WHISPER_WINDOWS}, got {whisper_window!r}"
            )
        if whisper_long_audio not in WHISPER_LONG_AUDIO:
            raise ValueError(
                f"upstream.whisper_long_audio must be one of {WHISPER_LONG_AUDIO}, got {whisper_long_audio!r}"
            )
        self.family = family
        self.padding_mode = padding_mode
        self.whisper_window = whisper_window
        self.whisper_long_audio = whisper_long_audio
        self.split_utterances = 0  # utterances encoded in several 30 s windows so far (Whisper)
        self.squeeze_factor = 1
        self._masked_norm: MaskedGroupNorm | None = None
        self._frame_zeroing: PaddedFrameZeroing | None = None
        if family in LOG_MEL_FAMILIES:
            self.kind = "log_mel"
            self.model = model.get_encoder() if hasattr(model, "get_encoder") else model
            self.feature_extractor = feature_extractor or load_feature_extractor(family, None, None, config)
            self.hop_length = int(self.feature_extractor.hop_length)
            self.window_samples = int(self.feature_extractor.n_samples)
            self.n_fft = int(self.feature_extractor.n_fft)
            conv_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
            if self.window_samples != self.model.max_source_positions * conv_stride * self.hop_length:
                raise ValueError(
                    f"{name}: the feature extractor's {self.window_samples}-sample window does not fill the "
                    f"encoder's {self.model.max_source_positions} positions"
                )
            self.num_layers = len(self.model.layers) + 1
            self.hidden_size = config.d_model
            self.downsample_rate = self.hop_length * conv_stride
        elif family in FBANK_FAMILIES:
            self.kind = "fbank"
            self.model = model
            self.feature_extractor = feature_extractor or load_feature_extractor(family, None, None, config)
            stacked = self.feature_extractor.num_mel_bins * self.feature_extractor.stride
            if stacked != config.feature_projection_input_dim:
                raise ValueError(
                    f"{name}: the feature extractor gives {stacked}-dim frames, the model expects "
                    f"feature_projection_input_dim={config.feature_projection_input_dim}"
                )
            self.num_layers = config.num_hidden_layers + 1
            self.hidden_size = config.hidden_size
            self.downsample_rate = 160 * self.feature_extractor.stride  # 10 ms hop at 16 kHz, stacked
        elif hasattr(config, "conv_kernel") and hasattr(config, "conv_stride"):
            self.kind = "waveform"
            self.model = model
            self.feature_extractor = None
            self.conv_kernels = tuple(config.conv_kernel)
            self.conv_strides = tuple(config.conv_stride)
            self.squeeze_factor = int(getattr(config, "squeeze_factor", 1))
            self.downsample_rate = math.prod(self.conv_strides) * self.squeeze_factor
            self.num_layers = config.num_hidden_layers + 1
            self.hidden_size = config.hidden_size
            self.waveform_norm_eps = waveform_norm_eps
            extractor = getattr(model, "feature_extractor", None)
            first = extractor.conv_layers[0] if extractor is not None else None
            if padding_mode == "exact" and isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):
                self._masked_norm = MaskedGroupNorm(first.layer_norm)
            mixing = frame_mixing_convolutions(model)
            if padding_mode == "exact" and mixing:
                self._frame_zeroing = PaddedFrameZeroing(mixing)
        else:
            raise ValueError(
                f"{name} is a {type(model).__name__} (model_type {family!r}); expected a speech encoder of "
                f"one of {SUPPORTED_FAMILIES} (or another wav2vec 2.0-style encoder with a CNN front end)"
            )
        if compile and self.kind != "waveform":
            raise ValueError(
                f"upstream.compile=true: {family} computes its {self.kind} features with transformers' feature "
                "extractor (numpy / host code), which torch.compile cannot trace; use compile=false"
            )
        self.finalize_setup()

    # --- frame arithmetic -------------------------------------------------------------------------

    @property
    def min_samples(self) -> int:
        """Shortest waveform (samples) that yields one frame (see the class docstring per family)."""
        if self.kind == "log_mel":
            return self.n_fft
        if self.kind == "fbank":
            return 400 + 160 * (self.feature_extractor.stride - 1)
        jump = math.prod(self.conv_strides)
        return receptive_field(self.conv_kernels, self.conv_strides) + (self.squeeze_factor - 1) * jump

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        """Valid frames per waveform length, by the family's own arithmetic (class docstring)."""
        lengths = wav_lengths.long()
        if self.kind == "log_mel":
            mel_frames = torch.div(lengths, self.hop_length, rounding_mode="floor")
            return torch.div(mel_frames + 1, 2, rounding_mode="floor")
        if self.kind == "fbank":
            fbank = conv_frame_lengths(lengths, (400,), (160,))
            return torch.div(fbank, self.feature_extractor.stride, rounding_mode="floor")
        frames = conv_frame_lengths(lengths, self.conv_kernels, self.conv_strides)
        return torch.div(frames, self.squeeze_factor, rounding_mode="floor")

    # --- forward --------------------------------------------------------------------------------

    def _recorded_states(self, output: Any) -> torch.Tensor:
        states = [state for state in output.hidden_states if state is not None]
        return torch.stack(states)

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        if self.kind == "log_mel":
            return self._whisper_states(wavs, wav_lengths)
        if self.kind == "fbank":
            features = self.feature_extractor(
                [
                    wav[:length].float().cpu().numpy()
                    for wav, length in zip(wavs, wav_lengths.tolist(), strict=True)
                ],
                sampling_rate=self.sample_rate,
                padding=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            output = self.model(
                features["input_features"].to(wavs.device, wavs.dtype),
                attention_mask=features["attention_mask"].to(wavs.device),
                output_hidden_states=list(self.layer_ids),
            )
            return self._recorded_states(output)
        attention_mask = valid_mask(wav_lengths, wavs.shape[1])
        if self._masked_norm is not None:
            first = (wav_lengths - self.conv_kernels[0]).div(self.conv_strides[0], rounding_mode="floor") + 1
            self._masked_norm.lengths = first
        if self._frame_zeroing is not None:
            self._frame_zeroing.lengths = conv_frame_lengths(
                wav_lengths, self.conv_kernels, self.conv_strides
            )
        try:
            output = self.model(
                wavs, attention_mask=attention_mask.long(), output_hidden_states=list(self.layer_ids)
            )
        finally:
            if self._masked_norm is not None:
                self._masked_norm.lengths = None
            if self._frame_zeroing is not None:
                self._frame_zeroing.lengths = None
        return self._recorded_states(output)


class HfUpstream(HfEncoderUpstream):
    """A transformers speech encoder: ``model`` is a Hugging Face id or a save_pretrained directory; the
    family comes from its config's model_type (see HfEncoderUpstream for what each family does).

    Weights are cached by huggingface_hub ($HF_HOME/hub, default ~/.cache/huggingface/hub, or
    ``cache_dir``); a fine-tuned checkpoint (e.g. ...ForCTC, WhisperForConditionalGeneration) loads as its
    base encoder (Whisper: the encoder only). The feature extractor (Whisper, w2v-BERT 2.0) comes from the
    checkpoint's preprocessor_config.json, else the family's defaults.
    """

    def __init__(
        self,
        model: str = "facebook/hubert-base-ls960",
        cache_dir: str | None = None,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        padding_mode: str = "exact",
        layers: LayerSelection = None,
        whisper_window: str = "pad30",
        whisper_long_audio: str = "split",
    ) -> None:
        def load(location: str, local_only: bool) -> tuple[nn.Module, Any, float | None]:
            loaded, _ = _load(location, cache_dir, local_only)
            family = loaded.config.model_type
            if family in LOG_MEL_FAMILIES + FBANK_FAMILIES:
                extractor = load_feature_extractor(family, location, cache_dir, loaded.config)
                return loaded, extractor, None
            return loaded, None, _waveform_norm_eps(location, cache_dir, local_only)

        loaded, extractor, norm_eps = load_offline_first(str(model), cache_dir, load)
        super().__init__(
            loaded,
            name=f"{model} (hf)",
            feature_extractor=extractor,
            waveform_norm_eps=norm_eps,
            trainable=trainable,
            lr=lr,
            precision=precision,
            compile=compile,
            padding_mode=padding_mode,
            layers=layers,
            whisper_window=whisper_window,
            whisper_long_audio=whisper_long_audio,
        )
