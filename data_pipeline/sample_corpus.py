"""Build the built-in sample corpus: real Korean, English and code text from package registries.

    python -m kfm.data_pipeline.sample_corpus [out_dir=...]

Sources (all fetched from the package registries, never from a model/data hub):
  ko    Debian ``libreoffice-help-ko``, ``gimp-help-ko``, ``debian-faq-ko`` (HTML help pages),
        and the plain-text ``kolaw``/``kobill`` corpora inside the PyPI wheel ``konlpy``;
  en    Debian ``libreoffice-help-en-us`` (the same help in English);
  code  the Python standard library's own ``.py`` sources, already on disk.

Writes ``ko.jsonl``, ``en.jsonl``, ``code.jsonl`` (one ``{"text", "source", "lang"}``
document per line) and ``manifest.json`` into ``out_dir``. A source that cannot be fetched
is reported and skipped; the build fails only if no Korean text at all was obtained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import hydra
from omegaconf import OmegaConf
from tqdm import tqdm

from kfm.data_pipeline.html_text import html_paragraphs
from kfm.data_pipeline.text import ascii_letter_share, count_hangul_syllables, hangul_share, normalize
from kfm.schemas import register_schemas

log = logging.getLogger(__name__)

RECIPE_VERSION = 2
KO_DEBS = ("libreoffice-help-ko", "gimp-help-ko", "debian-faq-ko")
EN_DEBS = ("libreoffice-help-en-us",)
KONLPY_WHEEL = "konlpy==0.6.0"


@dataclass
class SampleCorpusConfig:
    """Where the sample corpus goes and how much English and code it carries."""

    out_dir: str = "~/.cache/kfm/sample_corpus"
    """Cache directory; the build is skipped when a complete corpus of this recipe is there."""
    min_hangul_share: float = 0.5
    """A Korean paragraph is kept when at least this share of its letters is Hangul."""
    min_paragraph_chars: int = 10
    """Shorter paragraphs (menu labels, captions) are dropped."""
    en_max_bytes: int = 1_500_000
    """Cap on the English part, in UTF-8 bytes."""
    code_max_bytes: int = 1_000_000
    """Cap on the code part, in UTF-8 bytes."""
    code_chunk_chars: int = 4000
    """Source files are cut at blank lines into documents of about this many characters."""
    force: bool = False
    """Rebuild even if the cache is complete."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_hangul_share <= 1.0:
            raise ValueError(f"min_hangul_share must be in [0, 1], got {self.min_hangul_share}")
        if self.en_max_bytes < 0 or self.code_max_bytes < 0 or self.min_paragraph_chars < 0:
            raise ValueError("en_max_bytes, code_max_bytes and min_paragraph_chars must be >= 0")


class SourceUnavailable(RuntimeError):
    """A registry package could not be fetched; the message says what to do."""


def fetch_debs(packages: Iterable[str], dest: Path) -> dict[str, Path]:
    """``apt-get download`` each package and unpack it with ``dpkg-deb -x``; returns package → root."""
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SourceUnavailable("apt-get/dpkg-deb not found (not a Debian-family machine)")
    roots = {}
    for pkg in packages:
        proc = subprocess.run(["apt-get", "download", pkg], cwd=dest, capture_output=True, text=True)
        if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
            # Missing or stale package lists: refresh them once (needs root) and retry.
            log.info("apt-get download %s failed; running apt-get update and retrying", pkg)
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
            proc = subprocess.run(["apt-get", "download", pkg], cwd=dest, capture_output=True, text=True)
        debs = sorted(dest.glob(f"{pkg}_*.deb"))
        if proc.returncode != 0 or not debs:
            hint = "run `apt-get update` (as root) so that package lists exist"
            raise SourceUnavailable(f"`apt-get download {pkg}` failed: {proc.stderr.strip()[-300:]} ({hint})")
        root = dest / pkg
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(root)], check=True)
        roots[pkg] = root
    return roots


