"""Make an Ed25519 key pair for signing provenance records (``python -m kfm.train.cli.keygen``); the work is done
in ``kfm.train.provenance.signing``."""

from __future__ import annotations

from dataclasses import dataclass

import hydra
from omegaconf import OmegaConf

from kfm.schemas import register_schemas
from kfm.train.cli import CONFIG_DIR
from kfm.train.provenance.signing import generate_keypair


@dataclass
class KeygenJob:
    """``python -m kfm.train.cli.keygen``."""

    out: str = "keys/provenance"
    """Path prefix of the key files (``<out>.pem``, ``<out>.pub.pem``)."""


register_schemas("keygen_job_schema")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="keygen")
def main(cfg) -> None:
    job: KeygenJob = OmegaConf.to_object(cfg)
    private, public = generate_keypair(job.out)
    print(f"private key: {private} (keep it secret; train with provenance.signing_key={private})")
    print(f"public key:  {public} (publish it; verify with public_key={public})")


if __name__ == "__main__":
    main()
