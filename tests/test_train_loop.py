"""Trainer loop features: schedules, MFU arithmetic, spike detection, gradient accumulation, NaN steps skipped."""

import json
import math

import pytest
import torch

from kfm.model import ModelConfig
from kfm.train.config import OptimConfig
from kfm.train.loop.throughput import SpikeDetector, device_peak_flops, mfu, peak_for_gpu
from kfm.train.optim import lr_at
from tests.helpers import make_job, run_distributed, train_and_report


def test_wsd_and_cosine_schedules():
    wsd = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2, schedule="wsd", decay_fraction=0.3)
    assert [round(lr_at(s, 10, wsd), 6) for s in range(10)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.7, 0.4, 0.1]
    cos = OptimConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=2)
    assert lr_at(2, 10, cos) == 1.0 and math.isclose(lr_at(10, 10, cos), 0.1) and math.isclose(lr_at(6, 10, cos), 0.55)
    assert lr_at(7, 10, OptimConfig(lr=1.0, warmup_steps=2, schedule="constant")) == 1.0
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        OptimConfig(schedule="linear")


def test_mfu_arithmetic_against_a_hand_count():
    cfg = ModelConfig(vocab_size=100, dim=8, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden_dim=16, max_seq_len=4)
    # per token, forward: attention projections 8*4*(2+1+1) + 2*4*8 = 192 weights, SwiGLU 3*8*16 = 384,
    # output 100*8 = 800 -> 2 * 1376 = 2752 FLOPs; scores and values 2 products * 2 * 4 keys * 2 heads * 4 = 128.
    # Training is 3x: 8640 FLOPs per token. At 1000 tokens/s on a 1e12 FLOP/s device: 8.64e-6.
    assert mfu(cfg, 4, 1000.0, 1e12) == pytest.approx(8.64e-6, rel=1e-12)


def test_device_peak_is_known_by_name_or_refused():
    # Names as torch.cuda.get_device_name() reports them on these machines.
    assert peak_for_gpu("NVIDIA H100 80GB HBM3") == ("h100_sxm", 989e12)
    assert peak_for_gpu("NVIDIA H100 PCIe") == ("h100_pcie", 756e12)
    assert peak_for_gpu("NVIDIA H200") == ("h200", 989e12)
    assert peak_for_gpu("NVIDIA H20") == ("h20", 148e12)
    assert peak_for_gpu("NVIDIA A100-SXM4-80GB") == ("a100", 312e12)
    assert peak_for_gpu("NVIDIA L40S") == ("l40s", 362e12)
    assert peak_for_gpu("NVIDIA L4") == ("l4", 121e12)
    assert peak_for_gpu("AMD Instinct MI300X") == ("mi300x", 1307e12)
    assert peak_for_gpu("NVIDIA B200") == ("b200", 2250e12)
    with pytest.raises(ValueError, match=r"does not know the peak of 'NVIDIA RTX A6000'.*trainer.metrics.device_peak=<dense"):
        peak_for_gpu("NVIDIA RTX A6000")
    assert device_peak_flops("400", torch.device("cpu")) == ("400 TFLOP/s", 400e12)
    assert device_peak_flops("a100", torch.device("cpu")) == ("a100", 312e12)
    assert device_peak_flops("auto", torch.device("cpu")) == ("cpu", 1e12)
    from kfm.train.config import MetricsConfig

    assert MetricsConfig(device_peak="400").device_peak == "400"
    for bad in ("a6000", "inf", "nan", "0", "-5"):
        with pytest.raises(ValueError, match="trainer.metrics.device_peak must be auto, a peak in TFLOP/s"):
            MetricsConfig(device_peak=bad)


def test_spike_detector():
    d = SpikeDetector(sigmas=3.0, window=5)
    assert not any(d.is_spike(x) for x in [2.0, 2.1, 1.9, 2.0, 2.05])  # filling the window
    assert d.is_spike(5.0)  # far above mean 2.01 + 3 * 0.074
    assert not d.is_spike(2.02)
    assert not SpikeDetector(sigmas=0.0, window=2).is_spike(1e9)  # off


def test_impossible_batch_configuration_is_named(run_dir):
    job = make_job(run_dir, steps=2, global_batch_size=12)  # local 4 x 2 ranks = 8 does not divide 12
    with pytest.raises(RuntimeError, match=r"trainer.global_batch_size=12 is not divisible by trainer.local_batch_size "
                                           r"\(4\) x data-parallel ranks \(2\) = 8"):
        run_distributed(train_and_report, 2, job)


def test_gradient_accumulation_equals_the_full_batch(run_dir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run_dir / "data", other / "data")
    full = make_job(run_dir, steps=3)
    full.trainer.local_batch_size = 8
    accumulated = make_job(other, steps=3, global_batch_size=8)  # 2 micro batches of 4
    # Adam divides by sqrt(v) + eps: at the default eps 1e-8 an entry whose gradient is ~0 takes a step of
    # +-lr from its rounding noise alone (summing 8 rows at once or 2 x 4 differ in the last bit), which moved
    # single entries by up to 8e-5. A larger eps keeps such entries still and leaves the update of every
    # real gradient (>> 1e-4) as it was.
    full.optim.eps = accumulated.optim.eps = 1e-4
    (_, w_full), = run_distributed(train_and_report, 1, full)
    (_, w_acc), = run_distributed(train_and_report, 1, accumulated)
    for k in w_full:
        assert torch.allclose(w_full[k], w_acc[k], rtol=1e-4, atol=1e-6), (k, (w_full[k] - w_acc[k]).abs().max())


