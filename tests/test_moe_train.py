"""Training mixture-of-experts models: the expert bias balances a skewed router, moves identically on every rank,
is saved and resumed exactly on FSDP2 and DeepSpeed (ZeRO-3), and the load metrics are logged."""

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from kfm.model import ModelConfig, Transformer
from kfm.model.accounting import num_params
from kfm.model.config import MoEConfig
from kfm.model.moe import moe_layers
from kfm.train.checkpoint.layout import read_state
from kfm.train.loop.balance import ExpertBalance
from tests.helpers import count_step_syncs, make_job, random_hf_moe, read_metrics, run_distributed, train_and_report

ROOT = Path(__file__).resolve().parents[1]

TINY_MOE = MoEConfig(n_experts=4, top_k=2, expert_hidden_dim=32, n_shared_experts=1, first_k_dense=1,
                     score_func="sigmoid", norm_topk_prob=True, expert_bias=True, bias_update_rate=0.01,
                     seq_aux_loss_coef=0.01)


def moe_job(run_dir, steps, **trainer):
    job = make_job(run_dir, steps=steps, **trainer)
    job.model = ModelConfig(vocab_size=768, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=96,
                            max_seq_len=64, qk_norm=True, rope_on_global_layers=False, moe=TINY_MOE)
    return job


@pytest.mark.parametrize("backend, extra", [("fsdp2", {}),  # ZeRO-3: slow (make test's headroom)
                                            pytest.param("deepspeed", {"zero_stage": 3}, marks=pytest.mark.slow)])
def test_moe_trains_and_resumes_exactly_with_the_expert_bias(run_dir, backend, extra):
    job = moe_job(run_dir, 8, parallelism={"backend": backend, **extra}, checkpoint={"every": 4})
    straight = run_distributed(train_and_report, 2, job)[0][1]
    biases = {k: v for k, v in straight.items() if k.endswith("expert_bias")}
    assert list(biases) == ["layers.1.feed_forward.expert_bias"]
    assert biases["layers.1.feed_forward.expert_bias"].abs().sum() > 0  # it moved (8 steps of 0.01)
    losses = read_metrics(run_dir, "train_loss")
    assert read_metrics(run_dir, "moe/load_max_mean") and read_metrics(run_dir, "moe/load_max_mean/l1")
    shutil.rmtree(run_dir / "checkpoints" / "step_0000008")  # as if the run had died after step 4's checkpoint
    assert read_state(run_dir / "checkpoints" / "step_0000004")["step"] == 4
    resumed = run_distributed(train_and_report, 2, job)[0][1]
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert read_metrics(run_dir, "train_loss")[-2:] == losses[-2:]  # the window means come back too


