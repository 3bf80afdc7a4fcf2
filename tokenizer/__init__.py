"""kfm.tokenizer: train a Korean-aware SentencePiece tokenizer and export it to Hugging Face."""
