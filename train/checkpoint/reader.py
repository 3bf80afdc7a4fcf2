"""Reading a checkpoint offline: its weights into a plain model, in one process, whatever backend and world
size wrote it (DCP for FSDP2/DDP, ZeRO files for DeepSpeed). Export, consolidation and verification use this;
the engines only write and resume their own format."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from kfm.train.checkpoint.layout import check_compatible, damaged, read_state


def dcp_saved_shapes(path: Path) -> dict[str, tuple]:
    """Global shapes of the model weights in a DCP checkpoint (its metadata); unreadable → ValueError."""
    try:
        saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as err:  # noqa: BLE001 - any failure to read means the same thing to the user
        raise damaged(path, err) from err
    return {k[len("model."):]: tuple(v.size) for k, v in saved.items() if k.startswith("model.") and hasattr(v, "size")}


def dcp_optimizer_flattened(path: Path) -> bool:
    """Whether a DCP checkpoint keeps its optimizer state flattened (``optim.param_groups.<name>.<key>`` per
    parameter, written since pipeline parallelism: each rank's groups name only its stages' parameters) or as
    one ``optim.param_groups`` list (earlier checkpoints)."""
    saved = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    return "optim.param_groups" not in saved


def load_deepspeed_weights(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of a DeepSpeed checkpoint of any ZeRO stage, in one process (DeepSpeed's zero_to_fp32)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    try:
        sd = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except Exception as err:  # noqa: BLE001
        raise damaged(path, err) from err
    return {k: v.float() for k, v in sd.items()}


def load_model_weights(path: str | Path, model: nn.Module) -> dict:
    """Load only the weights of a checkpoint of any backend and world size into a plain model, in one
    process; returns the trainer state."""
    path = Path(path)
    state = read_state(path)
    if state.get("backend") == "deepspeed":
        sd = load_deepspeed_weights(path)
        check_compatible(path, {k: tuple(v.shape) for k, v in sd.items()}, {k: tuple(v.shape) for k, v in
                                                                              model.state_dict().items()})
        model.load_state_dict(sd)
        return state
    sd = model.state_dict()
    check_compatible(path, dcp_saved_shapes(path), {k: tuple(v.shape) for k, v in sd.items()})
    try:
        dcp.load({"model": sd}, checkpoint_id=str(path))
    except (Exception, CheckpointException) as err:  # noqa: BLE001 - damage surfaces as many exception types
        raise damaged(path, err) from err
    model.load_state_dict(sd)
    return state
