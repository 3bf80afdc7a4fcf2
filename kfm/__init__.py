"""kfm: a training stack for Korean foundation models.

The packages live in the repository's top-level folders and install under this name
(``pyproject.toml`` maps ``kfm.model`` to ``model/`` and so on):

- ``kfm.tokenizer``: the Korean-aware SentencePiece tokenizer, its evaluation and HF export;
- ``kfm.data_pipeline``: ingest, clean, deduplicate and tokenize text into shards; the loader;
- ``kfm.model``: the decoder-only transformer as plain ``nn.Module``s and its kernels;
- ``kfm.train``: the trainer, parallel engines, checkpoints, HF conversion and provenance.

Data flows forward: tokenizer -> data_pipeline -> train; ``kfm.model`` imports none of the others.
"""

__version__ = "0.1.0"
