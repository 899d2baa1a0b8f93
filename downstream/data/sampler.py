"""Length-bucketed batch samplers for DataLoader(batch_sampler=...)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


class BucketBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices with similar lengths; every index exactly once per epoch.

    Give exactly one of:
    - ``batch_size``: SUPERB's count-based batching, ``batch_size`` utterances per batch (the last one of
      each pool may be smaller);
    - ``max_batch_seconds``: each batch holds as many utterances as fit in that much *padded* audio,
      len(batch) * longest(batch) <= max_batch_seconds * sample_rate, so memory is bounded. An utterance
      longer than max_batch_seconds forms a batch on its own; those are counted (``num_overlong``) and
      logged at construction, never dropped.

    shuffle=True: a permutation seeded by (seed, epoch) is cut into pools of about ``pool_batches``
    batches; each pool is sorted by length (longest first) and cut into batches, and the batch order is
    shuffled, so batches change every epoch while padding stays small. shuffle=False (evaluation): the
    whole set sorted by length, longest first (ties by index), in a fixed order.

    ``weights`` (shuffle=True only): each epoch draws len(num_samples) indices *with replacement*, index i
    with probability weights[i] / sum(weights), instead of a permutation; pools and batches are then cut as
    above. KS's class-balanced sampling gives every class the same weight in total (s3prl's
    WeightedRandomSampler over 1 / class count).

    ``halve_above_samples`` (count-based batching only): a batch whose longest utterance has more samples than
    this is cut into two batches, its first (longer) half and the rest, as s3prl's PR recipe halves a bucket
    whose first utterance is longer than 300,000 samples (``downstream/ctc/data.py:11,24-27``). s3prl's buckets
    are sorted by transcript length, so its test reads the longest transcript's audio (here: the longest
    audio); it keeps the first half of that bucket and draws its buckets as sliding windows, so here the second
    half becomes a batch of its own and every utterance still comes once per epoch.

    ``set_epoch(epoch, start_batch)`` selects the epoch's batches and skips its first ``start_batch``
    (resuming mid-epoch); ``len`` is the number of batches the next iteration yields (the epoch's batches
    minus start_batch), ``batches_per_epoch()`` the full count.
    """

    def __init__(
        self,
        num_samples: Sequence[int],
        batch_size: int | None = None,
        max_batch_seconds: float | None = None,
        shuffle: bool = True,
        seed: int = 0,
        sample_rate: int = 16000,
        pool_batches: int = 50,
        weights: Sequence[float] | None = None,
        halve_above_samples: int | None = None,
    ) -> None:
        if (batch_size is None) == (max_batch_seconds is None):
            raise ValueError(
                "BucketBatchSampler: give exactly one of batch_size or max_batch_seconds, "
                f"got batch_size={batch_size!r}, max_batch_seconds={max_batch_seconds!r}"
            )
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"BucketBatchSampler: batch_size must be a positive int, got {batch_size!r}")
        if max_batch_seconds is not None and not max_batch_seconds > 0:
            raise ValueError(f"BucketBatchSampler: max_batch_seconds must be > 0, got {max_batch_seconds!r}")
        if not isinstance(pool_batches, int) or pool_batches < 1:
            raise ValueError(f"BucketBatchSampler: pool_batches must be a positive int, got {pool_batches!r}")
        if len(num_samples) == 0:
            raise ValueError("BucketBatchSampler: num_samples is empty (no utterances to batch)")
        self.lengths = np.asarray(num_samples, dtype=np.int64)
        if (self.lengths <= 0).any():
            raise ValueError(
                f"BucketBatchSampler: every length must be positive, got min {self.lengths.min()}"
            )
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if not shuffle:
                raise ValueError("BucketBatchSampler: weights draw a random sample; they need shuffle=True")
            if weights.shape != self.lengths.shape or not (
                np.isfinite(weights).all() and (weights >= 0).all()
            ):
                raise ValueError(
                    f"BucketBatchSampler: weights must be {len(self.lengths)} finite non-negative numbers, one per "
                    f"utterance; got {weights.shape[0] if weights.ndim == 1 else weights.shape} values"
                )
            if weights.sum() <= 0:
                raise ValueError("BucketBatchSampler: the weights sum to 0 (no utterance can be drawn)")
            weights = weights / weights.sum()
        self.weights = weights
        self.batch_size = batch_size
        self.halve_above_samples = halve_above_samples
        self.max_batch_samples = None if max_batch_seconds is None else round(max_batch_seconds * sample_rate)
        self.shuffle = shuffle
        self.seed = seed
        self.pool_batches = pool_batches
        self.sample_rate = sample_rate
        self.epoch = 0
        self.start_batch = 0
        self._cached: tuple[int, list[list[int]]] | None = None
        self.num_overlong = (
            0 if self.max_batch_samples is None else int((self.lengths > self.max_batch_samples).sum())
        )
        if self.num_overlong:
            logger.warning(
                "BucketBatchSampler: %d utterance(s) are longer than max_batch_seconds=%s (longest %.1f s); "
                "each forms a batch of its own",
                self.num_overlong,
                max_batch_seconds,
                self.lengths.max() / sample_rate,
            )

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch ``epoch``'s batches from now on, skipping the first ``start_batch`` of them."""
        if start_batch < 0:
            raise ValueError(f"BucketBatchSampler.set_epoch: start_batch must be >= 0, got {start_batch}")
        self.epoch = epoch
        self.start_batch = start_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order (a pure function of the lengths, settings, seed and epoch)."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        if self.shuffle:
            generator = np.random.default_rng([self.seed, epoch])
            if self.weights is None:
                order = generator.permutation(len(self.lengths))
            else:
                order = generator.choice(
                    len(self.lengths), size=len(self.lengths), replace=True, p=self.weights
                )
            pools = self._pools(order)
        else:
            generator = None
            pools = [np.arange(len(self.lengths))]
        batches: list[list[int]] = []
        for pool in pools:
            # Stable sort on -length: longest first, ties in pool order (index order when not shuffled).
            ranked = pool[np.argsort(-self.lengths[pool], kind="stable")]
            batches.extend(self._cut(ranked))
        if generator is not None:
            batches = [batches[i] for i in generator.permutation(len(batches))]
        self._cached = (epoch, batches)
        return batches

    def batches_per_epoch(self, epoch: int | None = None) -> int:
        return len(self.epoch_batches(self.epoch if epoch is None else epoch))

    def _pools(self, order: np.ndarray) -> list[np.ndarray]:
        if self.batch_size is not None:
            size = self.batch_size * self.pool_batches
            return [order[i : i + size] for i in range(0, len(order), size)]
        budget = self.max_batch_samples * self.pool_batches
        boundaries = np.searchsorted(
            np.cumsum(self.lengths[order]), np.arange(budget, self.lengths.sum(), budget)
        )
        return [pool for pool in np.split(order, np.unique(boundaries)) if len(pool)]

    def _cut(self, ranked: np.ndarray) -> list[list[int]]:
        """Cut indices sorted longest first into batches."""
        if self.batch_size is not None:
            cut = [ranked[i : i + self.batch_size].tolist() for i in range(0, len(ranked), self.batch_size)]
            if self.halve_above_samples is None:
                return cut
            batches = []
            for batch in cut:
                if len(batch) > 1 and int(self.lengths[batch[0]]) > self.halve_above_samples:
                    batches.extend([batch[: len(batch) // 2], batch[len(batch) // 2 :]])
                else:
                    batches.append(batch)
            return batches
        batches: list[list[int]] = []
        current: list[int] = []
        longest = 0
        for index in ranked.tolist():
            # Sorted longest first, so the batch's longest utterance is its first one.
            longest = longest if current else int(self.lengths[index])
            if current and (len(current) + 1) * longest > self.max_batch_samples:
                batches.append(current)
                current, longest = [], int(self.lengths[index])
            current.append(index)
        if current:
            batches.append(current)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start_batch :]

    def __len__(self) -> int:
        return max(self.batches_per_epoch() - self.start_batch, 0)
