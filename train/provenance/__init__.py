"""kfm.train.provenance: where a model came from, recorded and checked.

``ledger`` (records, their hashes, the run's ledger and each checkpoint's chain), ``digests`` (weights
digests), ``signing`` (Ed25519), ``recorder`` (what the trainer records at init, checkpoint, resume, rollback),
``verify`` and ``verify_data`` (the checks), ``report`` (the verification report and the model card section).
"""
