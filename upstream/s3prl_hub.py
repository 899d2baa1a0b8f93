"""s3prl's upstream hub (S3PRLUpstream): any s3prl name, or a local checkpoint through its *_local entries."""

from __future__ import annotations

import difflib
import os

import torch
from torch import nn

from upstream import _s3prl_compat
from upstream._offline import CheckpointNotFoundError, load_offline_first, missing_checkpoint_message
from upstream.base import LayerSelection, Upstream

LOCAL_SUFFIXES = ("_local", "_custom", "_url")


def _cnn_config(expert: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(kernels, strides) of a wav2vec 2.0-style CNN front end (model.feature_extractor), if the expert has one."""
    extractor = getattr(getattr(expert, "model", None), "feature_extractor", None)
    if not isinstance(extractor, nn.Module):
        return None
    convs = [module for module in extractor.modules() if isinstance(module, nn.Conv1d)]
    if not convs:
        return None
    return tuple(conv.kernel_size[0] for conv in convs), tuple(conv.stride[0] for conv in convs)


class S3prlUpstream(Upstream):
    """An upstream from s3prl's hub (``s3prl.nn.S3PRLUpstream``), e.g. hubert, hubert_large_ll60k, wavlm_base,
    wavlm_base_plus, wavlm_large, wav2vec2, xlsr_53; see ``s3prl.hub.options()``.

    Checkpoints: ``path`` with a ``*_local`` name (hubert_local, wavlm_local, wav2vec2_local, ...: a
    checkpoint in s3prl's converted format), else s3prl's cache (~/.cache/s3prl/download, from $HOME),
    else a download by s3prl (only when the network is reachable).

    hidden_states are s3prl's ``hidden_states`` list: for the HuBERT / WavLM / wav2vec 2.0 experts the
    input of each transformer layer followed by the encoder's output, i.e. the transformer input and every
    layer (L = layers + 1), in the same order as the hf and torchaudio sources. s3prl pads every layer to
    ceil(n / 320) frames by repeating the last one; frame_lengths here follow the CNN's arithmetic
    (floor((n - 400) / 320) + 1) for CNN front ends, and s3prl's ceil(n / rate) for other upstreams.
    s3prl passes a padding mask (see TorchaudioModelUpstream for what padding does to group-norm CNNs).
    Attention is s3prl's own implementation; ``compile`` is refused (s3prl collects layers with hooks).
    """

    def __init__(
        self,
        name: str = "hubert",
        path: str | None = None,
        trainable: bool = False,
        lr: float = 1e-5,
        precision: str = "fp32",
        compile: bool = False,
        layers: LayerSelection = None,
    ) -> None:
        if compile:
            raise ValueError(
                "upstream.compile=true is not supported for s3prl upstreams (s3prl collects hidden states with "
                "forward hooks); use the hf or torchaudio source for torch.compile"
            )
        super().__init__(
            trainable=trainable, lr=lr, name=f"{name} (s3prl)", precision=precision, layers=layers
        )
        _s3prl_compat.install()  # before s3prl is imported
        from s3prl import hub
        from s3prl.nn import S3PRLUpstream

        if name not in hub.options():
            close = difflib.get_close_matches(name, hub.options(), n=4)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise ValueError(
                f"upstream.name={name!r} is not an s3prl upstream; {hint}examples: hubert, hubert_large_ll60k, "
                "wavlm_base_plus, wavlm_large, wav2vec2, xlsr_53, hubert_local (all: s3prl.hub.options())"
            )
        if path is not None:
            if not name.endswith(LOCAL_SUFFIXES):
                raise ValueError(
                    f"upstream.path is set, so upstream.name must be an s3prl entry that takes a checkpoint "
                    f"(hubert_local, wavlm_local, wav2vec2_local, ... ending in {LOCAL_SUFFIXES}), got {name!r}"
                )
            if not name.endswith("_url") and not os.path.isfile(path):
                raise CheckpointNotFoundError(f"upstream.path={path!r} (s3prl {name}) is not a file")
            self.model = S3PRLUpstream(name, path_or_url=path)
        else:

            def on_missing(url: str | None, reason: str) -> CheckpointNotFoundError:
                from s3prl.util.download import get_dir, urls_to_filepaths

                destination = urls_to_filepaths(url, download=False) if url else str(get_dir())
                return CheckpointNotFoundError(
                    missing_checkpoint_message(
                        model=f"{name} (s3prl)",
                        looked_in=[f"s3prl cache {destination}"],
                        needs=url or "s3prl's download for this upstream",
                        put_it=f"download it to {destination} (s3prl's cache, ~/.cache/s3prl/download), or pass "
                        "upstream.name=<its *_local entry, e.g. hubert_local> upstream.path=<the file>",
                        reason=reason,
                    )
                )

            self.model = load_offline_first(lambda: S3PRLUpstream(name), on_missing)
        hidden_sizes, rates = set(self.model.hidden_sizes), set(self.model.downsample_rates)
        if len(hidden_sizes) != 1 or len(rates) != 1:
            raise ValueError(
                f"upstream.name={name!r}: layers of different sizes {sorted(hidden_sizes)} or frame rates "
                f"{sorted(rates)} cannot be stacked into [L, B, T, D]"
            )
        self.num_layers = self.model.num_layers
        self.hidden_size = hidden_sizes.pop()
        self.downsample_rate = rates.pop()
        cnn = _cnn_config(self.model.upstream)
        if cnn is not None:
            self.conv_kernels, self.conv_strides = cnn
        self.finalize_setup()

    def frame_lengths(self, wav_lengths: torch.Tensor) -> torch.Tensor:
        if self.conv_kernels:
            return super().frame_lengths(wav_lengths)
        return torch.div(wav_lengths.long() - 1, self.downsample_rate, rounding_mode="floor") + 1

    def extract(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        hidden_states, _ = self.model(wavs, wav_lengths)
        stacked = torch.stack(hidden_states)
        if self.conv_kernels:  # drop the frames s3prl appended (repeats of the last one) past the CNN's count
            stacked = stacked[:, :, : int(self.frame_lengths(wav_lengths).max())]
        return stacked
