#!/usr/bin/env bash
# The main job end to end on the built-in sample corpus (what `make demo` runs):
# sample corpus → tokenizer → token shards → 2-process FSDP2 training → HF export → provenance check → generation.
# Every stage is its own entry point; this script only chains them. Outputs go to $RUN_DIR.
set -euo pipefail
RUN_DIR=${RUN_DIR:-runs/demo}
PY=${PY:-python}
NPROC=${NPROC:-2}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-offline}
mkdir -p "$RUN_DIR"
LOG="$RUN_DIR/demo.log"
: > "$LOG"
stage() { echo; echo "=== [$(date +%H:%M:%S)] $1" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; }
start=$(date +%s)

stage "1/7 sample corpus (cached after the first run)"
run "$PY" -m kfm.data_pipeline.sample_corpus
stage "2/7 tokenizer → $RUN_DIR/tokenizer"
run "$PY" -m kfm.tokenizer.train run_dir="$RUN_DIR"
stage "3/7 token shards → $RUN_DIR/data"
run "$PY" -m kfm.data_pipeline.build run_dir="$RUN_DIR"
stage "4/7 pretraining, $NPROC processes (FSDP2) → $RUN_DIR/checkpoints"
run "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m kfm.train.cli.pretrain run_dir="$RUN_DIR" "$@"
stage "5/7 Hugging Face export → $RUN_DIR/hf"
run "$PY" -m kfm.train.cli.export_hf run_dir="$RUN_DIR"
stage "6/7 provenance: is $RUN_DIR/hf the end of an unbroken chain from kfm's own initialisation?"
run "$PY" -m kfm.train.cli.verify run_dir="$RUN_DIR"
stage "7/7 generation with transformers from $RUN_DIR/hf"
run "$PY" -m kfm.train.cli.generate run_dir="$RUN_DIR"
stage "done in $(( $(date +%s) - start )) s; log: $LOG"
