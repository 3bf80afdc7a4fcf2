"""kfm.train.loop: the training loop and what runs inside it.

``trainer`` (the step, gradient accumulation, validation cadence, signals), ``hooks`` (logging, profiling,
memory, spike handling), ``optim`` (AdamW groups, the LR schedule), ``metrics`` (jsonl/wandb sinks),
``throughput`` (MFU, the loss-spike detector), ``validation`` (held-out loss per source) and ``init_from``
(starting weights from a Hugging Face model).
"""
