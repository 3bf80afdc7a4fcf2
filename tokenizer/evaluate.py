"""Measure a tokenizer against reference tokenizers on held-out text.

    python -m kfm.tokenizer.evaluate [run_dir=runs/demo] \
        'references=[~/.cache/kfm/reference_tokenizers/o200k_base.tiktoken, .../llama3/tokenizer.json]'

For each text set (by default the held-out documents of the sample corpus, per language) and
each tokenizer: tokens per 1,000 Hangul syllables, characters and UTF-8 bytes per token,
round-trip exactness per line, and single-core encode MB/s (for kfm: the data pipeline's encoder,
``tokenizer.fast_encode.batch_encoder``). Writes ``eval.json``, ``eval.md``
(a table) and ``eval.png`` (a bar chart) to ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.tokenizer.config import TextSource
from kfm.tokenizer.encoders import Encoder, load_encoder
from kfm.tokenizer.fast_encode import batch_encoder
from kfm.tokenizer.sampling import CorpusError, is_heldout, iter_documents

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    """A text set to measure on."""

    name: str = "???"
    path: str = "???"
    """``.jsonl`` (documents in ``text_field``) or ``.txt`` (one document per line)."""
    text_field: str = "text"
    heldout_only: bool = True
    """Keep only the documents the tokenizer was not trained on (its held-out split)."""


@dataclass
class EvaluateJob:
    """``python -m kfm.tokenizer.evaluate``."""

    run_dir: str = "runs/demo"
    tokenizer_model: str = "${run_dir}/tokenizer/tokenizer.model"
    """kfm's tokenizer (its ``train_stats.json`` beside it gives the held-out fraction)."""
    references: list[str] = field(default_factory=list)
    """Reference tokenizer files: ``.tiktoken``, ``tokenizer.json`` or ``.model``."""
    sets: list[EvalSet] = field(default_factory=list)
    max_docs: int = 5000
    """Documents per set at most (the first ones in file order)."""
    out_dir: str = "${run_dir}/tokenizer/eval"


def count_hangul(text: str) -> int:
    return sum(0xAC00 <= ord(c) <= 0xD7A3 for c in text)


def load_set(s: EvalSet, heldout_fraction: float, max_docs: int) -> list[str]:
    docs = []
    for doc in iter_documents(TextSource(path=s.path, text_field=s.text_field)):
        if not s.heldout_only or is_heldout(doc, heldout_fraction):
            docs.append(doc)
            if len(docs) >= max_docs:
                break
    if not docs:
        raise CorpusError(f"eval set {s.name!r} ({s.path}) has no {'held-out ' if s.heldout_only else ''}documents")
    return docs


def measure(enc: Encoder, docs: list[str]) -> dict:
    """Compression, round trip and single-core speed of one tokenizer on one set of documents."""
    t0 = time.perf_counter()
    n_tokens = sum(len(enc.encode(d)) for d in docs)
    seconds = time.perf_counter() - t0
    lines = [ln for d in docs for ln in d.split("\n") if ln]
    exact = sum(enc.decode(enc.encode(ln)) == ln for ln in lines)
    n_chars = sum(map(len, docs))
    n_bytes = sum(len(d.encode()) for d in docs)
    n_hangul = sum(map(count_hangul, docs))
    return {
        "tokens": n_tokens,
        "tokens_per_1k_hangul": round(1000 * n_tokens / n_hangul, 2) if n_hangul else None,
        "tokens_per_1k_chars": round(1000 * n_tokens / n_chars, 2),
        "chars_per_token": round(n_chars / n_tokens, 3),
        "bytes_per_token": round(n_bytes / n_tokens, 3),
        "roundtrip_exact": exact / len(lines),
        "encode_mb_per_s": round(n_bytes / seconds / 1e6, 3),
        "docs": len(docs), "lines": len(lines), "hangul": n_hangul, "bytes": n_bytes,
    }


def ids_identical(a: Encoder, b: Encoder, docs: list[str]) -> float:
    """Share of lines that two encoders turn into the same ids (kfm's SentencePiece vs its HF twin)."""
    lines = [ln for d in docs for ln in d.split("\n") if ln]
    return sum(a.encode(ln) == b.encode(ln) for ln in lines) / len(lines)


