"""Test helpers: a tiny real-text corpus, and running a function in N gloo processes."""

from __future__ import annotations

import io
import json
import os
import random
import socket
import sysconfig
import traceback
from pathlib import Path

import torch
import torch.multiprocessing as mp

KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
"""Where the Triton kernel tests put their tensors: compiled on a GPU, under the interpreter on CPU (conftest)."""

KO_SENTENCES = [
    "대한민국은 민주공화국이다.",
    "대한민국의 주권은 국민에게 있고, 모든 권력은 국민으로부터 나온다.",
    "모든 국민은 인간으로서의 존엄과 가치를 가지며, 행복을 추구할 권리를 가진다.",
    "모든 국민은 법 앞에 평등하다.",
    "누구든지 성별·종교 또는 사회적 신분에 의하여 차별을 받지 아니한다.",
    "셀 범위를 선택한 다음 서식 메뉴에서 셀 서식을 고릅니다.",
    "이 대화 상자에서 문서의 글꼴과 문단 간격을 지정할 수 있습니다.",
    "김치찌개는 돼지고기와 두부를 넣어 끓인 한국의 대표적인 음식이다.",
    "서울특별시는 한강을 끼고 있으며 인구가 약 천만 명이다.",
    "오늘 날씨가 맑아서 공원에 산책을 나갔습니다.",
    "한글은 세종대왕이 1443년에 창제한 문자로, 자음과 모음을 모아 음절을 만든다.",
    "학생들은 도서관에서 시험 공부를 하고 있었다.",
]
EN_SENTENCES = [
    "Select the cell range, then choose Format - Cells.",
    "The quick brown fox jumps over the lazy dog.",
    "This dialog lets you set the font and the paragraph spacing of the document.",
    "Returns the number of the next record to be read.",
]


def write_tiny_corpus(root: Path, n_docs: int = 300, seed: int = 0) -> dict[str, Path]:
    """ko/en jsonl documents shuffled from real sentences, and code from the stdlib; returns lang → path."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = {}
    for lang, pool in (("ko", KO_SENTENCES), ("en", EN_SENTENCES)):
        paths[lang] = root / f"{lang}.jsonl"
        with paths[lang].open("w", encoding="utf-8") as f:
            for i in range(n_docs):
                text = "\n".join(rng.choice(pool) for _ in range(rng.randint(2, 6)))
                f.write(json.dumps({"text": f"{i}번 문서. {text}" if lang == "ko" else text}, ensure_ascii=False) + "\n")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths["code"] = root / "code.jsonl"
    with paths["code"].open("w", encoding="utf-8") as f:
        for name in ("textwrap.py", "colorsys.py", "bisect.py", "heapq.py"):
            f.write(json.dumps({"text": (stdlib / name).read_text(encoding="utf-8")}) + "\n")
    return paths


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        # Send bytes, not tensors: shared-memory handles die with this process.
        buf = io.BytesIO()
        torch.save(fn(*args), buf)
        queue.put((rank, buf.getvalue(), None))
    except BaseException:  # noqa: BLE001 - report any failure to the parent
        queue.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_distributed(fn, world: int, *args, timeout: float = 600) -> list:
    """Run ``fn(*args)`` in ``world`` spawned gloo processes; returns each rank's result, raises on failure."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, fn, args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = [None] * world, []
    for _ in range(world):
        rank, value, err = queue.get()
        results[rank] = torch.load(io.BytesIO(value), weights_only=False) if value is not None else None
        if err:
            errors.append(f"rank {rank}:\n{err}")
    for p in procs:
        p.join(timeout)
    if errors:
        raise RuntimeError("\n".join(errors))
    return results
