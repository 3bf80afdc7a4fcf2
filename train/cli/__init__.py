"""kfm.train.cli: the command-line tools of training, each a thin Hydra entry point over a library module.

=====================  ==========================================  ==============================
command                what it does                                the work lives in
=====================  ==========================================  ==============================
``pretrain``           train (one process or under torchrun)       ``kfm.train.loop.trainer``
``launch``             check a Slurm job and print its launch plan  (here)
``export_hf``          checkpoint -> Hugging Face directory         ``kfm.train.hf.export``
``import_checkpoint``  Hugging Face directory -> kfm checkpoint     ``kfm.train.cli.import_checkpoint``
``consolidate``        sharded checkpoint -> one safetensors file   ``kfm.train.cli.consolidate``
``verify``             check an export's provenance chain           ``kfm.train.provenance.verify``
``keygen``             Ed25519 key pair for signing provenance      ``kfm.train.provenance.signing``
``generate``           continue a prompt with ``transformers``      (here)
``evaluate_lm``        lm-evaluation-harness on an export           (here)
=====================  ==========================================  ==============================

Each runs as ``python -m kfm.train.cli.<command>`` or as the console script ``kfm-<command>``
(underscores become dashes).
"""

from pathlib import Path

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
"""The repository's ``configs/`` folder (Hydra's primary config path for every tool)."""