def to_markdown(results: dict[str, dict[str, dict]], baseline: str) -> str:
    """One table per set; ``vs <baseline>`` is the token count relative to the baseline tokenizer."""
    out = []
    for set_name, per_tok in results.items():
        base = per_tok.get(baseline, {}).get("tokens")
        out += [f"### {set_name}", "",
                f"| tokenizer | vocab | tokens | tokens/1k Hangul | chars/token | bytes/token | vs {baseline} "
                "| round trip | encode MB/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, m in per_tok.items():
            rel = f"{m['tokens'] / base:.3f}" if base else "-"
            hangul = f"{m['tokens_per_1k_hangul']:.1f}" if m["tokens_per_1k_hangul"] is not None else "-"
            out.append(f"| {name} | {m['vocab_size']:,} | {m['tokens']:,} | {hangul} | {m['chars_per_token']:.2f} "
                       f"| {m['bytes_per_token']:.2f} | {rel} | {100 * m['roundtrip_exact']:.2f}% "
                       f"| {m['encode_mb_per_s']:.2f} |")
        if "hf_ids_identical" in per_tok.get("kfm", {}):
            out.append(f"\nkfm's Hugging Face tokenizer gives SentencePiece's ids on "
                       f"{100 * per_tok['kfm']['hf_ids_identical']:.2f}% of the lines.")
        out.append("")
    return "\n".join(out)


def plot(results: dict[str, dict[str, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.5 * len(results), 4), squeeze=False)
    for ax, (set_name, per_tok) in zip(axes[0], results.items()):
        names = list(per_tok)
        ko = all(m["tokens_per_1k_hangul"] is not None for m in per_tok.values()) and set_name.startswith("ko")
        key = "tokens_per_1k_hangul" if ko else "tokens_per_1k_chars"
        ax.bar(range(len(names)), [per_tok[n][key] for n in names], color=["C3"] + ["C0"] * (len(names) - 1))
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(f"{set_name}: {key.replace('_', ' ')} (lower is better)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def evaluate(job: EvaluateJob) -> dict:
    kfm_sp = load_encoder(job.tokenizer_model)
    # Measured with the data pipeline's encoder (same ids as SentencePiece, faster).
    kfm = dataclasses.replace(kfm_sp, name="kfm", encode=batch_encoder(job.tokenizer_model).encode)
    stats_file = Path(job.tokenizer_model).with_name("train_stats.json")
    heldout = json.loads(stats_file.read_text())["config"]["heldout_fraction"] if stats_file.is_file() else None
    if heldout is None and any(s.heldout_only for s in job.sets):
        raise CorpusError(f"{stats_file} not found, so the held-out split is unknown: set sets[*].heldout_only=false")
    hf_file = Path(job.tokenizer_model).with_name("tokenizer.json")
    kfm_hf = load_encoder(hf_file) if hf_file.is_file() else None
    encoders = [kfm, *(load_encoder(p) for p in job.references)]
    results: dict[str, dict[str, dict]] = {}
    for s in job.sets:
        docs = load_set(s, heldout or 0.0, job.max_docs)
        results[s.name] = {}
        for enc in encoders:
            results[s.name][enc.name] = {**measure(enc, docs), "vocab_size": enc.vocab_size}
            log.info("%s / %s: %s", s.name, enc.name, results[s.name][enc.name])
        if kfm_hf is not None:
            results[s.name]["kfm"]["hf_ids_identical"] = ids_identical(kfm_sp, kfm_hf, docs)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    baseline = encoders[1].name if len(encoders) > 1 else "kfm"
    (out / "eval.json").write_text(json.dumps({"job": asdict(job), "results": results}, indent=2))
    table = to_markdown(results, baseline)
    (out / "eval.md").write_text(table)
    plot(results, out / "eval.png")
    print(table)
    return results


register_schemas("tokenizer_eval_job_schema")


@hydra.main(version_base="1.3", config_path="../configs", config_name="tokenizer_evaluate")
def main(cfg) -> None:
    evaluate(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
