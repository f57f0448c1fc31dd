"""Batch statistics of one epoch: how many batches, how full, how much padding.

The loader fills a :class:`BatchStatistics` per epoch from the batches as they arrive in the main process (only
counts that collation already computed, so it costs nothing measurable), logs its summary at verbosity 4 and
keeps it as ``BatchLoader.last_epoch_stats`` for tools.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from returnn.torch.data.collate import CollatedBatch

__all__ = ["BatchStatistics", "KeyStatistics"]


@dataclass
class KeyStatistics:
    """Frames (first-axis positions) of one key over an epoch.

    :ivar frames: real frames, summed over all sequences.
    :ivar padded_frames: batch size times longest sequence, summed over batches (real frames plus padding).
    :ivar max_padded_frames: the largest padded size of one batch.
    """

    frames: int = 0
    padded_frames: int = 0
    max_padded_frames: int = 0

    @property
    def padding_ratio(self) -> float:
        """The share of padding among the padded frames."""
        return 1.0 - self.frames / self.padded_frames if self.padded_frames else 0.0


@dataclass
class BatchStatistics:
    """What the batches of one epoch looked like.

    :ivar num_oversized: batches holding one sequence larger than ``batch_size``.
    """

    epoch: int | None = None
    dataset_name: str = ""
    num_batches: int = 0
    num_seqs: int = 0
    min_seqs_per_batch: int = 0
    max_seqs_per_batch: int = 0
    num_oversized: int = 0
    keys: dict[str, KeyStatistics] = field(default_factory=dict)

    def add(self, batch: CollatedBatch) -> None:
        """Count one batch."""
        num_seqs = batch.num_seqs
        if not self.num_batches or num_seqs < self.min_seqs_per_batch:
            self.min_seqs_per_batch = num_seqs
        self.max_seqs_per_batch = max(self.max_seqs_per_batch, num_seqs)
        self.num_batches += 1
        self.num_seqs += num_seqs
        for key, (frames, longest) in batch.frames.items():
            stats = self.keys.get(key)
            if stats is None:
                stats = self.keys[key] = KeyStatistics()
            stats.frames += frames
            stats.padded_frames += num_seqs * longest
            stats.max_padded_frames = max(stats.max_padded_frames, num_seqs * longest)

    @property
    def seqs_per_batch(self) -> float:
        """The mean number of sequences per batch."""
        return self.num_seqs / self.num_batches if self.num_batches else 0.0

    def summary(self) -> str:
        """One log line in ``key=value`` form."""
        parts = [
            f"batch statistics: dataset={self.dataset_name or '-'} epoch={self.epoch}",
            f"batches={self.num_batches} seqs={self.num_seqs}",
            f"seqs_per_batch={self.seqs_per_batch:.1f} (min {self.min_seqs_per_batch}, max {self.max_seqs_per_batch})",
        ]
        for key, stats in self.keys.items():
            per_batch = stats.frames / self.num_batches if self.num_batches else 0.0
            parts.append(
                f"{key}: frames_per_batch={per_batch:.0f} max_padded={stats.max_padded_frames} "
                f"padding={stats.padding_ratio:.3f}"
            )
        if self.num_oversized:
            parts.append(f"oversized_batches={self.num_oversized}")
        return " ".join(parts)
