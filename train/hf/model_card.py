"""The model card (README.md) written with every Hugging Face export: what the model is and how it was made."""

from __future__ import annotations

import json
from pathlib import Path

from kfm.model.accounting import num_params
from kfm.model.config import ModelConfig


def last_eval(metrics_file: Path, step: int) -> dict[str, float]:
    """The newest validation numbers logged at or before ``step`` in a run's ``metrics.jsonl``."""
    found: dict[str, float] = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            row = json.loads(line)
            if row.get("step", 0) <= step and "val_loss" in row:
                found = {k: row[k] for k in ("step", "val_loss", "val_bpb") if k in row}
    return found


def model_card(cfg: ModelConfig, arch: str, state: dict, tokenizer_dir: Path, evals: dict[str, float]) -> str:
    job = state.get("config", {})
    loader, trainer, optim = job.get("loader", job.get("data", {})), job.get("trainer", {}), job.get("optim", {})
    seq_len = loader.get("seq_len")  # (checkpoints from before the loader config held it under "data")
    consumed = state.get("data", {}).get("consumed")
    tokens = consumed * seq_len if consumed and seq_len else None
    weights = state.get("data", {}).get("weights", {})
    stats_file = tokenizer_dir / "train_stats.json"
    tok_stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "language: [ko, en]",
        "tags: [kfm, pretrained]",
        "---",
        "",
        f"# {cfg.name}: a {num_params(cfg) / 1e6:.1f}M-parameter {arch.removesuffix('ForCausalLM')} model trained with kfm",
        "",
        "Loads with `transformers` alone (no `trust_remote_code`):",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "tok = AutoTokenizer.from_pretrained(path)",
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "```",
        "",
        "## Model",
        "",
        f"- architecture: `{arch}`; {cfg.n_layers} layers, hidden size {cfg.dim}, {cfg.n_heads} attention heads "
        f"({cfg.n_kv_heads} key/value heads), feed-forward {cfg.ffn_hidden_dim}, context {cfg.max_seq_len}",
        f"- parameters: {num_params(cfg):,}; tied embeddings: {cfg.tie_embeddings}; RoPE theta {cfg.rope.theta:g} "
        f"({cfg.rope.scaling})",
        *([f"- mixture of experts: {m.n_experts} routed experts of {m.expert_hidden_dim} (top-{m.top_k}, "
           f"{m.score_func}) + {m.n_shared_experts} shared from layer {m.first_k_dense}; "
           f"{num_params(cfg, active=True):,} parameters active per token"] if (m := cfg.moe).n_experts else []),
        *([f"- latent attention: key/value latent {a.kv_lora_rank}, query latent {a.q_lora_rank or 'none'}, q/k heads "
           f"of {cfg.head_size - a.qk_rope_head_dim} + {a.qk_rope_head_dim} rotated, value heads of {a.v_head_dim}"]
          if (a := cfg.mla).enabled else []),
        *([f"- multi-token prediction: {cfg.mtp.depth} module(s) as decoder layers {cfg.n_layers} and up (DeepSeek-V3's "
           "layout, for speculative decoding; `transformers` ignores them when loading)"]
          if cfg.mtp.depth and arch == "DeepseekV3ForCausalLM" else []),
        "",
        "## Training",
        "",
        f"- steps: {state.get('step')}; tokens seen: {tokens:,}" if tokens else f"- steps: {state.get('step')}",
        f"- sequence length {seq_len}; data mixture {weights}" if weights else f"- sequence length {seq_len}",
        f"- optimizer AdamW, peak lr {optim.get('lr')}, schedule {optim.get('schedule')}, warmup "
        f"{optim.get('warmup_steps')} steps; backend {state.get('backend')} on {state.get('world')} ranks",
        f"- started from: {trainer.get('init_from') or 'random initialisation (seed ' + str(trainer.get('seed')) + ')'}"
        + (f", depth up-scaled with layers {trainer['init_layers']}" if trainer.get("init_layers") else ""),
        "",
        "## Tokenizer",
        "",
        f"- SentencePiece, {cfg.vocab_size} pieces"
        + (f"; trained on {sum(s.get('sentences_sampled', 0) for s in tok_stats.get('sources', {}).values()):,} "
           "sampled sentences" if tok_stats else ""),
        "",
        "## Evaluation",
        "",
    ]
    if evals:
        lines.append(f"- held-out validation at step {evals['step']}: loss {evals['val_loss']:.4f} nats/token"
                     + (f", {evals['val_bpb']:.4f} bits/byte" if "val_bpb" in evals else "")
                     + " (each source's held-out text, weighted by its held-out tokens)")
    else:
        lines.append("- no validation numbers were logged for this checkpoint")
    return "\n".join(lines) + "\n"
