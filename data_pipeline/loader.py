"""Deterministic, resumable, mixture-weighted distributed batches of packed token windows.

Each source's train shards, laid end to end, are cut into windows of ``seq_len + 1`` tokens
(inputs and shifted targets; documents are packed back to back as ``<s> ... </s>``); the
shards' offset files say where each document starts, so every window carries its document
boundaries (per-document position ids and ``cu_seqlens``). The
training stream is a sequence of (source, window) samples that is a pure function of the
global sample index ``i`` and the seed:

- mixture: samples come in blocks of ``BLOCK``; each block holds a fixed quota per source
  (its weight times ``BLOCK``, largest remainders rounded up), in an order shuffled per block;
- within a source, the k-th sample is window ``perm_e[k mod n]`` of a permutation drawn per
  source epoch ``e = k div n``: no window repeats or is skipped within a source epoch.

Global step ``s`` of a run with ``world`` ranks of ``local_batch`` each takes the next
``world * local_batch`` samples; rank ``r`` its ``r``-th part. The only state is the number of
samples consumed, so a run resumes exactly, also on a different number of ranks: the
concatenated stream of samples is that of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kfm.data_pipeline.shards import OFFSET_DTYPE, Manifest, file_sha256

BLOCK = 1000


class TokenWindows:
    """Random access to the ``seq_len + 1``-token windows of one split (optionally one source), memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str, seq_len: int, source: str | None = None,
                 manifest: Manifest | None = None, verify: bool = False) -> None:
        self.manifest = manifest or Manifest.load(data_dir)
        shards = [s for s in self.manifest.split_shards(split) if source is None or s.source == source]
        what = f"'{split}'" + (f" / source '{source}'" if source else "")
        if not shards:
            raise ValueError(f"{data_dir}: no {what} shards in the manifest; rebuild with `python -m kfm.data_pipeline.build`")
        self.seq_len = seq_len
        dtype = np.dtype(self.manifest.dtype)
        self._arrays, self._offsets = [], []
        for s in shards:
            for file, count, itemsize, sha in ((s.file, s.num_tokens, dtype.itemsize, s.sha256),
                                               (s.index_file, s.num_docs, OFFSET_DTYPE.itemsize, s.index_sha256)):
                path = Path(data_dir) / file
                size = path.stat().st_size if path.is_file() else -1
                if size != count * itemsize:
                    raise ValueError(f"{path}: {max(size, 0)} bytes on disk, the manifest says {count * itemsize} "
                                     f"({s.num_tokens} tokens, {s.num_docs} documents): the shard is missing or "
                                     "truncated; rebuild with `python -m kfm.data_pipeline.build`")
                if verify and file_sha256(path) != sha:
                    raise ValueError(f"{path}: SHA-256 differs from the manifest's: the shard is corrupt; rebuild "
                                     "with `python -m kfm.data_pipeline.build`")
            self._arrays.append(np.memmap(Path(data_dir) / s.file, dtype=dtype, mode="r"))
            self._offsets.append(np.memmap(Path(data_dir) / s.index_file, dtype=OFFSET_DTYPE, mode="r"))
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.num_tokens = int(self._starts[-1])
        self.num_windows = (self.num_tokens - 1) // seq_len
        if self.num_windows == 0:
            raise ValueError(
                f"{data_dir}: {what} has {self.num_tokens} tokens, fewer than one sequence of "
                f"{seq_len + 1}; lower loader.seq_len or add data"
            )

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> np.ndarray:
        """Tokens ``[i*seq_len, (i+1)*seq_len]`` of the concatenated shards (may span shards)."""
        return self.window(i)[0]

    def window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Window ``i``'s tokens, and where documents start in it (offsets into the window)."""
        start, end = i * self.seq_len, (i + 1) * self.seq_len + 1
        parts, starts = [], []
        k = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < end:
            lo = start - self._starts[k]
            take = min(end, self._starts[k + 1]) - start
            parts.append(self._arrays[k][lo : lo + take])
            offsets = self._offsets[k]
            first, last = np.searchsorted(offsets, [lo, lo + take])
            starts.append(offsets[first:last].astype(np.int64) - lo + (start - i * self.seq_len))
            start += take
            k += 1
        return np.concatenate(parts).astype(np.int64), np.concatenate(starts)


