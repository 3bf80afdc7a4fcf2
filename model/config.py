"""Model configuration, validated on construction: ``ModelConfig`` is what the model *is* (what export, import,
FLOP and parameter accounting read), ``ModelRuntime`` how it *runs* (which kernels and attention backend); the
string choices are enums."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Optional


def choice(enum: type[StrEnum], value, key: str):
    """``value`` as a member of ``enum`` (configs built in Python or read from JSON hold plain strings); a value
    outside it is a ``ValueError`` naming ``key`` and the allowed values. (Hydra refuses such a value earlier, when
    the config is composed: OmegaConf matches member names, which are the values here.)"""
    try:
        return enum(value)
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise ValueError(f"{key} must be one of {allowed}, got {value!r}") from None


class RopeScaling(StrEnum):
    none = "none"
    linear = "linear"
    llama3 = "llama3"
    yarn = "yarn"


class NormPlacement(StrEnum):
    pre = "pre"
    post = "post"


class Kernels(StrEnum):
    auto = "auto"
    triton = "triton"
    torch = "torch"


class RouterScore(StrEnum):
    softmax = "softmax"
    sigmoid = "sigmoid"


class ExpertGemm(StrEnum):
    auto = "auto"
    grouped_mm = "grouped_mm"
    triton = "triton"
    loop = "loop"


class AttentionBackend(StrEnum):
    auto = "auto"
    flash_attn = "flash_attn"
    triton = "triton"
    flex = "flex"
    sdpa = "sdpa"


@dataclass
class RopeConfig:
    """Rotary position embedding: base frequency and optional long-context scaling."""

    theta: float = 10000.0
    """Base frequency."""
    scaling: RopeScaling = RopeScaling.none
    """``none``, ``linear`` (position interpolation), ``llama3`` (Llama 3.1's frequency-band rule) or ``yarn``."""
    factor: float = 1.0
    """Context extension factor (scaled types)."""
    original_max_seq_len: int = 8192
    """Context length the model was pretrained at, before extension (``llama3``, ``yarn``)."""
    low_freq_factor: float = 1.0
    """``llama3``: wavelengths above ``original_max_seq_len / low_freq_factor`` are divided by ``factor``."""
    high_freq_factor: float = 4.0
    """``llama3``: wavelengths below ``original_max_seq_len / high_freq_factor`` are kept."""
    beta_fast: float = 32.0
    """``yarn``: rotations from which dimensions are kept (extrapolated)."""
    beta_slow: float = 1.0
    """``yarn``: rotations below which dimensions are interpolated."""

    def __post_init__(self) -> None:
        self.scaling = choice(RopeScaling, self.scaling, "model.rope.scaling")
        if self.theta <= 0:
            raise ValueError(f"model.rope.theta must be positive, got {self.theta}")
        if self.scaling != "none" and self.factor < 1.0:
            raise ValueError(f"model.rope.factor must be >= 1 with scaling '{self.scaling}', got {self.factor}")
        if self.scaling == "llama3" and not self.high_freq_factor > self.low_freq_factor > 0:
            raise ValueError("model.rope: llama3 scaling needs high_freq_factor > low_freq_factor > 0")


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


@dataclass
class ModelConfig:
    """Shape and features of a decoder-only transformer (RMSNorm, RoPE, GQA, SwiGLU and options)."""

    name: str = "debug"
    """Preset name, for logs and exported configs."""
    vocab_size: int = 8192
    """Number of token embeddings; must equal the tokenizer's vocabulary size."""
    dim: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 8
    """Query heads per attention layer."""
    n_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide ``n_heads``."""
    head_dim: Optional[int] = None
    """Width of one head; unset: ``dim / n_heads`` (Qwen3 sets it apart from ``dim``)."""
    ffn_hidden_dim: int = 704
    """Hidden width of the SwiGLU feed-forward layer."""
    max_seq_len: int = 512
    """Longest sequence the RoPE tables are built for."""
    rope: RopeConfig = field(default_factory=RopeConfig)
    """Rotary embedding base and long-context scaling."""
    norm_eps: float = 1e-5
    """Epsilon inside RMSNorm."""
    norm_placement: NormPlacement = NormPlacement.pre
    """``pre``: x + f(norm(x)) (Llama, Qwen); ``post``: x + norm(f(x)) (EXAONE 4's reordered norms)."""
    qk_norm: bool = False
    """RMSNorm over each query and key head before RoPE (Qwen3, EXAONE 4)."""
    qkv_bias: bool = False
    """Bias on the query, key and value projections (Qwen2/2.5)."""
    sliding_window: int = 0
    """Tokens a local (``L``) layer sees, itself included; 0: no local layers."""
    layer_pattern: str = "G"
    """Attention kind per layer, repeated over the depth: ``G`` global (full causal), ``L`` local
    (sliding window). EXAONE 4.0: ``LLLG``."""
    rope_on_global_layers: bool = True
    """Global layers apply RoPE; EXAONE 4.0's hybrid models leave them without position encoding."""
    tie_embeddings: bool = False
    """Share the input embedding with the output projection."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init (output layers are scaled by depth)."""
    moe: MoEConfig = field(default_factory=MoEConfig)
    """Mixture-of-experts feed-forward layers (``moe.n_experts`` 0: dense)."""

    def __post_init__(self) -> None:
        if isinstance(self.rope, dict):
            self.rope = RopeConfig(**self.rope)
        if isinstance(self.moe, dict):
            self.moe = MoEConfig(**self.moe)
        if self.moe.n_experts and self.moe.first_k_dense >= self.n_layers:
            raise ValueError(f"model.moe.first_k_dense={self.moe.first_k_dense} leaves no MoE layer in "
                             f"model.n_layers={self.n_layers}: lower it, or set model.moe.n_experts=0 (dense)")
        positive = ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden_dim", "max_seq_len")
        for key in positive:
            if getattr(self, key) <= 0:
                raise ValueError(f"model.{key} must be positive, got {getattr(self, key)}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ValueError(f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads}), "
                             "or set model.head_dim")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads ({self.n_kv_heads})"
            )
        if self.head_dim is not None and self.head_dim <= 0:
            raise ValueError(f"model.head_dim must be positive, got {self.head_dim}")
        if self.head_size % 2:
            raise ValueError(f"head dim {self.head_size} must be even for RoPE")
        if self.norm_eps <= 0 or self.init_std <= 0:
            raise ValueError("model.norm_eps and model.init_std must be positive")
        self.norm_placement = choice(NormPlacement, self.norm_placement, "model.norm_placement")
        if not self.layer_pattern or set(self.layer_pattern) - {"G", "L"}:
            raise ValueError(f"model.layer_pattern must be letters G (global) and L (local), got {self.layer_pattern!r}")
        if len(self.layer_pattern) > self.n_layers:
            raise ValueError(f"model.layer_pattern {self.layer_pattern!r} is longer than model.n_layers "
                             f"({self.n_layers})")
        if "L" in self.layer_pattern and self.sliding_window <= 0:
            raise ValueError(f"model.layer_pattern {self.layer_pattern!r} has local layers: set model.sliding_window")
        if self.sliding_window < 0:
            raise ValueError(f"model.sliding_window must be >= 0, got {self.sliding_window}")

    @property
    def head_size(self) -> int:
        """Width of one attention head."""
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` is a sliding-window layer."""
        return self.layer_pattern[layer % len(self.layer_pattern)] == "L"

    def is_moe(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward layer is a mixture of experts."""
        return bool(self.moe.n_experts) and layer >= self.moe.first_k_dense

    def uses_rope(self, layer: int) -> bool:
        return self.is_local(layer) or self.rope_on_global_layers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        """From ``to_dict``'s output or a preset YAML (``__post_init__`` turns a ``rope`` dict into a RopeConfig).
        Checkpoints written before the runtime split also hold ``kernels`` and ``attention_backend``: how that
        run ran, not what the model is, so they are left out."""
        return cls(**{k: v for k, v in raw.items() if k not in _FORMER_RUNTIME_KEYS})


_FORMER_RUNTIME_KEYS = ("kernels", "attention_backend")
"""Keys of ``ModelConfig`` before ``ModelRuntime`` existed (older checkpoints' ``config.model``)."""


@dataclass
class ModelRuntime:
    """How the model runs, not what it is (``model_runtime.*``): the implementations of its operations. They do
    not change the numbers beyond rounding, are not exported, and are chosen once, when the model is built
    (``auto`` once per device type, on its first forward there)."""

    kernels: Kernels = Kernels.auto
    """RMSNorm (with the residual add), RoPE and SwiGLU: ``triton`` (kfm's kernels), ``torch`` (plain PyTorch) or
    ``auto`` (Triton on CUDA, PyTorch elsewhere; on CPU ``triton`` needs ``TRITON_INTERPRET=1``)."""
    attention_backend: AttentionBackend = AttentionBackend.auto
    """``auto`` (by the features in use: SDPA for one causal document per row; with packed documents or a
    window flash-attn when installed and it can run the inputs, else kfm's Triton kernel on a GPU, else SDPA;
    ``kfm.model.attention`` says why), ``flash_attn``, ``triton``, ``flex`` (PyTorch FlexAttention) or ``sdpa``
    (PyTorch, explicit mask for documents/windows)."""

    expert_gemm: ExpertGemm = ExpertGemm.auto
    """The routed experts' matrix products: ``grouped_mm`` (``torch._grouped_mm``, one call for all experts, no host
    synchronisation), ``triton`` (kfm's grouped GEMM), ``loop`` (one matmul per expert: the reference) or ``auto``
    (``triton`` where the kernels run, else ``grouped_mm`` where the installed torch has it, else ``loop``)."""

    def __post_init__(self) -> None:
        self.kernels = choice(Kernels, self.kernels, "model_runtime.kernels")
        self.expert_gemm = choice(ExpertGemm, self.expert_gemm, "model_runtime.expert_gemm")
        self.attention_backend = choice(AttentionBackend, self.attention_backend, "model_runtime.attention_backend")
