"""Every Hydra schema of kfm's tools, registered in one place.

Each top-level config (``configs/<tool>.yaml``) names its schema first in its defaults list; the table below
says which dataclass that is. A tool registers the schemas it needs when its module is imported
(``register_schemas("export_job_schema")``); ``register_schemas()`` registers all (the config tests).
"""

from __future__ import annotations

from importlib import import_module

SCHEMAS: dict[str, str] = {
    "sample_corpus_schema": "kfm.data_pipeline.sample_corpus:SampleCorpusConfig",
    "tokenizer_job_schema": "kfm.tokenizer.train:TokenizerJob",
    "tokenizer_eval_job_schema": "kfm.tokenizer.evaluate:EvaluateJob",
    "data_build_job_schema": "kfm.data_pipeline.build:DataBuildJob",
    "data_build_staged_job_schema": "kfm.data_pipeline.staged.config:StagedBuildJob",
    "pretrain_job_schema": "kfm.train.config.job:PretrainJob",
    "export_job_schema": "kfm.train.cli.export_hf:ExportJob",
    "import_job_schema": "kfm.train.cli.import_checkpoint:ImportJob",
    "consolidate_job_schema": "kfm.train.cli.consolidate:ConsolidateJob",
    "verify_job_schema": "kfm.train.cli.verify:VerifyJob",
    "keygen_job_schema": "kfm.train.cli.keygen:KeygenJob",
    "generate_job_schema": "kfm.train.cli.generate:GenerateJob",
    "evaluate_lm_job_schema": "kfm.train.cli.evaluate_lm:EvalJob",
    "plan_job_schema": "kfm.train.plan.cli:PlanJob",
}
"""Schema name (as the configs' defaults lists name it) -> ``module:dataclass``."""


def register_schemas(*names: str) -> None:
    """Store the named schemas (every one when none is named) in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    unknown = set(names) - set(SCHEMAS)
    if unknown:
        raise KeyError(f"no schema named {sorted(unknown)} in kfm.schemas.SCHEMAS: add it there")
    for name in names or SCHEMAS:
        module, cls = SCHEMAS[name].split(":")
        ConfigStore.instance().store(name=name, node=getattr(import_module(module), cls))
