"""Multi-token prediction: the training loss stays the next-token loss while the gradient carries the weighted
MTP losses (positions whose token k ahead lies past the sequence or in another packed document take no part);
evaluation and generation never run the modules; the MTP losses are logged apart and fall in training."""

import pytest
import torch

from kfm.model import ModelConfig, Transformer
from kfm.model.attention import Documents
from kfm.model.config import MTPConfig
from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy_reference
from kfm.model.rope import Rotary
from kfm.train.cli.export_hf import export_checkpoint
from kfm.train.provenance.verify import verify
from tests.helpers import count_step_syncs, make_job, mla_model_cfg, read_metrics, run_distributed, train_and_report


def reference_mtp_loss(model: Transformer, tokens, targets, positions, docs):
    """Main loss + lambda / D * sum_k (CE_k summed over the positions taking part) / (next-token targets), each
    depth's inputs and ignored targets built position by position."""
    cfg = model.cfg
    h = model.hidden_states(tokens, positions, docs)
    main = linear_cross_entropy_reference(h.flatten(0, 1), model.output.weight, targets.flatten())
    rotary = Rotary(model.rope_cos, model.rope_sin, positions, tokens.shape[1])
    doc = docs.doc_ids if docs is not None else torch.zeros_like(tokens)
    rows, seq = tokens.shape
    extra, summed = [], []
    for k, module in enumerate(model.mtp.layers, start=1):
        ahead = torch.zeros_like(tokens)
        tgt = torch.full_like(targets, -100)
        for r in range(rows):
            for i in range(seq - k):
                ahead[r, i] = tokens[r, i + k]
                if doc[r, i + k] == doc[r, i]:
                    tgt[r, i] = targets[r, i + k]
        h = module(model.tok_embeddings(ahead), h, rotary, docs)
        extra.append(linear_cross_entropy_reference(h.flatten(0, 1), model.output.weight, tgt.flatten()))
        summed.append(extra[-1] * (tgt != -100).sum())  # over the positions taking part
    return main, main + cfg.mtp.loss_weight / cfg.mtp.depth * sum(summed) / targets.numel(), extra


@pytest.mark.parametrize("cfg", [
    ModelConfig(vocab_size=96, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_dim=48, max_seq_len=64,
                mtp=MTPConfig(depth=2, loss_weight=0.3)),
    mla_model_cfg(moe={}, mtp=MTPConfig(depth=1, loss_weight=0.1)),
], ids=["gqa_depth2", "mla_moe_depth1"])
def test_the_loss_stays_the_next_token_loss_and_the_gradient_carries_the_mtp_losses(cfg):
    torch.manual_seed(0)
    model = Transformer(cfg)
    model.init_weights(seed=0)
    tokens = torch.randint(0, cfg.vocab_size, (2, 21))
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    cu = [torch.tensor([0, 6, 7, 20]), torch.tensor([0, 20])]
    docs = Documents.from_cu_seqlens(cu, 20)
    positions = torch.stack([torch.cat([torch.arange(6), torch.arange(1), torch.arange(13)]), torch.arange(20)])

    model.train()
    loss = model(inputs, positions, docs, targets=targets)
    stats = model.mtp.take_stats()
    loss.backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    main, total, extra = reference_mtp_loss(model, inputs, targets, positions, docs)
    total.backward()
    assert loss.item() == pytest.approx(main.item(), abs=1e-6)
    assert stats[:-1].tolist() == pytest.approx([e.item() for e in extra], abs=1e-5) and stats[-1] == 1
    for name, p in model.named_parameters():
        assert torch.allclose(ours[name], p.grad, atol=1e-6, rtol=1e-4), name
    assert ours["mtp.layers.0.eh_proj.weight"].abs().sum() > 0

    with torch.no_grad():  # evaluation: the modules do not run, nothing is recorded
        model.eval()(inputs, positions, docs, targets=targets)
    assert model.mtp.take_stats() is None


def test_the_mtp_losses_are_logged_apart_fall_in_training_and_export_verified_without_them(run_dir, tiny_tokenizer):
    job = make_job(run_dir, steps=24, metrics={"log_every": 4})
    job.model = ModelConfig.from_dict({**job.model.to_dict(), "mtp": {"depth": 2, "loss_weight": 0.3}})
    run_distributed(train_and_report, 1, job)
    first, second = read_metrics(run_dir, "loss/mtp_1"), read_metrics(run_dir, "loss/mtp_2")
    assert len(first) == len(second) == 6
    assert first[-1] < first[0] - 0.5 and second[-1] < second[0] - 0.3, (first, second)
    assert len(read_metrics(run_dir, "train_loss")) == 6

    ckpt = run_dir / "checkpoints" / "step_0000024"  # a Llama-class model cannot store the modules
    with pytest.raises(ValueError, match="drop_mtp=true"):
        export_checkpoint(ckpt, tiny_tokenizer, run_dir / "hf")
    export_checkpoint(ckpt, tiny_tokenizer, run_dir / "hf", drop_mtp=True)
    report = verify(run_dir / "hf", run_dir)  # the export's weights: the checkpoint's without the modules
    assert report.verified and report.verdict.startswith("VERIFIED: trained from scratch"), report.to_text()


def test_an_mtp_step_adds_no_host_synchronisation(run_dir):
    """Two MTP depths, 1 or 4 micro batches: still the step's 2 synchronisations (loss with stop flag, gradient
    norm). The chunked cross-entropy, run once per depth, counts its tokens on the device."""
    for accum in (1, 4):
        job = make_job(run_dir / f"accum{accum}", steps=2, global_batch_size=4 * accum)
        job.model = ModelConfig.from_dict({**job.model.to_dict(), "mtp": {"depth": 2}})
        job.data_dir = str(run_dir / "data")
        (got_accum, n), = run_distributed(count_step_syncs, 1, job)
        assert (got_accum, n) == (accum, 2)


def test_mtp_trains_sharded_with_activation_checkpointing_and_resumes_exactly(run_dir):
    """FSDP2 on 2 ranks, every block and MTP module checkpointed and sharded on its own: a run cut after step 2 and
    resumed ends with the weights (MTP modules included) and logged MTP losses of the straight run."""
    import shutil

    job = make_job(run_dir, steps=4, checkpoint={"every": 2}, metrics={"log_every": 2},
                   parallelism={"backend": "fsdp2", "activation_checkpointing": "full"})
    job.model = ModelConfig.from_dict({**job.model.to_dict(), "mtp": {"depth": 1}})
    straight = run_distributed(train_and_report, 2, job)[0][1]
    assert any(k.startswith("mtp.layers.0.block.") for k in straight)
    losses = read_metrics(run_dir, "loss/mtp_1")
    shutil.rmtree(run_dir / "checkpoints" / "step_0000004")
    resumed = run_distributed(train_and_report, 2, job)[0][1]
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k
    assert read_metrics(run_dir, "loss/mtp_1")[-1:] == losses[-1:]
