"""kfm.train: the trainer (FSDP2/HSDP/DDP and DeepSpeed ZeRO), checkpoints, HF export and import, provenance."""

from kfm import quiet as _quiet

_quiet.install()  # before anything here loads a model through transformers (which imports torchao): kfm.quiet
