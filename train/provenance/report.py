"""The verification report (``kfm.train.provenance.verify``): plain text, JSON, and its section of the model card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kfm.train.provenance.ledger import describe

CARD_BEGIN = "<!-- kfm-provenance -->"
CARD_END = "<!-- /kfm-provenance -->"


@dataclass
class Report:
    hf_dir: str
    run_dir: str
    verified: bool = False
    from_scratch: bool = False
    verdict: str = ""
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chain: list[dict] = field(default_factory=list)
    origin: dict = field(default_factory=dict)
    data: list[dict] = field(default_factory=list)
    export: dict = field(default_factory=dict)
    signing: dict = field(default_factory=dict)

    def fail(self, message: str) -> None:
        self.failures.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def finish(self) -> None:
        self.verified = bool(self.chain) and not self.failures
        if not self.verified:
            self.from_scratch = False
            self.verdict = f"FAILED: {len(self.failures)} check(s) failed; the provenance of this model is not established"
        elif self.from_scratch:
            self.verdict = ("VERIFIED: trained from scratch. The exported weights end an unbroken chain that starts at "
                            f"kfm's random initialisation (seed {self.origin['seed']}), recomputed and matched")
        else:
            self.verdict = f"VERIFIED chain, NOT from scratch: it starts from {self._origin_text()}"

    def _origin_text(self) -> str:
        o = self.origin
        if o.get("kind") == "init":
            return f"kfm's random initialisation, seed {o['seed']} (recomputed: {'match' if o['recomputed'] else 'MISMATCH'})"
        if o.get("kind") == "import":
            return (f"an imported Hugging Face model ({o.get('architecture')}) from {o['source']}, weights sha256 "
                    f"{o['weights_sha256']}")
        if o.get("unrecorded"):
            return f"a checkpoint without a provenance record ({o.get('source')}), weights sha256 {o['weights_sha256']}"
        return f"{o.get('kind')} {o.get('source', '')}"

    def to_json(self) -> dict:
        return {
            "verified": self.verified, "from_scratch": self.from_scratch, "verdict": self.verdict,
            "hf_dir": self.hf_dir, "run_dir": self.run_dir, "origin": self.origin, "export": self.export,
            "chain": [{"id": env["id"], "kind": env["record"]["kind"], "step": env["record"].get("step"),
                       "parent": env["record"].get("parent"), "weights_sha256": env["record"]["weights"]["sha256"],
                       "signed": "signature" in env} for env in self.chain],
            "data": self.data, "code": self._code(), "signing": self.signing, "notes": self.notes,
            "warnings": self.warnings, "failures": self.failures,
        }

    def _code(self) -> list[dict]:
        seen: list[dict] = []
        for env in self.chain:
            code = env["record"].get("code")
            if code and code not in seen:
                seen.append(code)
        return seen

    def to_text(self) -> str:
        lines = ["kfm provenance report", f"model:   {self.hf_dir}", f"run:     {self.run_dir}",
                 f"verdict: {self.verdict}"]
        if self.origin:
            lines.append(f"origin:  {self._origin_text()}")
        if self.chain:
            lines.append(f"chain:   {len(self.chain)} records from origin to export (each id is the SHA-256 of its "
                         "record; each record names its parent)")
            for i, env in enumerate(self.chain, 1):
                rec = env["record"]
                tokens = sum(sum(seg["tokens"].values()) for seg in rec.get("data", []))
                extra = f"  +{tokens:,} tokens" if tokens else ""
                if rec["kind"] == "export":
                    extra = f"  {rec.get('dtype')}"
                lines.append(f"  {i:>3}. {describe(rec):<22} {env['id'][:16]}  weights {rec['weights']['sha256'][:16]}"
                             f"{extra}{'  signed' if 'signature' in env else ''}")
        if self.data:
            total = sum(e["total_tokens"] for e in self.data)
            lines.append(f"data:    {len(self.data)} manifest(s), {total:,} training tokens read")
            for e in self.data:
                state = "unchanged since training" if e["checked"] else "not re-checked"
                lines.append(f"  manifest {e['manifest_sha256'][:16]} ({e['data_dir']}; tokenizer "
                             f"{e['tokenizer_sha256'][:16]}; {state}): {e['total_tokens']:,} tokens")
                lines.append("    " + " · ".join(f"{s} {n:,}" for s, n in sorted(e["tokens"].items(), key=lambda x: -x[1])))
        for code in self._code():
            git = f"git {code['git_commit'][:12]}{' (uncommitted changes)' if code.get('git_dirty') else ''}, " \
                if code.get("git_commit") else ""
            lines.append(f"code:    {git}sources {code['source_sha256'][:16]}")
        if self.signing:
            signers = self.signing.get("signers", [])
            lines.append("signing: " + (f"signed by {', '.join(s[:16] for s in signers)}"
                                        + (" (the trusted key)" if self.signing.get("trusted_key") else "")
                                        if signers else "records are not signed"))
        for title, items in (("notes", self.notes), ("warnings", self.warnings), ("failures", self.failures)):
            if items:
                lines.append(f"{title}:")
                lines.extend(f"  - {item}" for item in items)
        return "\n".join(lines) + "\n"


def card_section(report: Report) -> str:
    return "\n".join([
        CARD_BEGIN, "## Provenance", "",
        f"**{report.verdict}.**", "",
        "Checked by `python -m kfm.train.cli.verify` against the training run's ledger (weight digests recomputed from the "
        "exported files; the initial weights recomputed from the recorded seed):", "",
        "```text", report.to_text().rstrip(), "```", CARD_END, ""])


def update_model_card(readme: Path, report: Report) -> None:
    """Replace (or append) the provenance section of the model card."""
    text = readme.read_text() if readme.is_file() else ""
    section = card_section(report)
    if CARD_BEGIN in text and CARD_END in text:
        head, rest = text.split(CARD_BEGIN, 1)
        text = head + section + rest.split(CARD_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    readme.write_text(text)
