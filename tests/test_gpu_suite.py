"""bench/gpu/suite.sh end to end on CPU (--smoke): kfm's and torchtitan's training steps, the attention table with
its float32-reference differences and the FP8-vs-bf16 loss table come out, from kfm reached the way the GPU machine
reaches it (links in a private folder, not the editable install). The GPU numbers themselves need a GPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bare_python(tmp_path: Path) -> Path:
    """A Python like the GPU machine's: torch and the rest importable, kfm not installed. A fresh venv that sees
    this environment's site-packages through a path file, which adds the folder without running its path files
    (so the editable install's finder for kfm is not there)."""
    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (next((venv / "lib").glob("python3*")) / "site-packages" / "deps.pth").write_text(f"{site}\n")
    return venv / "bin" / "python"


def test_suite_smoke_writes_every_table(tmp_path):
    out = tmp_path / "results"
    py = bare_python(tmp_path)
    bare = subprocess.run([str(py), "-c", "import torch; import kfm.model"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert bare.returncode != 0 and "No module named 'kfm" in bare.stderr, bare.stderr  # torch yes, kfm no
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu" / "suite.sh"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PY": str(py)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "stopped or failed" not in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    machine = (out / "gpu_machine.txt").read_text()
    assert "no GPU (smoke run)" in machine
    where = machine.split("kfm.model from")[1].split()[0]
    assert where.endswith("/kfm/model") and not where.startswith(str(ROOT)), machine  # the private folder's link

    step = (out / "gpu_step.md").read_text()
    rows = [ln for ln in step.splitlines() if ln.startswith("| one |") or ln.startswith("| packed |")]
    assert [r.split("|")[1:3] for r in rows] == [[" one ", " bf16 "], [" packed ", " fp8 tensorwise "]], step
    for row in rows:
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert "failed" not in cells, step
        kfm, titan, ratio = (float(c.replace(",", "")) for c in cells[2:5])
        assert kfm > 0 and titan > 0 and abs(ratio - kfm / titan) < 0.01 * ratio + 0.002
        assert all(float(c) > 0 for c in cells[9:11])  # both trained: a finite last loss each

    attention = (out / "gpu_attention.md").read_text()
    for docs, impl in (("one", "kfm triton"), ("packed", "kfm triton"), ("packed", "sdpa with mask")):
        row = next(ln for ln in attention.splitlines() if f"| {docs} | {impl} |" in ln)
        out_diff, grad_diff = (float(c) for c in row.split("|")[-3:-1])
        assert out_diff < 1e-4 and grad_diff < 1e-4, row  # fp32 on CPU: rounding only

    fp8 = (out / "gpu_fp8_loss.md").read_text()
    assert re.search(r"\| fp8 tensorwise \| [\d.]+ \| [\d.]+ \| [+-][\d.]+% \| yes \|", fp8), fp8


def test_both_implementations_get_the_same_batches():
    """Each implementation runs in its own process: the batches, document cuts included, must not depend on the
    process's global random state."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_step", ROOT / "bench" / "gpu" / "step.py")
    step = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(step)
    shape = step.SHAPES["tiny"]
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        runs.append(step.batches(shape, 2, 256, True, 32, 2))
    for a, b in zip(*runs):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    inputs, targets, positions, cuts = runs[0][0]
    assert len(cuts) > 4 and (positions == 0).sum() == len(cuts) - 1  # packed: several documents a row
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
