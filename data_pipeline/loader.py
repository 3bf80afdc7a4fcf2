"""Deterministic, resumable, distributed batches of token windows.

The training stream is every train shard laid end to end and cut into windows of
``seq_len + 1`` tokens (inputs and shifted targets). Each epoch visits the windows in a
permutation drawn from ``(seed, epoch)``; global step ``s`` takes the ``s``-th slice of
``world * local_batch`` windows and rank ``r`` its ``r``-th part. A batch is therefore a pure
function of (seed, step, rank, world): resuming needs only the step, and no window is
skipped or repeated within an epoch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data_pipeline.shards import Manifest


class TokenWindows:
    """Random access to the ``seq_len + 1``-token windows of one split (memory-mapped)."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int) -> None:
        self.manifest = Manifest.load(data_dir)
        shards = self.manifest.split_shards(split)
        if not shards:
            raise ValueError(f"{data_dir}: no '{split}' shards in the manifest; rebuild with `python -m data_pipeline.build`")
        self.seq_len = seq_len
        dtype = np.dtype(self.manifest.dtype)
        self._arrays = [np.memmap(Path(data_dir) / s.file, dtype=dtype, mode="r") for s in shards]
        for s, arr in zip(shards, self._arrays):
            if len(arr) != s.num_tokens:
                raise ValueError(f"{data_dir}/{s.file}: {len(arr)} tokens on disk, manifest says {s.num_tokens}")
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.num_tokens = int(self._starts[-1])
        self.num_windows = (self.num_tokens - 1) // seq_len
        if self.num_windows == 0:
            raise ValueError(
                f"{data_dir}: the '{split}' split has {self.num_tokens} tokens, fewer than one sequence of "
                f"{seq_len + 1}; lower data.seq_len or add data"
            )

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens ``[i*seq_len, (i+1)*seq_len]`` of the concatenated split (may span shards)."""
        start, end = i * self.seq_len, (i + 1) * self.seq_len + 1
        parts = []
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < end:
            lo = start - self._starts[k]
            take = min(end, self._starts[k + 1]) - start
            parts.append(self._arrays[k][lo : lo + take])
            start += take
            k += 1
        return np.concatenate(parts).astype(np.int64)


def _to_batch(windows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.stack(windows))
    return x[:, :-1].contiguous(), x[:, 1:].contiguous()


class DistributedLoader:
    """Batches of (inputs, targets) for one rank, addressed by global step."""

    def __init__(self, windows: TokenWindows, local_batch: int, rank: int, world: int, seed: int) -> None:
        self.windows, self.local_batch, self.rank, self.world, self.seed = windows, local_batch, rank, world, seed
        self.global_batch = local_batch * world
        self.steps_per_epoch = len(windows) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"one global batch needs {self.global_batch} windows but the split has {len(windows)}: "
                "lower trainer.local_batch_size or data.seq_len"
            )
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.windows))
            self._perm_epoch = epoch
        return self._perm

    def indices(self, step: int) -> np.ndarray:
        """Window indices this rank reads at global ``step``."""
        epoch, i = divmod(step, self.steps_per_epoch)
        lo = i * self.global_batch + self.rank * self.local_batch
        return self._permutation(epoch)[lo : lo + self.local_batch]

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_batch([self.windows[int(j)] for j in self.indices(step)])


def validation_batches(windows: TokenWindows, local_batch: int, rank: int, world: int, max_batches: int):
    """The first ``max_batches`` global batches of a split in order, this rank's share of each."""
    n = min(max_batches, len(windows) // (local_batch * world))
    if n == 0:
        raise ValueError(
            f"the validation split has {len(windows)} windows, fewer than one global batch of {local_batch * world}"
        )
    for b in range(n):
        lo = (b * world + rank) * local_batch
        yield _to_batch([windows[j] for j in range(lo, lo + local_batch)])
