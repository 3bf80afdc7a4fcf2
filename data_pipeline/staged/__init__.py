"""The shard build as stages of independent tasks, run on Slurm job arrays or on one machine.

    python -m kfm.data_pipeline.staged [run_dir=...] [build.tasks=4] [build.executor=slurm] ...

Stages (``stages.STAGES``), each a set of tasks over a partition of work that does not depend on the
number of tasks, so that the result is byte-identical at any scale:

1. ``scan``: per input file (a *unit*): read, clean, filter, scrub PII, split, tokenize; write the
   candidate documents' tokens, exact-dedup keys and MinHash band hashes, bucketed (``scan``).
2. ``buckets``: per dedup bucket: sort its keys and band hashes from every unit, verify band
   collisions by estimated Jaccard similarity, write the documents an earlier one duplicates (``dedup``).
3. ``removals``: per part of the units: every bucket's duplicates of those units, as each unit's list of
   removed documents (``dedup``).
4. ``write``: per unit: the kept documents into token shards (``write``).
5. ``merge``: one task: the manifest (``write``).

Each finished piece of work leaves a completion marker (``layout.WorkDir``); a rerun does only what has
none, so a killed or failed task reruns alone and a finished build is not redone.
"""
