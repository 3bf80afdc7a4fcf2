"""kfm.train.checkpoint: what a checkpoint is on disk and how it is published.

``layout`` (the step directories, the state file, atomic publish, resolving and checking checkpoints),
``reader`` (a checkpoint's weights into a plain model, offline, any backend) and ``consolidate`` (any sharded
checkpoint to one safetensors file). The engines own only their file format
(``kfm.train.parallel``).
"""
