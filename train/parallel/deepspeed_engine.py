"""DeepSpeed ZeRO stages 1, 2 and 3 behind the engine interface of ``kfm.train.parallel.engine``.

DeepSpeed's JSON config is generated here from the Hydra config (``deepspeed_config``): batch sizes,
accumulation, clipping, bf16 and the ZeRO stage all come from ``trainer.*`` / ``optim.*``, so there is
no second file to keep in step. The optimizer is kfm's AdamW with its decay/no-decay groups, and the
learning rate is set by the loop every step (DeepSpeed's own scheduler is not used).

Non-finite gradients: DeepSpeed's ZeRO optimizers skip a step whose gradient norm is not finite (fp32
always; bf16 with ``check_grad_overflow``, which we switch on). A step the loop discards (a non-finite
or spiking loss) is turned into exactly that case by poisoning the last micro batch's loss, so both
backends skip and count steps the same way.

Checkpoints use DeepSpeed's ``save_checkpoint``/``load_checkpoint`` inside kfm's directory layout.
They load only on the world size that wrote them (ZeRO partitions are per rank); a resume on another
world size is refused with the way out. ZeRO-3 here materialises the whole model on every rank
before partitioning it; for models that do not fit one device, use FSDP2 (built on the meta device).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from kfm.model import ModelConfig, Transformer
from kfm.model.moe import moe_layers
from kfm.train.checkpoint.layout import check_compatible, damaged, model_shapes, read_state
from kfm.train.config import PretrainJob
from kfm.train.optim import build_optimizer
from kfm.train.parallel.distributed import DistInfo
from kfm.train.parallel.parallelize import parallelize
from kfm.train.provenance.digests import parameter_groups

log = logging.getLogger("kfm.train")


def deepspeed_config(job: PretrainJob, world: int, accum: int) -> dict:
    """DeepSpeed's config, derived from the job (the only source of truth)."""
    tc = job.trainer
    return {
        "train_micro_batch_size_per_gpu": tc.local_batch_size,
        "gradient_accumulation_steps": accum,
        "train_batch_size": tc.local_batch_size * accum * world,
        "gradient_clipping": job.optim.grad_clip,
        "bf16": {"enabled": tc.parallelism.param_dtype == "bf16", "check_grad_overflow": True},
        "zero_optimization": {"stage": tc.parallelism.zero_stage, "contiguous_gradients": True, "overlap_comm": False},
        "steps_per_print": 2**31 - 1,  # the loop logs
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    pipeline = None
    """DeepSpeed stays data-parallel: no pipeline stages (``kfm.train.parallel.layout`` refuses ``pp`` with it)."""

    def __init__(self, job: PretrainJob, info: DistInfo, accum: int, init_state: dict | None = None) -> None:
        import deepspeed

        # DeepSpeed calls collectives torch has renamed; nothing a user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"`torch.distributed.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated")
        self.job, self.info = job, info
        self.init_cast = "bfloat16" if job.trainer.parallelism.param_dtype == "bf16" else None
        """DeepSpeed bf16 rounds the weights to bf16 before its optimizer takes fp32 master copies of them."""
        model = Transformer(job.model, job.model_runtime)
        model.init_weights(seed=job.trainer.seed)
        if init_state is not None:
            model.load_state_dict(init_state)
        model = parallelize(model.to(info.device), job.trainer.parallelism, info)  # checkpointing and compile only
        self.optimizer = build_optimizer(model, job.optim)
        self.model, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer,
                                                   config=deepspeed_config(job, info.world, accum))
        for layer in moe_layers(self.model):  # bf16 casts buffers too: the expert bias moves in steps of 1e-3
            if layer.expert_bias is not None:
                layer.expert_bias = layer.expert_bias.float()
        log.info("DeepSpeed ZeRO stage %d on %d ranks", job.trainer.parallelism.zero_stage, info.world)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:  # the groups DeepSpeed's ZeRO optimizer steps with
            group["lr"] = lr

    def backward(self, loss: torch.Tensor, last: bool, discard: bool) -> None:
        # DeepSpeed divides by the accumulation steps itself, and steps only at the accumulation boundary.
        self.model.backward(loss * float("nan") if discard else loss)
        self.model.step()

    def step(self, discard: bool) -> tuple[float, bool]:
        norm = self.model.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        applied = bool(self.model.was_step_applied())
        if discard and applied:
            raise RuntimeError("DeepSpeed applied a step whose gradients were poisoned to be skipped; "
                               "check that its non-finite gradient check is on (bf16.check_grad_overflow)")
        return norm, applied

    def save(self, tmp: Path, on_done=None) -> None:
        self.model.save_checkpoint(str(tmp.parent), tag=tmp.name, save_latest=False)
        if on_done:
            on_done()

    def wait(self) -> None:
        """Saves are synchronous."""

    def load(self, path: Path) -> None:
        state = read_state(path)
        if state.get("backend") != "deepspeed":
            raise ValueError(f"checkpoint {path} was written by the {state.get('backend')} backend; DeepSpeed "
                             "resumes only its own checkpoints: resume with that backend, or export/consolidate "
                             "it (`python -m kfm.train.cli.consolidate`) and start a new run from the weights")
        if state["world"] != self.info.world:
            raise ValueError(f"DeepSpeed checkpoint {path} was written by {state['world']} ranks and this run has "
                             f"{self.info.world}: ZeRO partitions load only on the world size that wrote them. "
                             f"Resume on {state['world']} ranks, or use trainer.parallelism.backend=fsdp2, whose checkpoints "
                             "reshard to any world size")
        check_compatible(path, model_shapes(ModelConfig.from_dict(state["config"]["model"])),
                         model_shapes(self.job.model))
        try:
            loaded, _ = self.model.load_checkpoint(str(path.parent), tag=path.name, load_optimizer_states=True,
                                                   load_lr_scheduler_states=False, load_module_strict=True)
        except Exception as err:  # noqa: BLE001 - damage surfaces as many exception types
            raise damaged(path, err) from err
        if loaded is None:
            raise damaged(path, FileNotFoundError("DeepSpeed found no model states"))

    def weight_tensors(self):
        """(names, full fp32 master weight) per parameter, one at a time (collective under ZeRO-3)."""
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        for names, p in parameter_groups(self.model.module):
            full = safe_get_full_fp32_param(p)  # the optimizer's fp32 copy where there is one
            if full is None:
                with deepspeed.zero.GatheredParameters([p], enabled=hasattr(p, "ds_id")):
                    full = p.detach().clone()
            yield names, full

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight, gathered, on CPU, under the plain model's names (collective)."""
        import deepspeed

        module = self.model.module
        stage3 = self.job.trainer.parallelism.zero_stage == 3
        with deepspeed.zero.GatheredParameters(list(module.parameters()), enabled=stage3):
            return {k: v.detach().float().cpu().clone() for k, v in module.state_dict().items()}
