"""SHA-256 digests of model weights that do not depend on backend, sharding, dtype of storage or file format.

A tensor's digest is the SHA-256 of its values as little-endian float32 in row-major order (bf16
values upcast exactly); the weights' digest is the SHA-256 of the sorted lines
``<name> <shape> <tensor digest>`` over the plain model's parameter names (a tied output projection
is listed under both of its names). The same weights give the same digest whether they sit in an
FSDP2 run on 64 ranks, a DeepSpeed ZeRO-3 run, a DCP checkpoint or a Hugging Face export.

Digests stream: tensors are visited one at a time (a sharded parameter is gathered alone, hashed,
and dropped), fp32 tensors are hashed in place, and others are upcast a chunk at a time, so hashing
never holds a second copy of the model. In a distributed run every rank walks the parameters in
the same order (gathers are collective) and rank ``i % world`` hashes parameter ``i``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

CHUNK = 1 << 22
"""Elements hashed per update (16 MiB of fp32)."""
_WRAPPER_PARTS = re.compile(r"(^|\.)(module|_orig_mod|_checkpoint_wrapped_module)(?=\.)")
"""Name components added by DDP, torch.compile and activation checkpointing."""


def tensor_sha256(t: torch.Tensor) -> str:
    """SHA-256 of ``t``'s values as little-endian float32, row-major."""
    flat = t.detach().reshape(-1)
    if flat.device.type != "cpu":
        flat = flat.cpu()
    h = hashlib.sha256()
    for lo in range(0, flat.numel(), CHUNK):
        # A chunk-sized copy: handing the parameter's own storage to numpy would pin it (torch then refuses
        # to resize it, which FSDP2 does to free unsharded parameters).
        part = flat[lo : lo + CHUNK].to(torch.float32, copy=True)
        h.update(part.numpy().data)
    return h.hexdigest()


@dataclass
class WeightsDigest:
    tensors: dict[str, tuple[list[int], str]]
    """Per parameter name: (shape, tensor digest)."""

    @property
    def sha256(self) -> str:
        lines = "".join(f"{name} {list(shape)} {digest}\n" for name, (shape, digest) in sorted(self.tensors.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    def summary(self) -> dict:
        """What a provenance record keeps: the digest, tensor count and element count."""
        elements = 0
        for shape, _ in self.tensors.values():
            n = 1
            for d in shape:
                n *= d
            elements += n
        return {"sha256": self.sha256, "tensors": len(self.tensors), "elements": elements}

    def to_json(self) -> dict:
        return {name: {"shape": list(shape), "sha256": d} for name, (shape, d) in sorted(self.tensors.items())}

    @classmethod
    def from_json(cls, raw: dict) -> WeightsDigest:
        return cls({name: (list(v["shape"]), v["sha256"]) for name, v in raw.items()})

    def differences(self, other: WeightsDigest) -> list[str]:
        """Names of the tensors that differ between ``self`` and ``other`` (missing on either side included)."""
        names = sorted(set(self.tensors) | set(other.tensors))
        return [n for n in names if self.tensors.get(n) != other.tensors.get(n)]


def plain_name(name: str) -> str:
    """A parameter name with the wrappers' components removed (``module.``, ``_orig_mod.``, ...)."""
    return _WRAPPER_PARTS.sub("", name).lstrip(".")


def parameter_groups(model: nn.Module) -> list[tuple[list[str], nn.Parameter]]:
    """Each distinct parameter with all of its plain names (tied weights have two), then each persistent buffer
    (state that shapes the output but takes no gradient, e.g. a MoE layer's expert bias)."""
    groups: dict[int, tuple[list[str], nn.Parameter]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), ([], p))[0].append(plain_name(name))
    for prefix, module in model.named_modules():
        for name, b in module.named_buffers(prefix=prefix, recurse=False):
            if b is not None and name.rsplit(".", 1)[-1] not in module._non_persistent_buffers_set:
                groups.setdefault(id(b), ([], b))[0].append(plain_name(name))
    return list(groups.values())


def exported_groups(model: nn.Module, drop_mtp: bool = False) -> list[tuple[list[str], nn.Parameter]]:
    """``parameter_groups``, without the multi-token prediction modules with ``drop_mtp`` (an export that leaves
    them out)."""
    groups = parameter_groups(model)
    return [(names, p) for names, p in groups if not (drop_mtp and names[0].startswith("mtp."))]


def module_tensors(model: nn.Module) -> Iterator[tuple[list[str], torch.Tensor]]:
    """(names, full tensor) per parameter of a plain, DDP or FSDP2/HSDP model; collective for sharded ones."""
    for names, p in parameter_groups(model):
        yield names, (p.full_tensor() if isinstance(p, DTensor) else p).detach()


def state_dict_tensors(sd: dict[str, torch.Tensor]) -> Iterator[tuple[list[str], torch.Tensor]]:
    for name, t in sd.items():
        yield [name], t


def digest_tensors(tensors: Iterable[tuple[list[str], torch.Tensor]], distributed: bool = False) -> WeightsDigest:
    """The digest of a stream of (names, tensor). ``distributed``: every rank walks the same stream and
    hashes its round-robin share; the result is gathered on every rank."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed and dist.is_initialized() else (0, 1)
    mine: dict[str, tuple[list[int], str]] = {}
    i = 0
    for names, t in tensors:  # (not enumerate: its cached result tuple would keep the previous tensor alive)
        if i % world == rank:
            digest = tensor_sha256(t)
            for name in names:
                mine[name] = (list(t.shape), digest)
        del t
        i += 1
    if world > 1:
        parts: list = [None] * world
        dist.all_gather_object(parts, mine)
        mine = {k: v for part in parts for k, v in part.items()}
    return WeightsDigest(mine)


def init_digest(model_on_meta: nn.Module, seed: int, dtype: torch.dtype | None = None) -> WeightsDigest:
    """The digest of ``init_weights(seed)`` of a model built on the meta device (rounded to ``dtype`` if
    given), without materialising it: each tensor is hashed as it is drawn, then dropped."""
    names = {id(p): ns for ns, p in parameter_groups(model_on_meta)}
    found: dict[str, tuple[list[int], str]] = {}

    def hash_drawn(param: torch.Tensor, full: torch.Tensor) -> None:
        digest = tensor_sha256(full.to(dtype or param.dtype))
        for name in names[id(param)]:
            found[name] = (list(full.shape), digest)

    model_on_meta.init_weights(seed=seed, assign=hash_drawn)
    missing = sorted(n for ns in names.values() for n in ns if n not in found)
    if missing:
        raise RuntimeError(f"init_weights did not draw {missing}: the initial weights cannot be recomputed")
    return WeightsDigest(found)
