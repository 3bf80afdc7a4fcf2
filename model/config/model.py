"""``ModelConfig`` (what the model is) and ``ModelRuntime`` (how it runs)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

from kfm.model.config.attention import LatentAttentionConfig
from kfm.model.config.choices import AttentionBackend, ExpertGemm, Kernels, NormPlacement, choice
from kfm.model.config.moe import MoEConfig
from kfm.model.config.mtp import MTPConfig
from kfm.model.config.rope import RopeConfig


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
    """Key/value heads (grouped-query attention); must divide ``n_heads``. Latent attention: equal to ``n_heads``
    (every head decompresses its own key and value)."""
    head_dim: Optional[int] = None
    """Width of one head; unset: ``dim / n_heads`` (Qwen3 sets it apart from ``dim``). Latent attention: the q/k
    head width, rotated dimensions included (DeepSeek-V3: 192 = 128 + 64); required there."""
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
    mla: LatentAttentionConfig = field(default_factory=LatentAttentionConfig)
    """Multi-head latent attention in every layer (``mla.kv_lora_rank`` 0: grouped-query attention)."""
    mtp: MTPConfig = field(default_factory=MTPConfig)
    """Multi-token prediction modules trained after the last layer (``mtp.depth`` 0: none)."""

    def __post_init__(self) -> None:
        for key, kind in (("rope", RopeConfig), ("moe", MoEConfig), ("mla", LatentAttentionConfig),
                          ("mtp", MTPConfig)):
            if isinstance(getattr(self, key), dict):
                setattr(self, key, kind(**getattr(self, key)))
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
        if not self.mla.enabled and self.head_size % 2:
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
        if self.mla.enabled:
            self._check_latent_attention()

    def _check_latent_attention(self) -> None:
        m = self.mla
        if self.head_dim is None:
            raise ValueError("model.mla is set: set model.head_dim, the q/k head width with its rotated dimensions "
                             "(DeepSeek-V3: 192 = 128 + model.mla.qk_rope_head_dim 64)")
        if m.qk_rope_head_dim > self.head_dim:
            raise ValueError(f"model.mla.qk_rope_head_dim={m.qk_rope_head_dim} is larger than the q/k head width "
                             f"model.head_dim={self.head_dim}: lower it or raise model.head_dim")
        if m.kv_lora_rank > self.dim:
            raise ValueError(f"model.mla.kv_lora_rank={m.kv_lora_rank} is larger than model.dim={self.dim}: the "
                             "latent would not compress the keys and values; lower it (DeepSeek-V3: 512 of 7168)")
        if m.q_lora_rank > self.dim:
            raise ValueError(f"model.mla.q_lora_rank={m.q_lora_rank} is larger than model.dim={self.dim}: lower it, "
                             "or 0 for a full-rank query projection")
        if self.n_kv_heads != self.n_heads:
            raise ValueError(f"model.mla: every head decompresses its own key and value: set model.n_kv_heads = "
                             f"model.n_heads ({self.n_heads}), got {self.n_kv_heads}")
        for key in ("qkv_bias", "qk_norm"):
            if getattr(self, key):
                raise ValueError(f"model.{key} has no meaning with latent attention (model.mla): set it false")

    @property
    def head_size(self) -> int:
        """Width of one attention head (latent attention: of one q/k head)."""
        return self.head_dim if self.head_dim is not None else self.dim // self.n_heads

    @property
    def rope_dim(self) -> int:
        """Rotated dimensions of a q/k head: all of them, or latent attention's decoupled ones."""
        return self.mla.qk_rope_head_dim if self.mla.enabled else self.head_size

    @property
    def v_head_size(self) -> int:
        """Width of one value head."""
        return self.mla.v_head_dim if self.mla.enabled else self.head_size

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` is a sliding-window layer. Blocks past the last layer (multi-token prediction,
        ``n_layers + k``) are global, as Hugging Face builds them."""
        return layer < self.n_layers and self.layer_pattern[layer % len(self.layer_pattern)] == "L"

    def is_moe(self, layer: int) -> bool:
        """Whether ``layer``'s feed-forward layer is a mixture of experts (multi-token prediction blocks, past the
        last layer, are in a MoE model)."""
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

