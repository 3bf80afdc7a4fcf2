"""kfm.data_pipeline: ingest and clean text, tokenize it into shards, serve it to the trainer."""
