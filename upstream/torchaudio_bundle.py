"""torchaudio's wav2vec 2.0 / HuBERT / WavLM models: pretrained bundles, local state dicts, imported HF models."""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path

import torch
import torchaudio
from torchaudio.models import Wav2Vec2Model, wav2vec2_model, wavlm_model
from torchaudio.models.wav2vec2.utils import import_huggingface_model
from torchaudio.models.wav2vec2.wavlm_attention import WavLMSelfAttention
from torchaudio.pipelines import Wav2Vec2Bundle

from upstream._offline import CheckpointNotFoundError, load_offline_first, missing_checkpoint_message
from upstream.base import PADDING_MODES, LayerSelection, MaskedGroupNorm, Upstream

# layer_norm over each whole utterance, as fairseq and torchaudio's bundles normalise the waveform.
FAIRSEQ_WAVEFORM_NORM_EPS = 1e-5


class TorchaudioModelUpstream(Upstream):
    """Every hidden state of a ``torchaudio.models.Wav2Vec2Model`` (wav2vec 2.0, HuBERT, WavLM, XLS-R).

    hidden_states[0] is the transformer input (CNN features -> projection -> + convolutional positional
    embedding, then the encoder layer norm for post-LN "Base" models); hidden_states[i] is the output of
    transformer layer i; for pre-LN "Large" models the last one gets the encoder's final layer norm,
    as in fairseq/s3prl and Hugging Face (torchaudio's own ``extract_features`` skips that norm and the
    transformer input). L = layers + 1.

    Padding: the padded frames are zeroed before the positional convolution and masked out of attention
    (a key padding mask), so for a CNN with per-frame layer norm (``extractor_mode="layer_norm"``: Large
    models, XLS-R, the tiny model) a padded batch equals each utterance run alone at its valid frames. A
    ``group_norm`` CNN (HuBERT Base, wav2vec 2.0 Base, WavLM Base/Base+) normalises each channel of its
    first convolution over time. ``padding_mode="exact"`` (default) takes those statistics over each
    utterance's valid frames (``MaskedGroupNorm``), so a padded utterance equals its single run there
    too; ``padding_mode="s3prl"`` keeps the statistics over the whole padded length, as s3prl, fairseq
    and Hugging Face compute them: each utterance then gets what it would get run alone after
    zero-padding to the batch's length. Attention uses PyTorch's scaled_dot_product_attention.
    ``layers`` keeps a subset of the hidden states (see ``Upstream``); layers above the last kept one
    are not run.
    """

    def __init__(
        self,
        model: Wav2Vec2Model,
        name: str,
        waveform_norm_eps: float | None = None,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        padding_mode: str = "exact",
        layers: LayerSelection = None,
    ) -> None:
        super().__init__(
            trainable=trainable, lr=lr, name=name, precision=precision, compile=compile, layers=layers
        )
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"upstream.padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if not isinstance(model, Wav2Vec2Model):
            raise TypeError(f"{name}: expected a torchaudio.models.Wav2Vec2Model, got {type(model).__name__}")
        self.model = model
        transformer = model.encoder.transformer
        transformer.layer_drop = 0.0  # every layer, every step: L stays fixed while fine-tuning
        convs = [block.conv for block in model.feature_extractor.conv_layers]
        self.conv_kernels = tuple(conv.kernel_size[0] for conv in convs)
        self.conv_strides = tuple(conv.stride[0] for conv in convs)
        self.downsample_rate = math.prod(self.conv_strides)
        self.num_layers = len(transformer.layers) + 1
        self.hidden_size = model.encoder.feature_projection.projection.out_features
        self._is_wavlm = isinstance(transformer.layers[0].attention, WavLMSelfAttention)
        self.waveform_norm_eps = waveform_norm_eps
        self.padding_mode = padding_mode
        first_block = model.feature_extractor.conv_layers[0]
        self._masked_norm: MaskedGroupNorm | None = None
        if padding_mode == "exact" and isinstance(first_block.layer_norm, torch.nn.GroupNorm):
            self._masked_norm = MaskedGroupNorm(first_block.layer_norm)
        self.finalize_setup()

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        # torchaudio's extract_features returns only the layer outputs, zeroes padding with boolean indexing
        # (a host sync on GPU) and, for WavLM, fails on padded batches (its attention takes only a key padding
        # mask). These are the same steps with the transformer input kept and those two points fixed.
        if self._masked_norm is not None:
            first = (wav_lengths - self.conv_kernels[0]).div(self.conv_strides[0], rounding_mode="floor") + 1
            self._masked_norm.lengths = first
        try:
            features, frame_lengths = self.model.feature_extractor(wavs, wav_lengths)
        finally:
            if self._masked_norm is not None:
                self._masked_norm.lengths = None
        return self.transformer_states(self.model.encoder.feature_projection(features), frame_lengths)

    def transformer_states(self, x: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Projected CNN features [B, T, D] -> every hidden state [L, B, T, D] (layer 0 = transformer input).

        Split from ``extract`` so masked pretraining (scripts/pretrain_tiny_hubert.py) can replace frames
        of the transformer's input first.
        """
        transformer = self.model.encoder.transformer
        padding = torch.arange(x.shape[1], device=x.device)[None, :] >= frame_lengths[:, None]  # [B, T]
        x = transformer._preprocess(x.masked_fill(padding[..., None], 0.0))  # + positional conv (+ norm)
        if self._is_wavlm:
            key_padding = torch.zeros(padding.shape, dtype=x.dtype, device=x.device).masked_fill(
                padding, -math.inf
            )
            mask_kwargs = {"attention_mask": None, "key_padding_mask": key_padding}
        else:  # [B, 1, T, T], True = attend
            attend = ~padding[:, None, None, :]
            mask_kwargs = {"attention_mask": attend.expand(-1, 1, x.shape[1], -1)}
        keep = set(self.layer_ids) if self.layer_ids else set(range(len(transformer.layers) + 1))
        states = [x] if 0 in keep else []
        position_bias = None  # WavLM's relative position bias, computed by its first layer
        last = len(transformer.layers)
        for index, layer in enumerate(transformer.layers[: max(keep)], start=1):
            x, position_bias = layer(x, position_bias=position_bias, **mask_kwargs)
            if index == last and not transformer.layer_norm_first:
                # torchaudio's flag: True means the norm comes before the layers (post-LN "Base" models)
                x = transformer.layer_norm(x)
            if index in keep:
                states.append(x)
        return torch.stack(states)


def build_from_params(bundle: Wav2Vec2Bundle) -> Wav2Vec2Model:
    """The bundle's architecture with random weights (torchaudio keeps it in the bundle's _params)."""
    factory = wavlm_model if bundle._model_type == "WavLM" else wav2vec2_model
    return factory(**bundle._params)


def bundle_names() -> list[str]:
    return sorted(
        name
        for name in dir(torchaudio.pipelines)
        if isinstance(getattr(torchaudio.pipelines, name), Wav2Vec2Bundle)
    )


def _torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


class TorchaudioUpstream(TorchaudioModelUpstream):
    """A torchaudio pipeline bundle (HUBERT_BASE, HUBERT_LARGE, WAVLM_BASE, WAVLM_BASE_PLUS, WAVLM_LARGE,
    WAV2VEC2_BASE, WAV2VEC2_XLSR53, ...).

    Weights, first found wins: ``path`` (a state dict for the bundle's architecture, e.g. the .pth file
    torchaudio downloads or ``torch.save(model.state_dict())``; or a Hugging Face model directory, which
    is imported with torchaudio's HF importer and then defines the architecture, ``bundle`` unused),
    then torch.hub's cache ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/hub/checkpoints), then a
    download. ``pretrained=False`` builds the bundle's architecture with random weights (timing, tests).
    Bundles that normalise the waveform (Large, XLS-R) get per-utterance normalisation over valid samples.
    """

    def __init__(
        self,
        bundle: str = "HUBERT_BASE",
        path: str | None = None,
        pretrained: bool = True,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        padding_mode: str = "exact",
        layers: LayerSelection = None,
    ) -> None:
        if path is not None and (Path(path) / "config.json").is_file():
            from upstream.hf import load_hf_model

            hf_model, norm_eps = load_hf_model(str(path), cache_dir=None)
            model = import_huggingface_model(hf_model)
            name = f"{path} (torchaudio, imported from hf)"
        else:
            spec = getattr(torchaudio.pipelines, bundle, None) if isinstance(bundle, str) else None
            if not isinstance(spec, Wav2Vec2Bundle):
                close = difflib.get_close_matches(str(bundle), bundle_names(), n=4)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                raise ValueError(
                    f"upstream.bundle={bundle!r} is not a torchaudio wav2vec 2.0 bundle; {hint}"
                    f"upstream.bundle must be one of {bundle_names()}"
                )
            model = self._load_bundle(spec, bundle, path, pretrained)
            norm_eps = FAIRSEQ_WAVEFORM_NORM_EPS if spec._normalize_waveform else None
            detail = f", {path}" if path is not None else ("" if pretrained else ", random init")
            name = f"{bundle} (torchaudio{detail})"
        super().__init__(
            model,
            name=name,
            waveform_norm_eps=norm_eps,
            trainable=trainable,
            lr=lr,
            precision=precision,
            compile=compile,
            padding_mode=padding_mode,
            layers=layers,
        )

    @staticmethod
    def _load_bundle(spec: Wav2Vec2Bundle, bundle: str, path: str | None, pretrained: bool) -> Wav2Vec2Model:
        if path is not None:
            if not os.path.isfile(path):
                raise CheckpointNotFoundError(
                    f"upstream.path={path!r} (bundle {bundle}, torchaudio) is neither a file (a state dict) "
                    "nor a directory with a Hugging Face config.json"
                )
            model = build_from_params(spec)
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
            try:
                model.load_state_dict(state_dict)
            except RuntimeError as error:
                raise ValueError(
                    f"upstream.path={path!r} is not a state dict of torchaudio's {bundle} architecture: {error}"
                ) from None
            return model
        if not pretrained:
            return build_from_params(spec)

        def on_missing(url: str | None, reason: str) -> CheckpointNotFoundError:
            file_name = os.path.basename(url) if url else "<the bundle's .pth file>"
            destination = _torch_hub_checkpoint_dir() / file_name
            return CheckpointNotFoundError(
                missing_checkpoint_message(
                    model=f"{bundle} (torchaudio)",
                    looked_in=[f"torch.hub cache {destination}"],
                    needs=url or "torchaudio's download of this bundle",
                    put_it=f"download it to {destination} (torch.hub's cache; set TORCH_HOME to move it), "
                    f"or pass upstream.path=<the downloaded file>",
                    reason=reason,
                )
            )

        loaded = load_offline_first(lambda: spec.get_model(dl_kwargs={"progress": False}), on_missing)
        # Bundles that normalise the waveform wrap the model; we normalise per utterance ourselves.
        return loaded if isinstance(loaded, Wav2Vec2Model) else loaded.model
