"""The layout planner (``python -m kfm.train.plan``): its per-rank memory prediction against the peak measured in
gloo CPU processes (every tensor the step holds, by torch's ``MemTracker``) for layouts of a dense and a MoE model,
within 15%; the command's table and recommendation; bad inputs refused."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from kfm.model import ModelConfig
from kfm.train.config import ClusterConfig
from kfm.train.plan.cli import PlanJob, hardware, parse_layout, plan, report
from kfm.train.plan.estimate import Candidate, Hardware, estimate
from tests.helpers import make_job, moe_model_cfg, run_distributed

DENSE = ModelConfig(vocab_size=768, dim=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, ffn_hidden_dim=352,
                    max_seq_len=64, tie_embeddings=False)
MOE = replace(moe_model_cfg(), vocab_size=768, dim=128, n_layers=4, tie_embeddings=False)
CPU = Hardware(memory_gb=24, bf16_tflops=1, nvlink_gb_s=1, network_gb_s=1, gpus_per_node=2)


def peak_of_a_step(job):
    """This rank's peak bytes of tensors during the second training step (the first creates AdamW's state)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    class TotalPeak(MemTracker):
        """Only the total: the per-module statistics refuse a module called twice a step (micro batches)."""

        def _pre_fw_hook(self, *args):
            pass

        _post_fw_hook = _pre_bw_hook = _post_bw_hook = _pre_fw_hook

    trainer = Trainer(job, init_distributed())
    trainer.train_step()
    tracker = TotalPeak()
    tracker.track_external(trainer.engine.model, trainer.engine.optimizer)
    with tracker:
        trainer.train_step()
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


SLOW = pytest.mark.slow  # ~8 s each; two layouts run in make test, all seven in make test-all
LAYOUTS = [  # (name, model, global batch in sequences, trainer.parallelism); 2 processes, micro batches of 4
    ("tp2_sp", DENSE, 8, {"tp": 2, "sequence_parallel": True}),
    ("ep2", MOE, 8, {"ep": 2}),
    pytest.param("fsdp2_accumulating", DENSE, 16, {}, marks=SLOW),
    pytest.param("pp2", DENSE, 8, {"pp": 2}, marks=SLOW),
    pytest.param("fsdp2", DENSE, 8, {}, marks=pytest.mark.slow),
    pytest.param("tp2", DENSE, 8, {"tp": 2}, marks=pytest.mark.slow),
    pytest.param("cp2", DENSE, 8, {"cp": 2}, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name, model, global_batch, parallelism", LAYOUTS, ids=lambda v: v if isinstance(v, str) else "")
def test_memory_prediction_is_within_15_percent_of_the_measured_peak(run_dir, name, model, global_batch, parallelism):
    job = make_job(run_dir / name, steps=3, global_batch_size=global_batch, parallelism=parallelism)
    job.model, job.data_dir = model, str(run_dir / "data")
    job.loader.seq_len, job.trainer.local_batch_size = 64, 4
    measured = max(run_distributed(peak_of_a_step, 2, job))
    tp, pp, ep, cp = (parallelism.get(k, 1) for k in ("tp", "pp", "ep", "cp"))
    layout = Candidate(dp=2 // (tp * pp * cp), tp=tp, pp=pp, ep=ep, cp=cp, micro=4,
                       sp=parallelism.get("sequence_parallel", False))
    predicted = estimate(model, layout, CPU, 64, global_batch * 64, param_bytes=4, kernels="torch").memory_bytes
    print(f"{name}: measured {measured / 1e6:.2f} MB, predicted {predicted / 1e6:.2f} MB")
    assert abs(predicted / measured - 1) < 0.15, (measured, predicted)


def h100(**kw) -> PlanJob:
    cluster = ClusterConfig(name="h100_node", gpus_per_node=8, gpu="h100_sxm", gpu_memory_gb=80, bf16_tflops=989,
                            fp8_tflops=1979, nvlink_gb_s=450, network_gb_s=50)
    return PlanJob(model=DENSE_8B, cluster=cluster, **kw)


DENSE_8B = ModelConfig(name="8b_shape", vocab_size=128256, dim=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       ffn_hidden_dim=14336, max_seq_len=8192)


def test_the_plan_recommends_a_layout_kfm_runs_that_fits_and_is_fastest_among_those():
    rows, best, fastest = plan(h100(gpus=16, seq_len=8192, global_batch_tokens=2**22))
    assert best is not None and best.memory_bytes < 0.9 * 80e9
    runnable = [e for e, why in rows if not why and e.memory_bytes < 0.9 * 80e9]
    assert best.tokens_per_s_per_gpu == max(e.tokens_per_s_per_gpu for e in runnable)
    assert fastest.tokens_per_s_per_gpu >= best.tokens_per_s_per_gpu
    # the estimate's parts: 8B shapes, sequence 8192, no checkpointing: 36 bytes a token and layer (fused kernels)
    e = estimate(DENSE_8B, Candidate(dp=16), Hardware(80, 989, 450, 50, 8), 8192, 2**22)
    assert 35 < e.memory["activations"] / (8192 * 32 * 4096) < 37
    assert e.memory["states"] == pytest.approx(12 * 8.03e9 / 16, rel=0.01)
    text = report(h100(gpus=16, layout="tp=2,ac=full"))
    assert "dpx8" not in text and "dp8xtp2 mb1 ac=full | yes" in text and "Recommended: dp8xtp2" in text


def test_the_command_prints_the_table_and_refuses_bad_input():
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    run = [sys.executable, "-m", "kfm.train.plan", "model=8b", "cluster=h100_node", "seq_len=8192"]
    out = subprocess.run([*run, "gpus=16", "global_batch_tokens=4194304", "top=3"], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "| layout | kfm runs it |" in out.stdout and "Recommended: " in out.stdout
    bad = subprocess.run([*run, "gpus=16", "global_batch_tokens=4096"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode != 0 and "global_batch_tokens >= seq_len" in bad.stderr
    with pytest.raises(ValueError, match="cluster=local_cpu has no GPU figures"):
        hardware(ClusterConfig(name="local_cpu"))
    with pytest.raises(ValueError, match="unknown key 'dp'"):
        parse_layout("dp=4", 8)
    with pytest.raises(ValueError, match="tp x pp x cp = 3 does not divide gpus=8"):
        parse_layout("tp=3", 8)


@pytest.mark.slow  # ~55 s: the three recommendations docs/parallelism.md quotes
@pytest.mark.parametrize("preset, cluster, gpus, batch", [
    ("k_exaone_236b_like", "h100_node", 256, 16777216),
    ("ax_k1_519b_like", "h200_node", 1024, 33554432),
    ("solar_open_100b_like", "b200_node", 480, 15728640)])
def test_recommendations_for_the_korean_flagships(preset, cluster, gpus, batch):
    out = subprocess.run([sys.executable, "-m", "kfm.train.plan", f"model={preset}", f"cluster={cluster}",
                          f"gpus={gpus}", "seq_len=8192", f"global_batch_tokens={batch}", "top=3"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Recommended: " in out.stdout, out.stdout
