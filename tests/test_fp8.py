"""FP8 training through torchao (trainer.parallelism.fp8): config, refusals, the module swap on the meta device,
and the emulated recipes' numerics on CPU. The speed and the 200-step loss against bf16 need an FP8 GPU:
bench/gpu/suite.sh measures them."""

import copy

import pytest
import torch
from torch import nn

from kfm.model import Transformer
from kfm.train.config import ParallelismConfig
from kfm.train.parallel.distributed import DistInfo
from kfm.train.parallel.fp8 import convert_to_fp8, fp8_device_error, uses_fp8_all_gather
from kfm.train.parallel.parallelize import parallelize
from tests.helpers import moe_model_cfg, run_distributed, tiny_cfg

BLOCK_LINEARS = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}


def test_torchao_is_installed():
    import torchao

    assert tuple(int(x) for x in torchao.__version__.split(".")[:2]) >= (0, 18)


def test_config_choices_and_refusals():
    with pytest.raises(ValueError, match="fp8.*none, tensorwise, rowwise, mxfp8"):
        ParallelismConfig(fp8="fp9")
    with pytest.raises(ValueError, match="DeepSpeed's engine does not drive"):
        ParallelismConfig(fp8="tensorwise", backend="deepspeed")
    with pytest.raises(ValueError, match="tp=2: FP8 tensor parallelism"):
        ParallelismConfig(fp8="rowwise", tp=2)
    with pytest.raises(ValueError, match="fp8_emulate=true emulates an FP8 recipe"):
        ParallelismConfig(fp8_emulate=True)
    assert ParallelismConfig(fp8="mxfp8").fp8 == "mxfp8"


