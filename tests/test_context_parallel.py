"""Context parallelism on gloo CPU processes: each sequence split over 2 ranks (load-balanced chunks), keys and
values gathered, trains as one process does with packed documents and with a sliding window (every step's loss and
the validation loss within rel 1e-5, fp32, final weights within 1e-5); a CP2 checkpoint resumes without context
parallelism; bad layouts are refused."""

import shutil

import pytest

from kfm.model import ModelConfig
from kfm.train.config import ParallelismConfig
from kfm.train.parallel.context_parallel import chunk_indices
from kfm.train.parallel.layout import check_layout
from tests.helpers import assert_same_run, assert_values_equal, assert_weights_close, layout_run

WINDOWED = ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, ffn_hidden_dim=96,
                       max_seq_len=64, qk_norm=True, norm_eps=1e-6, sliding_window=12, layer_pattern="LG")
"""A sliding-window layer (12 tokens) and a global one."""


@pytest.mark.parametrize("document_masking", [True, pytest.param(False, marks=pytest.mark.slow)],
                         ids=["packed_documents", "window_only"])  # the packed run has a window layer too
def test_cp2_equals_one_process(run_dir, document_masking):
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, WINDOWED, 1, document_masking=document_masking)  # 2 micro batches
    # 2 ranks, one replica: each rank holds half of every sequence, 2 micro batches of 4 sequences
    assert_same_run(layout_run(run_dir / "cp2", data, WINDOWED, 2, document_masking=document_masking, cp=2), reference)
    if not document_masking:
        return
    shutil.copytree(run_dir / "cp2", run_dir / "cp1", ignore=shutil.ignore_patterns("step_0000006"))
    (run_dir / "cp1" / "metrics.jsonl").unlink()
    cp1 = layout_run(run_dir / "cp1", data, WINDOWED, 2)
    assert_values_equal(cp1.losses, reference.losses[3:])
    assert_weights_close(cp1.weights, reference.weights)


@pytest.mark.slow  # ~15 s; CP2 itself runs in make test above
def test_fsdp2_x_cp2_on_four_processes_equals_one_process(run_dir):
    """FSDP2 over 2 replicas x CP2, one micro batch of 4 a replica."""
    data = run_dir / "data"
    reference = layout_run(run_dir / "one", data, WINDOWED, 1)
    assert_same_run(layout_run(run_dir / "fsdp2xcp2", data, WINDOWED, 4, cp=2), reference, validation=False)


def test_chunks_are_load_balanced_and_cover_the_sequence():
    parts = [chunk_indices(16, 2, r).tolist() for r in range(2)]
    assert parts == [[0, 1, 2, 3, 12, 13, 14, 15], [4, 5, 6, 7, 8, 9, 10, 11]]
    causal_work = [sum(i + 1 for i in p) for p in parts]  # keys each rank's queries attend to
    assert causal_work[0] == causal_work[1]


@pytest.mark.parametrize("world, change, message", [
    (4, dict(cp=3), r"cp=3 does not divide the 4 ranks"),
    (2, dict(cp=2), r"loader.seq_len=30 is not divisible by 2 x cp = 4 .* use loader.seq_len=28 or 32"),
    (2, dict(cp=2, backend="deepspeed"), r"cp=2: DeepSpeed stays data-parallel"),
    (4, dict(cp=2, tp=2), r"cp=2 with tp, pp or ep is not built yet"),
])
def test_bad_context_layouts_are_refused(world, change, message):
    with pytest.raises(ValueError, match=message):
        check_layout(ParallelismConfig(**change), WINDOWED, world, seq_len=30)
    layout = check_layout(ParallelismConfig(cp=2), WINDOWED, 8, seq_len=32)
    assert (layout.dp, layout.dp_rank(5), layout.cp_rank(5)) == (4, 2, 1)
