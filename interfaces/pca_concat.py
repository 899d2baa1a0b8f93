"""Per-layer PCA fitted on training features, concatenated; nothing is trained."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from interfaces.base import Interface, check_int, check_output_dim, frame_mask


class PCAConcat(Interface):
    """Reduce every layer with its own PCA, fitted once on training features, and concatenate:

        y_t = [V_0^T (h_{0,t} - mu_0); ...; V_{L-1}^T (h_{L-1,t} - mu_{L-1})],

    where mu_l is layer l's mean and V_l [D, k] its k = output_dim // L leading principal directions
    (eigenvectors of the layer's covariance with the largest eigenvalues, each signed so that its
    largest-magnitude entry is positive). Output size L*k, about ``output_dim`` (default D): 13 x 59 = 767
    for L=13, D=768. No trainable parameters.

    ``fit(batches)`` streams (hidden_states [L, B, T, D], lengths [B]) batches, accumulating in float64 the
    per-layer frame count, sum and sum of outer products over valid frames only, until ``max_fit_frames``
    frames are seen (the remaining batches are not read); then cov_l = (S_l - n mu_l mu_l^T) / (n - 1).
    With ``normalize``, fit and forward both see the layer-normed hidden states.
    mu, V and the eigenvalues are buffers, so a saved state dict restores a fitted interface.
    Forward before fit (or before loading a fitted state dict) raises NotFittedError.
    """

    needs_fit = True

    def __init__(
        self,
        num_layers: int,
        hidden_size: int,
        output_dim: int | None = None,
        max_fit_frames: int = 100_000,
        normalize: bool = False,
    ) -> None:
        super().__init__(num_layers, hidden_size, normalize)
        owner = type(self).__name__
        target_dim = check_output_dim(owner, output_dim, hidden_size)
        check_int(owner, "output_dim", target_dim, num_layers, num_layers * hidden_size)
        self.components_per_layer = target_dim // num_layers
        self.max_fit_frames = check_int(
            owner, "max_fit_frames", max_fit_frames, self.components_per_layer + 1
        )
        self.output_size = num_layers * self.components_per_layer
        self.register_buffer("mean", torch.zeros(num_layers, hidden_size))
        self.register_buffer("components", torch.zeros(num_layers, hidden_size, self.components_per_layer))
        self.register_buffer("explained_variance", torch.zeros(num_layers, self.components_per_layer))
        self.register_buffer("fitted", torch.tensor(False))
        self._is_fitted = False  # mirrors the buffer without a device sync on every forward
        self.register_load_state_dict_post_hook(PCAConcat._sync_fitted_flag)

    @staticmethod
    def _sync_fitted_flag(module: PCAConcat, incompatible_keys: object) -> None:
        module._is_fitted = bool(module.fitted.item())

    @property
    def is_fitted(self) -> bool:
        return self._is_fitted

    @torch.no_grad()
    def fit(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        count = 0
        frame_sum = outer_sum = None
        # Statistics are float64, which autocast never lowers, so fit is exact under any autocast context.
        for hidden_states, lengths in batches:
            self.check_inputs(hidden_states, lengths)
            valid = frame_mask(lengths, hidden_states.shape[2])
            frames = self.normalize_input(hidden_states)[:, valid]  # [L, N, D]
            frames = frames[:, : self.max_fit_frames - count].double()
            if frame_sum is None:
                frame_sum = frames.new_zeros(self.num_layers, self.hidden_size)
                outer_sum = frames.new_zeros(self.num_layers, self.hidden_size, self.hidden_size)
            frame_sum += frames.sum(1)
            outer_sum.baddbmm_(frames.transpose(1, 2), frames)
            count += frames.shape[1]
            if count >= self.max_fit_frames:
                break
        needed = self.components_per_layer + 1
        if count < needed:
            raise ValueError(
                f"{type(self).__name__}.fit saw {count} valid frames; estimating "
                f"{self.components_per_layer} principal directions per layer needs at least {needed}"
            )
        mean = frame_sum / count
        covariance = (outer_sum - count * mean.unsqueeze(2) * mean.unsqueeze(1)) / (count - 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        top_values = eigenvalues.flip(-1)[:, : self.components_per_layer]
        top_vectors = eigenvectors.flip(-1)[:, :, : self.components_per_layer]  # [L, D, k]
        peak_rows = top_vectors.abs().argmax(dim=1, keepdim=True)
        top_vectors = top_vectors * torch.sign(top_vectors.gather(1, peak_rows))
        self.mean.copy_(mean)
        self.components.copy_(top_vectors)
        self.explained_variance.copy_(top_values.clamp_min(0.0))
        self.fitted.fill_(True)
        self._is_fitted = True

    def combine(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        num_layers, batch_size, num_frames, hidden_size = hidden_states.shape
        centred = hidden_states.reshape(num_layers, -1, hidden_size) - self.mean.unsqueeze(1)
        reduced = torch.bmm(centred, self.components.to(centred.dtype))  # [L, B*T, k]
        return reduced.transpose(0, 1).reshape(batch_size, num_frames, self.output_size)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, "
            f"components_per_layer={self.components_per_layer}, "
            f"max_fit_frames={self.max_fit_frames}, fitted={self._is_fitted}"
        )