def fetch_wheel(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel; returns its path."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), requirement],
        capture_output=True, text=True,
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise SourceUnavailable(f"`pip download {requirement}` failed: {proc.stderr.strip()[-300:]}")
    return wheels[-1]


def html_documents(root: Path, desc: str) -> Iterator[tuple[str, list[str]]]:
    """(relative path, paragraphs) for every HTML page under ``root``, in sorted order."""
    pages = sorted(root.rglob("*.html"))
    for page in tqdm(pages, desc=desc, unit="page", leave=False, disable=None):
        yield str(page.relative_to(root)), html_paragraphs(page.read_text(encoding="utf-8", errors="replace"))


class _Deduper:
    """Exact paragraph dedup across a whole language: help pages repeat boilerplate a lot."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()

    def fresh(self, paragraph: str) -> bool:
        key = hashlib.blake2b(paragraph.encode(), digest_size=16).digest()
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def korean_docs(cfg: SampleCorpusConfig, work: Path, report: dict) -> Iterator[dict]:
    dedup = _Deduper()

    def keep(p: str) -> bool:
        return len(p) >= cfg.min_paragraph_chars and hangul_share(p) >= cfg.min_hangul_share and dedup.fresh(p)

    try:
        roots = fetch_debs(KO_DEBS, work)
    except SourceUnavailable as err:
        report["unavailable"].append(f"Debian Korean help: {err}")
        roots = {}
    for pkg, root in roots.items():
        for rel, paragraphs in html_documents(root, pkg):
            kept = [normalize(p) for p in paragraphs if keep(normalize(p))]
            if kept:
                yield {"text": "\n".join(kept), "source": f"deb:{pkg}/{rel}", "lang": "ko"}
    try:
        wheel = fetch_wheel(KONLPY_WHEEL, work)
    except SourceUnavailable as err:
        report["unavailable"].append(f"konlpy corpora: {err}")
        return
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if "/data/corpus/" not in name or not name.endswith(".txt"):
                continue
            lines = zf.read(name).decode("utf-8", errors="replace").splitlines()
            kept = [normalize(ln.strip()) for ln in lines if ln.strip() and keep(normalize(ln.strip()))]
            if kept:
                yield {"text": "\n".join(kept), "source": f"pypi:{name}", "lang": "ko"}


def english_docs(cfg: SampleCorpusConfig, work: Path, report: dict) -> Iterator[dict]:
    dedup = _Deduper()
    try:
        roots = fetch_debs(EN_DEBS, work)
    except SourceUnavailable as err:
        report["unavailable"].append(f"Debian English help: {err}")
        return
    for pkg, root in roots.items():
        for rel, paragraphs in html_documents(root, pkg):
            kept = [p for p in map(normalize, paragraphs)
                    if len(p) >= 4 * cfg.min_paragraph_chars and ascii_letter_share(p) > 0.95 and dedup.fresh(p)]
            if kept:
                yield {"text": "\n".join(kept), "source": f"deb:{pkg}/{rel}", "lang": "en"}


def chunk_code(text: str, max_chars: int) -> list[str]:
    """Cut a source file at blank lines into pieces of at most ~``max_chars`` (a longer block stays whole)."""
    chunks, cur = [], ""
    for block in text.split("\n\n"):
        if cur and len(cur) + len(block) + 2 > max_chars:
            chunks.append(cur)
            cur = block
        else:
            cur = f"{cur}\n\n{block}" if cur else block
    if cur.strip():
        chunks.append(cur)
    return chunks


def code_docs(cfg: SampleCorpusConfig) -> Iterator[dict]:
    """Python standard-library modules, cut into ~4 kB documents (enough of them for a held-out split)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py")):
        if "test" in path.parts[-2] or "site-packages" in path.parts:
            continue
        try:
            text = normalize(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, OSError):
            continue
        for i, chunk in enumerate(chunk_code(text, cfg.code_chunk_chars)):
            yield {"text": chunk, "source": f"python-stdlib:{path.relative_to(stdlib)}#{i}", "lang": "code"}


def _write_capped(docs: Iterable[dict], path: Path, max_bytes: int | None) -> dict:
    n_docs = n_bytes = n_hangul = 0
    with path.open("w", encoding="utf-8") as f:
        for doc in docs:
            size = len(doc["text"].encode())
            if max_bytes is not None and n_bytes and n_bytes + size > max_bytes:
                continue  # over the cap: skip it, a smaller document may still fit
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
            n_docs, n_bytes, n_hangul = n_docs + 1, n_bytes + size, n_hangul + count_hangul_syllables(doc["text"])
    return {"docs": n_docs, "bytes": n_bytes, "hangul_syllables": n_hangul}


def build_sample_corpus(cfg: SampleCorpusConfig) -> Path:
    """Build (or find in the cache) the sample corpus; returns its directory."""
    out = Path(os.path.expanduser(cfg.out_dir))
    manifest = out / "manifest.json"
    if manifest.exists() and not cfg.force:
        meta = json.loads(manifest.read_text())
        if meta.get("recipe_version") == RECIPE_VERSION and meta.get("config") == asdict(cfg):
            log.info("sample corpus already built at %s (%s)", out, _summary(meta))
            return out
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=out.name + ".partial-", dir=out.parent))
    report: dict = {"unavailable": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            stats = {
                "ko": _write_capped(korean_docs(cfg, work, report), partial / "ko.jsonl", None),
                "en": _write_capped(english_docs(cfg, work, report), partial / "en.jsonl", cfg.en_max_bytes),
                "code": _write_capped(code_docs(cfg), partial / "code.jsonl", cfg.code_max_bytes),
            }
        for msg in report["unavailable"]:
            log.warning("source unavailable, continuing without it: %s", msg)
        if stats["ko"]["docs"] == 0:
            raise RuntimeError(
                "the sample corpus has no Korean text: every Korean source was unavailable "
                f"({'; '.join(report['unavailable'])}). Fix the cause above, or point data.sources at your own files."
            )
        meta = {"recipe_version": RECIPE_VERSION, "config": asdict(cfg), "stats": stats,
                "unavailable": report["unavailable"]}
        (partial / "manifest.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False))
        if out.exists():
            shutil.rmtree(out)
        partial.rename(out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    log.info("built sample corpus at %s (%s)", out, _summary(meta))
    return out


def _summary(meta: dict) -> str:
    s = meta["stats"]
    return ", ".join(f"{k}: {v['docs']} docs, {v['bytes'] / 1e6:.2f} MB" for k, v in s.items()) + (
        f", {s['ko']['hangul_syllables']:,} Hangul syllables"
    )


register_schemas("sample_corpus_schema")


@hydra.main(version_base="1.3", config_path="../configs", config_name="sample_corpus")
def main(cfg) -> None:
    build_sample_corpus(OmegaConf.to_object(cfg))


if __name__ == "__main__":
    main()
