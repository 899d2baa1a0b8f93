"""Upstreams: self-supervised speech models that return all their layer-wise hidden states.

One module per source (each imported by its config's ``_target_``, so only the chosen source's
dependencies load): tiny.TinyUpstream, s3prl_hub.S3prlUpstream, hf.HfUpstream,
torchaudio_bundle.TorchaudioUpstream, fbank.FbankUpstream; fusion.FusedUpstream runs several of them on one
frame grid (upstream=fusion).
"""

from upstream._offline import CheckpointNotFoundError
from upstream.base import PRECISIONS, Upstream, conv_frame_lengths

__all__ = ["PRECISIONS", "CheckpointNotFoundError", "Upstream", "conv_frame_lengths"]
