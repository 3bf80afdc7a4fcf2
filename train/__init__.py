"""kfm.train: the trainer (FSDP2 today, DeepSpeed ZeRO next), checkpoints and HF export."""
