"""kfm.train: the trainer (FSDP2/HSDP/DDP and DeepSpeed ZeRO), checkpoints, HF export and import, provenance."""
