"""Document boundaries are computed once per batch and shared by every layer; the step syncs with the host a
fixed number of times, whatever the gradient accumulation."""

import pytest
import torch

import kfm.model.attention as attn
from kfm.data_pipeline.loader import to_batch
from kfm.model import ModelConfig, Transformer
from kfm.model.attention import Documents, as_documents, flat_cu_seqlens
from kfm.model.config import ModelRuntime
from kfm.model.kernels.flash_attention import document_bounds
from tests.helpers import BASE, count_step_syncs, make_job, run_distributed


def packed_rows(seed=0, batch=3, seq=17):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        cuts = sorted(set(torch.randint(1, seq, (4,), generator=g).tolist()))
        rows.append(torch.tensor([0, *cuts, seq], dtype=torch.int32))
    return rows, seq


def test_flat_and_per_row_boundaries_give_the_same_documents():
    rows, seq = packed_rows()
    a = Documents.from_cu_seqlens(rows, seq)
    b = as_documents(flat_cu_seqlens(rows, seq), len(rows), seq)
    assert torch.equal(a.doc_ids, b.doc_ids) and torch.equal(a.cu_seqlens, b.cu_seqlens)
    assert a.max_seqlen == max(int((r[1:] - r[:-1]).max()) for r in rows)
    start, end = b.bounds()
    ref_start, ref_end = document_bounds(b.doc_ids)
    assert torch.equal(start, ref_start) and torch.equal(end, ref_end)
    # the same token in the same document: ids equal exactly within a row's document
    for r, cu in enumerate(rows):
        for d in range(len(cu) - 1):
            ids = b.doc_ids[r, cu[d]:cu[d + 1]]
            assert bool((ids == ids[0]).all())
            if d:
                assert ids[0] != b.doc_ids[r, cu[d] - 1]


def test_the_loaders_flat_boundaries_are_its_rows_end_to_end():
    import numpy as np

    windows = [(np.arange(11), np.array([0, 4, 7])), (np.arange(11), np.array([3])), (np.arange(11), np.array([0]))]
    batch = to_batch(windows)
    assert torch.equal(batch.cu_seqlens_flat, flat_cu_seqlens(batch.cu_seqlens, 10))
    assert batch.cu_seqlens_flat.tolist() == [0, 4, 7, 10, 13, 20, 30]


@pytest.mark.parametrize("bad", [[0, 5, 12], [0, 12, 5, 24], [1, 12, 24], [0, 10, 24]])
def test_bad_flat_boundaries_are_refused(bad):
    with pytest.raises(ValueError, match="cu_seqlens"):
        Documents(torch.tensor(bad), 2, 12)


@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_masks_are_built_once_per_batch_and_window_not_per_layer(backend, monkeypatch):
    """4 layers, 2 of them local: one mask per distinct window, per forward (and again for a new batch)."""
    cfg = ModelConfig(**{**BASE, "sliding_window": 5, "layer_pattern": "LG"})
    model = Transformer(cfg, ModelRuntime(attention_backend=backend))
    model.init_weights(seed=0)
    built = []
    name = "_block_mask" if backend == "flex" else "attention_mask"
    real = getattr(attn, name)
    monkeypatch.setattr(attn, name, lambda *a, **k: built.append(1) or real(*a, **k))
    rows, seq = packed_rows(batch=2, seq=16)
    tokens = torch.randint(0, cfg.vocab_size, (2, seq))
    with torch.no_grad():  # FlexAttention has no backward on CPU
        out = model(tokens, cu_seqlens=flat_cu_seqlens(rows, seq))
        assert len(built) == 2  # windows 5 and 0
        assert torch.allclose(out, model(tokens, cu_seqlens=rows), atol=1e-6)  # per-row input: same logits
    assert len(built) == 4


def test_a_step_syncs_with_the_host_twice_whatever_the_accumulation(run_dir):
    """With the gradient accumulated over 4 micro batches a step makes the same 2 synchronisations (the loss
    with the stop flag, the gradient norm) as with 1; before, each micro batch added one."""
    counts = {}
    for accum in (1, 4):
        job = make_job(run_dir / f"accum{accum}", steps=2, global_batch_size=4 * accum)
        job.data_dir = str(run_dir / "data")
        (got_accum, n), = run_distributed(count_step_syncs, 1, job)
        assert got_accum == accum
        counts[accum] = n
    assert counts[1] == counts[4] == 2, counts
