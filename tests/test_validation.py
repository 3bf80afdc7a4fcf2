"""The headline validation figure covers every source by its held-out size (issue 15 item 1)."""

import json
import math

import numpy as np
import pytest

from kfm.data_pipeline.build import build_shards
from kfm.data_pipeline.config import CleanConfig, DataConfig, DataSource
from kfm.data_pipeline.loader import TokenWindows, validation_batches
from kfm.data_pipeline.shards import Manifest
from kfm.train.loop.validation import held_out_aggregate
from tests.helpers import make_job, run_distributed, train_and_report


@pytest.fixture(scope="module")
def run_dir(tiny_corpus, tiny_tokenizer, tmp_path_factory):
    """Shards of the tiny corpus with held-out text in all three sources (the tokenizer held out 0.4)."""
    root = tmp_path_factory.mktemp("val3")
    cfg = DataConfig(sources=[DataSource(name=k, path=str(v), lang=k) for k, v in tiny_corpus.items()],
                     val_fraction=0.4, num_workers=1, clean=CleanConfig(dedup_near=False))
    build_shards(cfg, tiny_tokenizer / "tokenizer.model", root / "data")
    return root


def held_out_tokens(data_dir) -> dict[str, int]:
    shards = Manifest.load(data_dir).split_shards("val")
    return {src: sum(s.num_tokens for s in shards if s.source == src) for src in {s.source for s in shards}}


def test_val_loss_is_the_held_out_weighted_mean_of_three_sources(run_dir):
    job = make_job(run_dir, steps=6, validation={"every": 6})
    (last, _), = run_distributed(train_and_report, 1, job)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = [r for r in rows if "val_loss" in r][-1]
    tokens = held_out_tokens(run_dir / "data")
    assert set(tokens) == {"ko", "en", "code"}
    losses = {s: final[f"val_loss/{s}"] for s in tokens}
    assert max(losses.values()) - min(losses.values()) > 0.1, losses  # the sources' losses differ
    expected = sum(tokens[s] * losses[s] for s in tokens) / sum(tokens.values())
    assert final["val_loss"] == pytest.approx(expected, rel=1e-9)
    first = Manifest.load(run_dir / "data").split_shards("val")[0].source
    assert abs(final["val_loss"] - losses[first]) > 0.01  # not the first source of the manifest
    assert last["val_loss"] == final["val_loss"]


def test_bits_per_byte_over_sources_is_expected_bits_over_expected_bytes():
    sums = {"ko": [300.0, 100.0, 500.0], "en": [40.0, 10.0, 45.0]}  # nats, tokens, bytes
    held = {"ko": 3000, "en": 1000}
    out = held_out_aggregate(sums, held)
    assert out["val_loss"] == pytest.approx(0.75 * 3.0 + 0.25 * 4.0)
    assert out["val_bpb"] == pytest.approx(out["val_loss"] / math.log(2) / (0.75 * 5.0 + 0.25 * 4.5))
    assert held_out_aggregate({"ko": sums["ko"]}, held)["val_bpb"] == pytest.approx(300 / math.log(2) / 500)


def test_a_source_smaller_than_a_global_batch_is_measured_with_what_it_has(run_dir):
    windows = TokenWindows(run_dir / "data", "val", 32, "code")
    local = len(windows) // 2 + 1  # two ranks of this batch would need more windows than the source has
    batches = [list(validation_batches(windows, local, rank, 2, 8)) for rank in (0, 1)]
    assert len(batches[0]) == len(batches[1]) == 1  # the same number of batches on every rank
    got = np.concatenate([b[0].inputs.numpy() for b in batches])
    assert got.shape[0] == 2 * (len(windows) // 2)
    with pytest.raises(ValueError, match="fewer than one a rank"):
        next(validation_batches(windows, local, 0, len(windows) + 1, 8))