def train_with_a_nan_batch(job):
    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    class NaNOnce(Trainer):
        def loss(self, batch, z_loss=None):
            loss = super().loss(batch, z_loss)
            return loss * float("nan") if self.step == 3 and self.model.training else loss

    trainer = NaNOnce(job, init_distributed())
    last = trainer.fit()
    finite = all(torch.isfinite(p.full_tensor() if hasattr(p, "full_tensor") else p).all()
                 for p in trainer.model.parameters())
    return last, trainer.skipped_steps, finite


@pytest.mark.parametrize("backend", ["fsdp2", "deepspeed"])
def test_a_nan_batch_is_skipped_and_counted(run_dir, backend):
    job = make_job(run_dir, steps=6, parallelism={"backend": backend})
    (last, skipped, finite), _ = run_distributed(train_with_a_nan_batch, 2, job)
    assert skipped == 1 and finite and math.isfinite(last["train_loss"])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "skipped_steps" in r]
    assert train_rows[-1]["step"] == 6 and train_rows[-1]["skipped_steps"] == 1
    assert all(r["mfu"] > 0 and r["tokens_per_s_per_device"] > 0 and r["peak_memory_mb"] > 0 for r in train_rows)
    assert all(r["mfu_peak"] == "cpu" for r in train_rows)


def train_with_a_signal_on_rank0(job):
    import os
    import signal

    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    class SignalAtStep3(Trainer):
        def train_step(self):
            if self.step == 3 and self.dist.rank == 0:
                os.kill(os.getpid(), signal.SIGUSR1)  # as Slurm's --signal would, to one rank first
            return super().train_step()

    trainer = SignalAtStep3(job, init_distributed())
    trainer.fit()
    return trainer.step, trainer.preempted


def test_sigusr1_checkpoints_on_every_rank_and_stops(run_dir):
    from kfm.train.checkpoint.layout import list_checkpoints

    job = make_job(run_dir, steps=8)
    results = run_distributed(train_with_a_signal_on_rank0, 2, job)
    assert results == [(4, True), (4, True)]
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step_0000004"]


def test_pretrain_exits_with_the_requeue_status_and_resumes(run_dir):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from kfm.train.checkpoint.layout import list_checkpoints
    from kfm.train.loop.trainer import EXIT_REQUEUE

    root = Path(__file__).resolve().parents[1]
    # loader=natural: the shards here hold one source, so the sample config's mixture weights do not apply.
    args = [sys.executable, "-m", "kfm.train.cli.pretrain", f"run_dir={run_dir}", "model.vocab_size=768", "model.dim=64",
            "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2", "model.ffn_hidden_dim=96", "loader.seq_len=32",
            "loader=natural", "trainer.steps=400", "trainer.metrics.log_every=1", "trainer.validation.every=1000", "trainer.checkpoint.every=1000",
            "trainer.validation.batches=1", "trainer.metrics.wandb_mode=disabled"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 300
    def trained_a_step():
        return metrics.exists() and '"train_loss"' in metrics.read_text()

    while time.time() < deadline and proc.poll() is None and not trained_a_step():
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    stopped = int(list_checkpoints(run_dir / "checkpoints")[-1].name.split("_")[1])
    assert 0 < stopped < 400 and "stopped by a signal" in out
    resumed = subprocess.run(args[:-6] + ["trainer.steps=" + str(stopped + 2), "trainer.metrics.log_every=1",
                                          "trainer.validation.every=1000", "trainer.checkpoint.every=1000",
                                          "trainer.validation.batches=1", "trainer.metrics.wandb_mode=disabled"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert int(list_checkpoints(run_dir / "checkpoints")[-1].name.split("_")[1]) == stopped + 2


def test_token_byte_lengths_sum_to_the_bytes_of_the_text(tiny_tokenizer):
    from kfm.tokenizer.hf import load_sentencepiece
    from kfm.tokenizer.pieces import piece_byte_lengths
    from tests.helpers import EN_SENTENCES, KO_SENTENCES

    sp = load_sentencepiece(tiny_tokenizer / "tokenizer.model")
    table = piece_byte_lengths(sp)
    assert table[sp.bos_id()] == table[sp.eos_id()] == 0
    for text in KO_SENTENCES + EN_SENTENCES + ["def f(x):\n\treturn x  # 끝 😀 ∑"]:
        ids = sp.encode(text)
        assert table[ids].sum() == len(text.encode("utf-8")), text


def test_validation_reports_bits_per_byte(run_dir):
    import numpy as np

    from kfm.data_pipeline.loader import TokenWindows, validation_batches

    job = make_job(run_dir, steps=2)
    (last, _), = run_distributed(train_and_report, 1, job)
    table = np.load(run_dir / "data" / "token_bytes.npy")
    windows = TokenWindows(run_dir / "data", "val", job.loader.seq_len, "ko")  # the only held-out source here
    batches = list(validation_batches(windows, job.trainer.local_batch_size, 0, 1, job.trainer.validation.batches))
    tokens = sum(b.targets.numel() for b in batches)
    nbytes = sum(int(table[b.targets.numpy()].sum()) for b in batches)
    assert 1 < tokens and tokens < nbytes  # several bytes per token
    assert last["val_bpb"] == pytest.approx(last["val_loss"] * tokens / nbytes / math.log(2), rel=1e-9)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    per_source = {k for k in rows[-1] if "/" in k}
    assert per_source == {"val_loss/ko", "val_bpb/ko"}  # tagged ko, the en and code documents fail its Hangul filter
