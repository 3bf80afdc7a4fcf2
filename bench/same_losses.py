"""Whether two runs logged the same losses: every train_loss / val_loss / val_bpb value (overall and per source) at
every logged step of two ``metrics.jsonl`` files, compared exactly.

    python bench/same_losses.py BEFORE/metrics.jsonl AFTER/metrics.jsonl [--out bench/results/same_losses.md]

Used to show that a refactor changed no number: run ``make demo`` on a checkout of the revision before it and on
one after it (same seed, same sample corpus), then compare their ``runs/demo/metrics.jsonl``. Exits 1 when any
value differs or is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = ("train_loss", "val_loss", "val_bpb")


def logged(path: Path) -> dict[tuple[int, str], float]:
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        for key, value in row.items():
            if key.split("/")[0] in KEYS:
                out[(row["step"], key)] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="also write the summary as markdown here")
    ap.add_argument("--title", default="make demo before and after")
    args = ap.parse_args()
    a, b = logged(args.before), logged(args.after)
    missing = sorted(set(a) ^ set(b))
    differing = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    steps = sorted({s for s, _ in a})
    lines = [f"# {args.title}", "",
             f"{len(a)} logged values (train_loss, val_loss, val_bpb, overall and per source) at {len(steps)} steps "
             f"({steps[0]}-{steps[-1]}); in one run only: {len(missing)}; differing: {len(differing)}.", "",
             "| step | key | before | after |", "|---|---|---|---|"]
    shown = [k for k in sorted(a) if k[1] in KEYS][:8] + [k for k in sorted(a) if k[1] in KEYS][-4:]
    for k in differing[:20] or shown:
        lines.append(f"| {k[0]} | {k[1]} | {a.get(k)!r} | {b.get(k)!r} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    sys.exit(1 if missing or differing else 0)


if __name__ == "__main__":
    main()
