"""The decoder-only transformer."""

from __future__ import annotations

import math

import torch
from torch import nn

from kfm.model.attention import Documents, as_documents
from kfm.model.config import ModelConfig, ModelRuntime
from kfm.model.kernels.linear_cross_entropy import linear_cross_entropy
from kfm.model.layers import KernelChoice, RMSNorm, TransformerBlock
from kfm.model.moe import MoE
from kfm.model.mtp import MultiTokenPrediction, with_gradient_of
from kfm.model.rope import Rotary, rope_tables


class Transformer(nn.Module):
    """Token embedding → ``n_layers`` blocks → RMSNorm → output projection; in training with ``model.mtp``, the
    multi-token prediction modules after the norm (``kfm.model.mtp``).

    Builds on the meta device (``with torch.device("meta")``); call ``init_weights``
    after materialising with ``to_empty``.
    """

    def __init__(self, cfg: ModelConfig, runtime: ModelRuntime | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.runtime = runtime or ModelRuntime()
        """How it runs (kernels, attention backend), chosen here for every layer."""
        self.kernels = KernelChoice(self.runtime.kernels)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(
            TransformerBlock(cfg, i, self.runtime, self.kernels, self._feed_forward(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps, self.kernels)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.mtp = (MultiTokenPrediction(cfg, self.runtime, self.kernels, self._feed_forward)
                    if cfg.mtp.depth else None)
        self.loss_core = None
        """A replacement of the output projection + cross-entropy (``fn(h, weight, targets, z_loss, chunk)``) set
        from outside: tensor parallelism splits the vocabulary over its ranks (``kfm.train.parallel``)."""
        cos, sin = rope_tables(cfg.rope_dim, cfg.max_seq_len, cfg.rope)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _feed_forward(self, layer: int) -> nn.Module | None:
        """Block ``layer``'s feed-forward layer when it is a mixture of experts (None: the block's dense one)."""
        return MoE(self.cfg, self.runtime, self.kernels, layer) if self.cfg.is_moe(layer) else None

    @torch.no_grad()
    def init_weights(self, seed: int | None = None, assign=None) -> None:
        """Normal(0, init_std) for every matrix; residual outputs scaled by 1/sqrt(2·n_layers);
        biases zero, norms one. Draws each full tensor on the CPU in a fixed order, so a seed gives
        the same weights on every device and world size. ``assign(param, full)`` stores a drawn full
        tensor into a parameter (default ``param.copy_(full)``); a trainer that sharded the model
        first passes one that keeps only the local shard."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(seed)
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        put = assign or (lambda param, full: param.copy_(full))

        def normal_(t: torch.Tensor, s: float) -> None:
            put(t, torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(s).to(t.dtype))

        def ones_(norm: nn.Module) -> None:
            put(norm.weight, torch.ones(norm.weight.shape, dtype=norm.weight.dtype))

        def block_(layer: TransformerBlock) -> None:
            attn, ffn = layer.attention, layer.feed_forward
            for w in attn.in_weights():
                normal_(w, std)
            for lin in (getattr(attn, "wq", None), getattr(attn, "wk", None), getattr(attn, "wv", None)):
                if lin is not None and lin.bias is not None:
                    put(lin.bias, torch.zeros(lin.bias.shape, dtype=lin.bias.dtype))
            for w in ffn.in_weights():
                normal_(w, std)
            normal_(attn.wo.weight, out_std)
            for w in ffn.out_weights():
                normal_(w, out_std)
            if getattr(ffn, "expert_bias", None) is not None:
                put(ffn.expert_bias, torch.zeros(ffn.expert_bias.shape, dtype=ffn.expert_bias.dtype))
            for norm in (layer.attention_norm, layer.ffn_norm, *attn.norms(), getattr(ffn, "post_norm", None)):
                if norm is not None:
                    ones_(norm)

        normal_(self.tok_embeddings.weight, std)
        for layer in self.layers:
            block_(layer)
        ones_(self.norm)
        if not self.cfg.tie_embeddings:
            normal_(self.output.weight, std)
        for module in self.mtp.layers if self.mtp is not None else ():  # drawn last: the main model's draws stay
            normal_(module.eh_proj.weight, std)
            block_(module.block)
            for norm in (module.enorm, module.hnorm, module.norm):
                ones_(norm)
        cos, sin = rope_tables(self.cfg.rope_dim, self.cfg.max_seq_len, self.cfg.rope, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def hidden_states(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                      cu_seqlens: list[torch.Tensor] | torch.Tensor | Documents | None = None) -> torch.Tensor:
        """Final normed hidden states (batch, seq, dim).

        ``position_ids`` (batch, seq): RoPE positions, e.g. restarting at every packed document
        (default ``0..seq-1``); ``cu_seqlens``: the document boundaries, so that attention stays within
        documents (default: one document per row): the flat cumulative lengths of the rows laid end to end
        (a 1-D tensor, as the loader's ``Batch.cu_seqlens_flat``), one tensor per row (a list), or a
        ``Documents``. They become a ``Documents`` once here, which every layer shares.
        """
        return self._trunk(tokens, position_ids, cu_seqlens)[0]

    def context(self, batch: int, seq: int, device, position_ids: torch.Tensor | None = None,
                cu_seqlens=None) -> tuple[Rotary, Documents | None]:
        """What every block reads besides the hidden states: the rotary tables at the tokens' positions and the
        document boundaries (see ``hidden_states``)."""
        if seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds model.max_seq_len={self.cfg.max_seq_len}")
        return Rotary(self.rope_cos, self.rope_sin, position_ids, seq), as_documents(cu_seqlens, batch, seq, device)

    def _trunk(self, tokens, position_ids, cu_seqlens) -> tuple[torch.Tensor, Rotary, Documents | None]:
        rotary, docs = self.context(tokens.shape[0], tokens.shape[1], tokens.device, position_ids, cu_seqlens)
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h, rotary, docs)
        return self.norm(h), rotary, docs

    def head_loss(self, h: torch.Tensor, targets: torch.Tensor, z_loss: float = 0.0,
                  loss_chunk: int | None = None) -> torch.Tensor:
        """The mean next-token cross-entropy (+ ``z_loss``) of the final normed hidden states ``h``, computed
        ``loss_chunk`` tokens at a time so the full logits never exist."""
        if self.loss_core is not None:
            return self.loss_core(h, self.output.weight, targets, z_loss, loss_chunk)
        return linear_cross_entropy(h, self.output.weight, targets, z_loss=z_loss, chunk=loss_chunk,
                                    use_triton=self.kernels(h))

    def forward(self, tokens: torch.Tensor, position_ids: torch.Tensor | None = None,
                cu_seqlens: list[torch.Tensor] | torch.Tensor | Documents | None = None, targets: torch.Tensor | None = None,
                z_loss: float = 0.0, loss_chunk: int | None = None) -> torch.Tensor:
        """Logits (batch, seq, vocab) for ``tokens`` (batch, seq); see ``hidden_states`` for the rest.

        With ``targets`` (batch, seq; ``-100`` ignored): the mean next-token cross-entropy (+ ``z_loss``)
        instead, computed ``loss_chunk`` tokens at a time (default: by vocabulary size) so the full
        logits never exist. In training with multi-token prediction, its loss reaches the gradient
        (``kfm.model.mtp.MultiTokenPrediction.losses``) but not the returned value, and each depth's loss is recorded
        (``self.mtp.take_stats``).
        """
        h, rotary, docs = self._trunk(tokens, position_ids, cu_seqlens)
        if targets is None:
            return self.output(h)

        def loss_fn(hidden: torch.Tensor, tgt: torch.Tensor, z: float = z_loss) -> torch.Tensor:
            return self.head_loss(hidden, tgt, z, loss_chunk)

        loss = loss_fn(h, targets)
        if self.mtp is None or not self.training or not torch.is_grad_enabled():
            return loss
        losses, term = self.mtp.losses(h, tokens, targets, rotary, docs, self.tok_embeddings, loss_fn)
        self.mtp.record(losses)
        return with_gradient_of(loss, term)