def block_quotas(weights: list[float], block: int = BLOCK) -> list[int]:
    """Samples per source in each block: ``weight * block`` with largest remainders rounded up."""
    total = sum(weights)
    exact = [w / total * block for w in weights]
    quotas = [int(x) for x in exact]
    for j in sorted(range(len(weights)), key=lambda j: quotas[j] - exact[j])[: block - sum(quotas)]:
        quotas[j] += 1
    return quotas


class MixtureStream:
    """The training stream: sample ``i`` → (source index, window index), a pure function of (seed, i)."""

    def __init__(self, data_dir: str | Path, seq_len: int, weights: dict[str, float] | None, seed: int,
                 verify: bool = False) -> None:
        manifest = Manifest.load(data_dir)
        names = sorted({s.source for s in manifest.split_shards("train")})
        if weights:
            unknown = sorted(set(weights) - set(names))
            if unknown:
                raise ValueError(f"data.weights names {unknown}, which have no train shards in {data_dir} "
                                 f"(sources there: {names})")
            names = [n for n in names if weights.get(n, 0) > 0]
        self.names = names
        self.windows = [TokenWindows(data_dir, "train", seq_len, n, manifest, verify) for n in names]
        w = [weights[n] for n in names] if weights else [float(x.num_tokens) for x in self.windows]
        self.weights = [x / sum(w) for x in w]
        self.quotas = block_quotas(self.weights)
        self._slot_source = np.repeat(np.arange(len(names)), self.quotas)
        self._slot_rank = np.concatenate([np.arange(q) for q in self.quotas])
        self.seed = seed
        self._cache: dict[tuple, np.ndarray] = {}

    def _perm(self, key: tuple, n: int) -> np.ndarray:
        if key not in self._cache:
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[key] = np.random.default_rng([self.seed, *key]).permutation(n)
        return self._cache[key]

    def source_position(self, i: int) -> tuple[int, int]:
        """(source index, k) of global sample ``i``: it is that source's k-th sample."""
        block, pos = divmod(i, BLOCK)
        slot = self._perm((0, block), BLOCK)[pos]
        src = int(self._slot_source[slot])
        return src, block * self.quotas[src] + int(self._slot_rank[slot])

    def locate(self, i: int) -> tuple[int, int]:
        """(source index, window index) of global sample ``i``."""
        src, k = self.source_position(i)
        n = len(self.windows[src])
        epoch, j = divmod(k, n)
        return src, int(self._perm((1, src, epoch), n)[j])

    def samples_by_source(self, start: int, end: int) -> dict[str, int]:
        """How many of global samples ``start .. end-1`` each source supplied (whole blocks by their quotas,
        the partial blocks from their shuffled slots)."""

        def upto(c: int) -> np.ndarray:
            full, rem = divmod(c, BLOCK)
            counts = np.asarray(self.quotas, dtype=np.int64) * full
            if rem:
                slots = self._perm((0, full), BLOCK)[:rem]
                counts += np.bincount(self._slot_source[slots], minlength=len(self.names))
            return counts

        return {n: int(c) for n, c in zip(self.names, upto(end) - upto(start))}

    def sample(self, i: int) -> np.ndarray:
        """Tokens of global sample ``i``."""
        return self.sample_window(i)[0]

    def sample_window(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of global sample ``i`` and the offsets where documents start in it."""
        src, w = self.locate(i)
        return self.windows[src].window(w)


def document_positions(starts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-token position ids that restart at every document start, and the ``cu_seqlens`` of the
    documents (pieces of documents) in a sequence of ``length`` tokens; ``starts`` are the offsets
    where documents begin (those at or past ``length`` are ignored)."""
    starts = starts[starts < length]
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    cu = np.append(starts, length).astype(np.int32)
    positions = np.arange(length) - np.repeat(starts, np.diff(cu))
    return positions, cu


@dataclass
class Batch:
    inputs: torch.Tensor
    targets: torch.Tensor
    position_ids: torch.Tensor
    """Position of each input token within its document (restarts at every ``<s>``)."""
    cu_seqlens: list[torch.Tensor]
    """Per sequence: document boundaries as cumulative lengths (flash-attn varlen style)."""
    cu_seqlens_flat: torch.Tensor
    """The same boundaries with the rows laid end to end (int32, ``[0, ..., batch * seq]``): what the model
    turns into its per-batch document tables in one step."""


def to_batch(windows: list[tuple[np.ndarray, np.ndarray]]) -> Batch:
    """A batch from (tokens, document starts) windows of ``seq_len + 1`` tokens."""
    x = torch.from_numpy(np.stack([w for w, _ in windows]))
    inputs = x[:, :-1].contiguous()
    seq = len(windows[0][0]) - 1
    docs = [document_positions(starts, seq) for _, starts in windows]
    flat = np.concatenate([[0]] + [cu[1:] + r * seq for r, (_, cu) in enumerate(docs)]).astype(np.int32)
    return Batch(inputs, x[:, 1:].contiguous(), torch.from_numpy(np.stack([p for p, _ in docs])),
                 [torch.from_numpy(c) for _, c in docs], torch.from_numpy(flat))


class DistributedLoader:
    """This rank's batches of the training stream; ``state_dict`` is the global sample count."""

    def __init__(self, stream: MixtureStream, local_batch: int, rank: int, world: int) -> None:
        self.stream, self.local_batch, self.rank, self.world = stream, local_batch, rank, world
        self.consumed = 0

    def indices(self) -> range:
        """Global sample indices this rank reads in the next step."""
        lo = self.consumed + self.rank * self.local_batch
        return range(lo, lo + self.local_batch)

    def next_batch(self) -> Batch:
        batch = to_batch([self.stream.sample_window(i) for i in self.indices()])
        self.consumed += self.local_batch * self.world
        return batch

    def state_dict(self) -> dict:
        """The samples consumed, and what the stream is a function of (checked on load)."""
        return {"consumed": self.consumed, "seed": self.stream.seed,
                "weights": {n: round(w, 12) for n, w in zip(self.stream.names, self.stream.weights)},
                "windows": {n: len(w) for n, w in zip(self.stream.names, self.stream.windows)}}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s sample count; refuses a stream that is not the one the state came
        from (another seed, mixture or set of shards), which could not continue it exactly."""
        mine = self.state_dict()
        for key, fix in (("seed", "resume with the trainer.seed the run started with"),
                         ("weights", "resume with the loader.weights the run started with"),
                         ("windows", "resume on the shards the run started with (or rebuild them with the same "
                                     "config, tokenizer and inputs)")):
            if key in state and state[key] != mine[key]:
                raise ValueError(f"the checkpoint's data stream differs: {key} {state[key]} != {mine[key]} now; "
                                 f"{fix}. Changing it mid-run would repeat or skip data")
        self.consumed = int(state["consumed"])


def validation_batches(windows: TokenWindows, local_batch: int, rank: int, world: int, max_batches: int):
    """The first ``max_batches`` global batches of a split (or one source's part of it) in order, this rank's
    share of each. Held-out text smaller than one global batch is one batch of ``len(windows) // world``
    windows a rank (every rank runs the same number of batches, as FSDP needs)."""
    if len(windows) < local_batch * world:
        local_batch = len(windows) // world
    n = min(max_batches, len(windows) // (local_batch * world)) if local_batch else 0
    if n == 0:
        raise ValueError(f"the validation split has {len(windows)} windows, fewer than one a rank ({world} ranks)")
    for b in range(n):
        lo = (b * world + rank) * local_batch
        yield to_batch([windows.window(j) for j in range(lo, lo + local_batch)])
