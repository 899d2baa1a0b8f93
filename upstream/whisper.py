"""Whisper's encoder path for ``upstream.hf``: log-mel from ``WhisperFeatureExtractor``, the 30 s window
(``whisper_window``: pad30 as trained, or trim with padded frames masked) and audio longer than the window
(``whisper_long_audio``: split into consecutive 30 s windows whose frames are concatenated, or error).

Frames: T = ceil(floor(n / 160) / 2) at 50 Hz (hop 160, the second convolution with stride 2).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from upstream.base import valid_mask

logger = logging.getLogger(__name__)

WHISPER_WINDOWS = ("pad30", "trim")
WHISPER_LONG_AUDIO = ("split", "error")


class WhisperEncoding:
    """The Whisper part of ``HfEncoderUpstream`` (a mixin): expects ``model`` (the encoder),
    ``feature_extractor``, ``hop_length``, ``window_samples``, ``n_fft``, ``whisper_window``,
    ``whisper_long_audio``, ``split_utterances``, ``layer_ids``, ``sample_rate``, ``name`` and
    ``frame_lengths`` from the upstream."""

    @property
    def max_samples(self) -> int | None:
        """Whisper with ``whisper_long_audio=error``: its 30 s window; otherwise any length."""
        return self.window_samples if self.whisper_long_audio == "error" else None

    def _segments(self, wav_lengths: list[int]) -> list[tuple[int, int, int]]:
        """(utterance, first sample, samples) of each window of at most 30 s."""
        segments = []
        for index, length in enumerate(wav_lengths):
            if length > self.window_samples and self.whisper_long_audio == "error":
                raise ValueError(
                    f"utterance {index} of this batch has {length} samples ({length / self.sample_rate:.1f} s), "
                    f"longer than Whisper's {self.window_samples / self.sample_rate:g} s window; set "
                    "upstream.whisper_long_audio=split to encode it in 30 s windows, or shorten the audio"
                )
            for start in range(0, length, self.window_samples):
                segments.append((index, start, min(self.window_samples, length - start)))
        if len(segments) > len(wav_lengths):
            if self.split_utterances == 0:
                logger.info(
                    "%s: utterances longer than %g s are encoded in consecutive 30 s windows, frames "
                    "concatenated (upstream.whisper_long_audio=split); results.json counts them (data_policy, over_window)",
                    self.name,
                    self.window_samples / self.sample_rate,
                )
            self.split_utterances += sum(length > self.window_samples for length in wav_lengths)
        return segments

    def _log_mel(self, segment: torch.Tensor, device: torch.device, pad30: bool) -> torch.Tensor:
        """[n_mels, M] log-mel of one waveform segment by WhisperFeatureExtractor (on ``device``)."""
        audio = segment.float().cpu().numpy()
        if not pad30 and len(audio) < self.n_fft:  # a last window shorter than one STFT frame
            audio = torch.nn.functional.pad(segment.float().cpu(), (0, self.n_fft - len(audio))).numpy()
        features = self.feature_extractor(
            [audio],
            sampling_rate=self.sample_rate,
            padding="max_length" if pad30 else "longest",
            return_tensors="pt",
            device=device.type,
        )["input_features"][0]
        return features

    def _whisper_states(self, wavs: torch.Tensor, wav_lengths: torch.Tensor) -> torch.Tensor:
        encoder = self.model
        lengths = wav_lengths.tolist()
        segments = self._segments(lengths)
        pad30 = self.whisper_window == "pad30"
        seg_lengths = torch.tensor([samples for _, _, samples in segments])
        mel_frames = torch.div(seg_lengths, self.hop_length, rounding_mode="floor")
        out_frames = self.frame_lengths(seg_lengths)
        features = [self._log_mel(wavs[i, start : start + n], wavs.device, pad30) for i, start, n in segments]
        if pad30:
            mel = torch.stack(features)
        else:
            width = int(mel_frames.max())
            mel = wavs.new_zeros(len(segments), features[0].shape[0], width, dtype=torch.float32)
            for row, (feature, frames) in enumerate(zip(features, mel_frames.tolist(), strict=True)):
                mel[row, :, :frames] = feature[:, :frames]
        mel = mel.to(wavs.device, wavs.dtype)
        x = nn.functional.gelu(encoder.conv1(mel))
        key_padding = None
        if not pad30:
            x = x * valid_mask(mel_frames.to(x.device), x.shape[-1])[:, None, :].to(x.dtype)
        x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)
        x = x + encoder.embed_positions.weight[: x.shape[1]].to(x.dtype)
        if not pad30:
            valid = valid_mask(out_frames.to(x.device), x.shape[1])
            key_padding = torch.zeros(valid.shape, dtype=x.dtype, device=x.device)
            key_padding = key_padding.masked_fill(~valid, torch.finfo(x.dtype).min)[:, None, None, :]
        keep = set(self.layer_ids)
        width = int(out_frames.max())  # pad30 runs 1500 positions; keep only the real frames' copies

        def kept(state: torch.Tensor) -> torch.Tensor:
            return state[:, :width].clone() if width < state.shape[1] else state

        states = [kept(x)] if 0 in keep else []
        last = len(encoder.layers)
        for index, layer in enumerate(encoder.layers[: max(keep)], start=1):
            x = layer(x, key_padding)
            if index in keep:
                states.append(kept(encoder.layer_norm(x) if index == last else x))
        stacked = torch.stack(states)  # [L, segments, width, D]
        if len(segments) == len(lengths):
            return stacked
        total = self.frame_lengths(wav_lengths.cpu())
        out = stacked.new_zeros(stacked.shape[0], len(lengths), int(total.max()), stacked.shape[-1])
        offsets = [0] * len(lengths)
        for row, ((index, _, _), frames) in enumerate(zip(segments, out_frames.tolist(), strict=True)):
            out[:, index, offsets[index] : offsets[index] + frames] = stacked[:, row, :frames]
            offsets[index] += frames
        return out
