"""Verify an exported model against its provenance chain (``python -m kfm.train.cli.verify``); the work is done in
``kfm.train.provenance.verify``."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.provenance.ledger import PROVENANCE_DIR
from kfm.train.provenance.verify import verify, write_report


@dataclass
class VerifyJob:
    """``python -m kfm.train.cli.verify``."""

    hf_dir: str = "${run_dir}/hf"
    """The exported Hugging Face directory."""
    run_dir: str = "runs/demo"
    """The run directory the model was trained in (holds ``provenance/ledger.jsonl``)."""
    public_key: str = ""
    """The team's Ed25519 public key (PEM): every record must carry a valid signature by it."""
    data_dir: str = ""
    """Where the training shards are now, if not at the recorded path."""
    check_shards: bool = False
    """Also re-hash every shard file against the manifest (reads all training data)."""
    allow_missing_data: bool = False
    """Verify even when a data manifest the run read cannot be found (named in the report's notes)."""
    update_card: bool = True
    """Write the report into ``<hf_dir>/README.md`` and ``<hf_dir>/provenance/report.{txt,json}``."""


register_schemas("verify_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="verify")
def main(cfg) -> None:
    job: VerifyJob = OmegaConf.to_object(cfg)
    report = verify(job.hf_dir, job.run_dir, job.public_key, job.data_dir, job.check_shards, job.allow_missing_data)
    print(report.to_text())
    if job.update_card and (Path(job.hf_dir) / PROVENANCE_DIR).is_dir():
        write_report(report, Path(job.hf_dir))
    sys.exit(0 if report.verified else 1)


if __name__ == "__main__":
    main()
