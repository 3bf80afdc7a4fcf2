#!/usr/bin/env bash
# Measure kfm's tokenizer against GPT-4o, GPT-4, Llama 3, Qwen 3 and Gemma 3 on the held-out
# split of the sample corpus: fetches the reference files once, then runs tokenizer.evaluate.
#   bench/tokenizer_compare.sh [RUN_DIR]      (default runs/demo; needs its tokenizer)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-runs/demo}
PY=${PY:-.venv/bin/python}
REF=${KFM_CACHE:-$HOME/.cache/kfm}/reference_tokenizers
bench/fetch_reference_tokenizers.sh "$REF"
"$PY" -m kfm.tokenizer.evaluate run_dir="$RUN_DIR" \
  "references=[$REF/o200k_base.tiktoken,$REF/cl100k_base.tiktoken,$REF/llama3/tokenizer.json,$REF/qwen3/tokenizer.json,$REF/gemma3/tokenizer.json]"
echo "table: $RUN_DIR/tokenizer/eval/eval.md   chart: $RUN_DIR/tokenizer/eval/eval.png"
