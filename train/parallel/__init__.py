"""kfm.train.parallel: how the model is spread over processes.

``distributed`` (process group, ranks, reductions), ``parallelize`` (FSDP2/HSDP/DDP wrapping and activation
checkpointing of a plain model), ``engine`` (the FSDP2/DDP engine: step, DCP checkpoint format; and
``build_engine``) and ``deepspeed_engine`` (DeepSpeed ZeRO 1/2/3 and its checkpoint format).
"""