def test_device_refusals_name_the_gpu_and_the_fix():
    cpu = torch.device("cpu")
    cuda = torch.device("cuda", 0)
    msg = fp8_device_error(ParallelismConfig(fp8="tensorwise").fp8, cpu)
    assert "needs a CUDA GPU with FP8 tensor cores" in msg and "runs on cpu" in msg and "fp8=none" in msg
    msg = fp8_device_error(ParallelismConfig(fp8="rowwise").fp8, cuda, (8, 0), "NVIDIA A100-SXM4-80GB")
    assert "compute capability 8.9+" in msg and "NVIDIA A100-SXM4-80GB, is 8.0" in msg
    msg = fp8_device_error(ParallelismConfig(fp8="mxfp8").fp8, cuda, (9, 0), "NVIDIA H100 80GB HBM3")
    assert "10.0+ (Blackwell: B200" in msg and "use tensorwise or rowwise on this GPU" in msg
    assert fp8_device_error(ParallelismConfig(fp8="mxfp8").fp8, cuda, (10, 0), "NVIDIA B200") is None
    assert fp8_device_error(ParallelismConfig(fp8="tensorwise").fp8, cuda, (9, 0), "NVIDIA H100") is None
    assert fp8_device_error(ParallelismConfig().fp8, cpu) is None
    # The trainer's path: parallelize refuses before touching the model.
    with torch.device("meta"):
        model = Transformer(tiny_cfg())
    with pytest.raises(ValueError, match="runs on cpu"):
        parallelize(model, ParallelismConfig(fp8="tensorwise"), DistInfo(0, 1, 0, cpu))
    assert all(type(m) is nn.Linear for m in model.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_swap_on_meta_keeps_head_and_names(recipe):
    from torchao.float8.float8_linear import Float8Linear

    with torch.device("meta"):
        model = Transformer(tiny_cfg(n_layers=3))
    before = dict(model.named_parameters())
    names = convert_to_fp8(model, ParallelismConfig(fp8=recipe).fp8, fsdp_all_gather=True)
    assert len(names) == 3 * 7 and {n.split(".")[-1] for n in names} == BLOCK_LINEARS
    for name in names:
        assert isinstance(model.get_submodule(name), Float8Linear), name
    assert type(model.output) is nn.Linear  # the head stays in high precision
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()  # checkpoints and HF export keep the plain model's names
    assert all(p.is_meta for p in after.values())
    assert uses_fp8_all_gather(model) == (recipe == "tensorwise")  # rowwise has no FP8 all-gather


def test_mxfp8_swap_and_moe_experts_stay():
    from torchao.prototype.moe_training.tensor import MXFP8TrainingWeightWrapperTensor

    with torch.device("meta"):
        model = Transformer(moe_model_cfg(expert_hidden_dim=32))
    names = convert_to_fp8(model, ParallelismConfig(fp8="mxfp8").fp8)
    assert names and all(isinstance(model.get_submodule(n).weight, MXFP8TrainingWeightWrapperTensor) for n in names)
    assert not isinstance(model.output.weight, MXFP8TrainingWeightWrapperTensor)
    kept = [p for name, p in model.named_parameters() if ".experts." in name or ".router." in name]
    assert kept and not any(isinstance(p, MXFP8TrainingWeightWrapperTensor) for p in kept)
    assert any(".shared.w1" in n for n in names)  # the shared expert is a dense feed-forward: converted
    # Widths that are not multiples of 16 stay in high precision.
    with torch.device("meta"):
        odd = Transformer(tiny_cfg(ffn_hidden_dim=88))
    names = convert_to_fp8(odd, ParallelismConfig(fp8="tensorwise").fp8)
    assert not any(n.split(".")[-1] in ("w1", "w2", "w3") for n in names)


@pytest.mark.parametrize("recipe,rel", [("tensorwise", 0.02), ("rowwise", 0.02), ("mxfp8", 0.03)])
def test_emulated_recipes_track_high_precision(recipe, rel):
    torch.manual_seed(0)
    ref = Transformer(tiny_cfg())
    ref.init_weights(seed=0)
    fp8 = copy.deepcopy(ref)
    convert_to_fp8(fp8, ParallelismConfig(fp8=recipe).fp8, emulate=True)
    tokens = torch.randint(0, 768, (4, 33))
    losses = {}
    for name, model in (("ref", ref), ("fp8", fp8)):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses[name] = []
        for _ in range(6):
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[name].append(loss.item())
    assert losses["fp8"][-1] < losses["fp8"][0] - 0.5  # it learns
    for a, b in zip(losses["fp8"], losses["ref"]):
        assert abs(a - b) <= rel * b, (losses, recipe)
    grads_differ = any(not torch.equal(p, q) for p, q in zip(fp8.parameters(), ref.parameters()))
    assert grads_differ  # the casts did round: the check above is not comparing a model with itself


@pytest.mark.slow  # ~40 s: two 6-step runs on two ranks
def test_fsdp2_fp8_all_gather_trains_like_fp32(run_dir):
    """Two gloo ranks, FSDP2, tensorwise FP8 (emulated) with the weights all-gathered in FP8 and their scales
    precomputed after each step: the trainer's path end to end; the losses track the fp32 run's."""
    from tests.helpers import make_job, read_metrics, train_and_report

    losses = {}
    for name, par in (("fp32", {}), ("fp8", {"fp8": "tensorwise", "fp8_emulate": True})):
        job = make_job(run_dir / name, steps=6, metrics={"log_every": 1}, parallelism=par,
                       checkpoint={"every": 100}, validation={"every": 100})
        job.data_dir = str(run_dir / "data")
        run_distributed(train_and_report, 2, job)
        losses[name] = read_metrics(run_dir / name, "train_loss")
    assert len(losses["fp8"]) == 6 and losses["fp8"][-1] < losses["fp8"][0]
    for a, b in zip(losses["fp8"], losses["fp32"]):
        assert abs(a - b) <= 0.02 * b, losses
    assert losses["fp8"] != losses["fp32"]


def test_cpu_torch_hides_only_torchaos_kernel_load_warnings(monkeypatch):
    import logging

    from kfm.quiet import CpuTorchaoKernels

    def record(msg):
        return logging.LogRecord("torchao", logging.WARNING, __file__, 1, msg, None, None)

    load = record("Failed to load /x/torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library")
    f = CpuTorchaoKernels()
    monkeypatch.setattr(torch.version, "cuda", None)
    assert not f.filter(load) and f.filter(record("something else went wrong"))
    monkeypatch.setattr(torch.version, "cuda", "12.8")  # a CUDA build: a kernel that fails to load is news
    assert f.filter(load)
    assert any(isinstance(x, CpuTorchaoKernels) for x in logging.getLogger("torchao").filters)  # kfm installs it
