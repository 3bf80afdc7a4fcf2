"""kfm.train.plan: the layout planner (``python -m kfm.train.plan``): per-GPU memory, communication and estimated
throughput of parallel layouts for a model on a cluster, checked against what kfm can run."""
