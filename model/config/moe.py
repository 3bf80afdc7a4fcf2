"""Mixture-of-experts settings."""

from __future__ import annotations

from dataclasses import dataclass

from kfm.model.config.choices import RouterScore, choice


@dataclass
class MoEConfig:
    """Mixture of experts in the feed-forward layers (``n_experts`` 0: a dense model). Routing follows DeepSeek-V3
    (arXiv 2412.19437, section 2.1.2) and Qwen3-MoE: each token goes to ``top_k`` of ``n_experts`` routed SwiGLU
    experts, weighted by its router scores, plus ``n_shared_experts`` that see every token. Dropless unless
    ``capacity_factor`` is set. The coefficients below only shape training; they are not exported."""

    n_experts: int = 0
    """Routed experts per MoE layer; 0: dense feed-forward layers everywhere."""
    top_k: int = 2
    """Experts each token is routed to."""
    expert_hidden_dim: int = 0
    """Hidden width of one routed expert (``moe_intermediate_size``)."""
    n_shared_experts: int = 0
    """Shared experts seen by every token, as one SwiGLU of width ``n_shared_experts * expert_hidden_dim``."""
    first_k_dense: int = 0
    """The first layers keep a dense feed-forward layer of ``model.ffn_hidden_dim`` (DeepSeek-V3: 3, K-EXAONE: 1)."""
    score_func: RouterScore = RouterScore.softmax
    """``softmax`` over all experts (Qwen3-MoE) or ``sigmoid`` per expert (DeepSeek-V3, K-EXAONE)."""
    norm_topk_prob: bool = False
    """Divide the chosen experts' scores by their sum."""
    routed_scaling_factor: float = 1.0
    """Multiplies the routed experts' weights (DeepSeek-V3: 2.5)."""
    n_group: int = 1
    """Expert groups for group-limited routing: a token picks ``topk_group`` groups (by the sum of each group's two
    best scores), then its experts within them. 1: no limit."""
    topk_group: int = 1
    """Groups each token may use."""
    expert_bias: bool = False
    """Auxiliary-loss-free balancing: a per-expert bias added to the scores for choosing experts only (not to the
    weights), moved after every step towards equal load (``bias_update_rate``); saved with the weights."""
    bias_update_rate: float = 0.001
    """How far the bias moves per step: ``bias += rate * sign(mean load - load)`` (DeepSeek-V3's gamma)."""
    capacity_factor: float = 0.0
    """0: dropless. Else, in training, each expert takes at most ``ceil(factor * tokens * top_k / n_experts)`` tokens
    of a micro batch, in token order; the rest are dropped (counted in the metrics). Evaluation, generation and
    exports are dropless (as the Hugging Face classes are)."""
    seq_aux_loss_coef: float = 0.0
    """Sequence-wise balance loss (DeepSeek-V3 eq. 17-20), per row, averaged over the rows."""
    batch_aux_loss_coef: float = 0.0
    """Global-batch balance loss (Qwen, arXiv 2501.11873): Switch Transformer's ``E * sum f_i P_i`` with the choice
    frequencies ``f`` of the micro batch summed over all data-parallel ranks (the trainer gives the layers the
    reduction), the scores ``P`` of this rank's tokens."""
    z_loss_coef: float = 0.0
    """Router z-loss (ST-MoE): the mean squared logsumexp of the router logits."""
    post_norm: bool = False
    """RMSNorm over each MoE layer's output (routed plus shared experts) before the residual add: SK Telecom's one
    change to DeepSeek-V3 in A.X K1 (``transformers``' ``AXK1MoE.post_mlp_layernorm``); dense layers have none."""

    def __post_init__(self) -> None:
        self.score_func = choice(RouterScore, self.score_func, "model.moe.score_func")
        if self.n_experts < 0:
            raise ValueError(f"model.moe.n_experts must be >= 0, got {self.n_experts}")
        if not self.n_experts:
            return
        if self.expert_hidden_dim <= 0:
            raise ValueError("model.moe.n_experts is set: set model.moe.expert_hidden_dim (each expert's hidden width)")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"model.moe.top_k={self.top_k} must be between 1 and model.moe.n_experts="
                             f"{self.n_experts}: lower top_k or add experts")
        if self.n_group < 1 or self.n_experts % self.n_group:
            raise ValueError(f"model.moe.n_group={self.n_group} must divide model.moe.n_experts={self.n_experts}: "
                             "choose a divisor of the expert count (1: no group-limited routing)")
        if not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"model.moe.topk_group={self.topk_group} must be between 1 and model.moe.n_group="
                             f"{self.n_group}: lower topk_group")
        per_group = self.n_experts // self.n_group
        if self.n_group > 1 and per_group < 2:
            raise ValueError(f"model.moe.n_group={self.n_group} leaves {per_group} expert per group; a group is "
                             "scored by its two best experts: use at most n_experts / 2 groups")
        if self.top_k > self.topk_group * per_group:
            raise ValueError(f"model.moe.top_k={self.top_k} exceeds the {self.topk_group * per_group} experts in "
                             f"model.moe.topk_group={self.topk_group} groups: raise topk_group or lower top_k")
        for key in ("n_shared_experts", "first_k_dense"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.moe.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("capacity_factor", "seq_aux_loss_coef", "batch_aux_loss_coef", "z_loss_coef", "bias_update_rate"):
            if getattr(self, key) < 0:
                raise ValueError(f"model.moe.{key} must be >= 0, got {getattr(self, key)}")
        if self.routed_scaling_factor <= 0:
            raise ValueError(f"model.moe.routed_scaling_factor must be positive, got {self.routed_scaling_factor}")

    @property
    def aux_losses(self) -> bool:
        return bool(self.seq_aux_loss_coef or self.batch_aux_loss_coef or self.z_loss_coef)

