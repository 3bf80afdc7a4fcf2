"""The demo's entry points, chained as `make demo` chains them, at toy size."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(args, env, check=True):
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def env(tiny_corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    (cache / "sample_corpus").symlink_to(tiny_corpus["ko"].parent, target_is_directory=True)
    return {**os.environ, "KFM_CACHE": str(cache), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def test_entry_points_chain_to_a_loadable_hf_model(env, tmp_path):
    rd = f"run_dir={tmp_path}"
    run(["kfm.tokenizer.train", rd, "tokenizer.vocab_size=768", "tokenizer.ksx1001_hangul=false",
         "tokenizer.heldout_fraction=0.1"], env)
    run(["kfm.data_pipeline.build", rd, "data.val_fraction=0.1", "data.clean.dedup_near=false"], env)
    small = ["model.vocab_size=768", "model.dim=64", "model.n_layers=2", "model.n_heads=4", "model.n_kv_heads=2",
             "model.ffn_hidden_dim=96", "loader.seq_len=32", "trainer.steps=6", "trainer.metrics.log_every=2",
             "trainer.validation.every=3", "trainer.checkpoint.every=3", "trainer.validation.batches=2"]
    run(["kfm.train.cli.pretrain", rd, *small], env)
    metrics = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "val_loss" in m] == [0, 3, 6]
    assert any((tmp_path / "wandb").glob("offline-run-*"))
    run(["kfm.train.cli.export_hf", rd], env)
    out = run(["kfm.train.cli.generate", rd, "max_new_tokens=8", "prompt='대한민국'"], env).stdout
    assert out.strip().startswith("대한민국")


def test_cli_errors_name_the_fix(env, tmp_path):
    proc = run(["kfm.train.cli.pretrain", f"run_dir={tmp_path}", "trainer.stepz=3"], env, check=False)
    assert proc.returncode != 0 and "stepz" in proc.stderr
    proc = run(["kfm.data_pipeline.build", f"run_dir={tmp_path}"], env, check=False)
    assert proc.returncode != 0 and "tokenizer.train" in proc.stderr
    proc = run(["kfm.train.cli.export_hf", f"run_dir={tmp_path}"], env, check=False)
    assert proc.returncode != 0 and "no complete checkpoint" in proc.stderr


def test_a_build_stopped_by_a_bad_record_prints_one_error_and_leaves_no_data(env, tiny_tokenizer, tmp_path):
    """Issue 15 item 13: the error names file, line and column, without a multiprocessing traceback, and no
    half-written data/ is left (the fix changes the inputs' fingerprint, so nothing could be resumed)."""
    import json

    corpus = tmp_path / "ko.jsonl"
    good = [json.dumps({"text": f"{i}번 문서. 대한민국은 민주공화국이다. 모든 국민은 법 앞에 평등하다."}, ensure_ascii=False)
            for i in range(300)]
    corpus.write_text("\n".join(good[:250] + ['{"text": "끝나지 않은 문자열'] + good[250:]) + "\n", encoding="utf-8")
    rd = tmp_path / "run"
    proc = run(["kfm.data_pipeline.build", f"run_dir={rd}", f"tokenizer_model={tiny_tokenizer / 'tokenizer.model'}",
                f"data.sources=[{{name: ko, path: {corpus}}}]", "data.val_fraction=0.4"], env, check=False)
    assert proc.returncode == 1
    assert f"error: {corpus}:251: not valid JSON (Unterminated string starting at column 10)" in proc.stderr
    assert "Traceback" not in proc.stderr and "multiprocessing" not in proc.stderr
    assert not (rd / "data").exists()