def balance_run(rate: float) -> list[float]:
    """200 steps of the debug MoE preset (512-token vocabulary) on random tokens, its routers skewed: a direction
    every token's hidden state shares, which experts 0 and 1 favour. The max/mean expert load of each 10-step
    window, as the trainer logs it."""
    raw = yaml.safe_load((ROOT / "configs" / "model" / "debug_moe.yaml").read_text())
    raw["vocab_size"] = 512
    raw["moe"].update(bias_update_rate=rate, seq_aux_loss_coef=0.0)
    cfg = ModelConfig.from_dict(raw)
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    with torch.no_grad():
        shared = torch.nn.functional.normalize(torch.randn(cfg.dim), dim=0)
        model.tok_embeddings.weight += 0.05 * shared
        for layer in moe_layers(model):
            layer.router.weight[:2] += 0.5 * shared
    balance = ExpertBalance(model, accum=1, collapse_ratio=10.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    windows = []
    for step in range(200):
        tokens = torch.randint(0, 512, (8, 64), generator=gen)
        model(tokens, targets=tokens.roll(-1, 1)).backward()
        opt.step()
        opt.zero_grad()
        balance.after_step(applied=True)
        if step % 10 == 9:
            windows.append(balance.metrics()["moe/load_max_mean"])
    return windows


def test_expert_bias_balances_a_skewed_router_within_200_steps():
    """With the bias (aux-loss free, no other balancing; 0.003 a step) max/mean load starts above 2 and falls below
    1.3 within 200 steps, and stays there; without it (rate 0) it stays above 2. Seen: 3.8 -> 1.1-1.3 from step 60."""
    balanced, control = balance_run(0.003), balance_run(0.0)
    assert balanced[0] > 2.0 and control[0] > 2.0
    assert sum(balanced[-5:]) / 5 < 1.3 and max(balanced[-5:]) < 1.35, balanced
    assert min(control) > 2.0, control


def test_continued_pretraining_from_an_exaone_moe_model_is_recorded_as_an_import(run_dir, tiny_tokenizer, tmp_path):
    """``trainer.init_from`` an ExaoneMoeForCausalLM directory: training starts from its weights (expert bias
    included), the export loads in transformers with the trained weights, and provenance names the import."""
    from transformers import AutoModelForCausalLM

    from kfm.train.cli.export_hf import export_checkpoint
    from kfm.train.hf.load import load_hf_checkpoint
    from kfm.train.provenance.verify import verify

    src = tmp_path / "src"
    random_hf_moe("exaone_moe").save_pretrained(str(src))
    job = make_job(run_dir, steps=4, init_from=str(src))
    start, final, model_cfg = run_distributed(start_and_train, 2, job)[0]
    _, expected = load_hf_checkpoint(src)
    assert model_cfg.moe.n_shared_experts == 1 and model_cfg.layer_pattern == "LLLG"
    for k, v in expected.items():
        assert torch.equal(start[k], v), k
    assert not torch.equal(final["layers.1.feed_forward.expert_bias"], expected["layers.1.feed_forward.expert_bias"])
    out = export_checkpoint(run_dir / "checkpoints" / "step_0000004", tiny_tokenizer, run_dir / "hf")
    report = verify(out, run_dir)
    assert report.verified and not report.from_scratch, report.to_text()
    assert [env["record"]["kind"] for env in report.chain] == ["import", "checkpoint", "export"]
    assert report.origin["architecture"] == "ExaoneMoeForCausalLM"
    card = (out / "README.md").read_text()
    active = f"{num_params(model_cfg, active=True):,} parameters active per token"
    assert f"mixture of experts: 8 routed experts of 32 (top-2, sigmoid) + 1 shared from layer 1; {active}" in card
    hf = AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    model = Transformer(model_cfg)
    model.load_state_dict(final)
    x = torch.randint(3, 768, (1, 20))
    with torch.no_grad():
        assert (hf(x).logits - model.eval()(x)).abs().max().item() < 1e-4


def start_and_train(job):
    from kfm.train.loop.trainer import Trainer
    from kfm.train.parallel.distributed import init_distributed

    trainer = Trainer(job, init_distributed())
    start = trainer.engine.full_state_dict()
    trainer.fit()
    return start, trainer.engine.full_state_dict(), job.model


def test_concentrated_load_is_reported_as_a_collapsing_router(caplog):
    import logging

    model = Transformer(moe_job(Path("."), 1).model)  # 4 experts, top-2: all tokens on two experts is 2x the mean
    balance = ExpertBalance(model, accum=1, collapse_ratio=4.0)
    layer = moe_layers(model)[0]
    for load, warned in (([40.0, 40.0, 0.0, 0.0], True), ([25.0, 20.0, 20.0, 15.0], False)):
        layer.stats = {"load": torch.tensor(load), **{k: torch.tensor(1.0) for k in
                                                      ("dropped", "tokens", "entropy", "aux", "forwards")}}
        balance.after_step(applied=True)
        with caplog.at_level(logging.WARNING, logger="kfm.train"):
            caplog.clear()
            metrics = balance.metrics()
        assert metrics["moe/load_max_mean/l1"] == max(load) / (sum(load) / 4)
        assert ("MoE layer 1: load concentrates (max/mean expert load 2.00 > 1.50" in caplog.text) == warned


def global_batch_loss_on_a_rank():
    import torch.distributed as dist

    from kfm.model.moe import balance_loss, router_scores

    rank = dist.get_rank()
    cfg = moe_job(Path("."), 1).model
    model = Transformer(dataclasses.replace(cfg, moe=dataclasses.replace(cfg.moe, batch_aux_loss_coef=0.01)))
    ExpertBalance(model, accum=1, collapse_ratio=4.0)  # gives the layers the reduction over the ranks
    reduce = moe_layers(model)[0].reduce_load
    g = torch.Generator().manual_seed(rank)  # each rank its own tokens, routed unevenly
    scores = router_scores(torch.randn(12 + 4 * rank, 4, generator=g) + torch.tensor([2.0, 0, 0, -2.0]) * rank,
                           "sigmoid")
    experts = scores.topk(2, dim=-1).indices
    return reduce is not None, balance_loss(scores, experts, 1, 4, reduce).item(), scores, experts


def test_the_batch_balance_loss_counts_the_choices_of_the_global_batch():
    results = run_distributed(global_batch_loss_on_a_rank, 2)
    counts = sum(torch.zeros(4).index_add_(0, e.reshape(-1), torch.ones(e.numel())) for _, _, _, e in results)
    tokens = sum(e.shape[0] for _, _, _, e in results)
    f = counts * 4 / (2 * tokens)
    for reduced, loss, scores, experts in results:
        assert reduced
        probs = (scores / scores.sum(-1, keepdim=True)).mean(0)
        assert abs(loss - (f * probs).sum().item()) < 1e-6
        own = torch.zeros(4).index_add_(0, experts.reshape(-1), torch.ones(experts.numel())) * 4 / experts.numel()
        assert abs(loss - (own * probs).sum().item()) > 1e-3  # this rank's choices alone would give another loss


def test_a_moe_step_adds_no_host_synchronisation(run_dir):
    """Dropless routing with torch._grouped_mm, the expert bias, sequence-wise and global-batch losses: a step still
    synchronises with the host twice (loss with stop flag, gradient norm), with 1 or 4 micro batches; the loads
    are reduced and the bias moved on the device."""
    for accum in (1, 4):
        job = moe_job(run_dir / f"accum{accum}", 2, global_batch_size=4 * accum)
        job.model.moe = dataclasses.replace(job.model.moe, batch_aux_loss_coef=0.01)
        job.data_dir = str(run_dir / "data")
        (got_accum, n), = run_distributed(count_step_syncs, 1, job)
        assert (got_accum, n) == (accum, 2)
