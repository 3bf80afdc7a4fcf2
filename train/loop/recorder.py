"""The trainer's side of provenance: records the origin of the weights, every checkpoint, resumes and
rollbacks into the run's ledger, and a chain into every checkpoint (format: ``kfm.train.provenance.ledger``).

Weight digests are collective (every rank walks the parameters; ``kfm.train.provenance.digests``); files are
written by rank 0. Nothing is recorded per step: the data read between two records is derived from
the loader's sample count, which the stream maps to sources exactly (``MixtureStream.samples_by_source``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path

import torch

from kfm.data_pipeline.loader import MixtureStream
from kfm.data_pipeline.shards import MANIFEST, Manifest, file_sha256
from kfm.model import Transformer
from kfm.model.config import ModelConfig
from kfm.train.config import PretrainJob
from kfm.train.parallel.distributed import DistInfo
from kfm.train.provenance.digests import WeightsDigest, digest_tensors, init_digest, state_dict_tensors
from kfm.train.provenance.ledger import Ledger, ProvenanceError, code_version, envelope, now, read_chain, write_chain
from kfm.train.provenance.signing import Signer

log = logging.getLogger("kfm.train")


class Recorder:
    def __init__(self, job: PretrainJob, info: DistInfo, data_dir: Path, manifest: Manifest,
                 stream: MixtureStream) -> None:
        self.enabled = job.provenance.enabled
        self.job, self.info, self.stream, self.data_dir = job, info, stream, data_dir
        self.ledger = Ledger(job.run_dir)
        self.chain: list[dict] = []
        """Envelopes from the origin to the newest record (the head)."""
        self.origin: list[dict] = []
        """Import / up-scaling records observed before the engine exists."""
        self.consumed = 0
        """Training samples read at the head."""
        self.tokenizer_sha256 = manifest.tokenizer_sha256
        self.data_dir_from_run = os.path.relpath(data_dir.resolve(), Path(job.run_dir).resolve())
        """Where the shards are seen from the run directory, for a verifier on another machine or cwd."""
        self.signer = self.code = self.manifest_sha256 = None
        if self.enabled and info.is_main:
            self.signer = Signer(job.provenance.signing_key) if job.provenance.signing_key else None
            manifest_file = data_dir / MANIFEST
            self.manifest_sha256 = file_sha256(manifest_file)
            self.ledger.keep_manifest(manifest_file, self.manifest_sha256)
            self.code = code_version()

    # ----- helpers -----
    def _digest(self, tensors) -> WeightsDigest:
        return digest_tensors(tensors, distributed=True)

    def _record(self, kind: str, parent: str | None, **fields) -> dict:
        """Rank 0: a new envelope at the head of the chain (the caller writes it to the ledger)."""
        rec = {"kind": kind, "parent": parent, "time": now(), "run_dir": str(self.job.run_dir), "code": self.code,
               **fields}
        env = envelope(rec, self.signer)
        self.chain.append(env)
        return env

    @property
    def head(self) -> str | None:
        return self.chain[-1]["id"] if self.chain else None

    def _config(self) -> dict:
        return asdict(self.job)

    # ----- origin -----
    def observe(self, kind: str, cfg: ModelConfig, sd: dict[str, torch.Tensor], **details) -> None:
        """Called (on every rank) with weights that replace the random init: ``import`` of a HF directory,
        then ``upscale``; recorded when training starts from them."""
        if not self.enabled:
            return
        digest = self._digest(state_dict_tensors(sd))
        rec = {"kind": kind, "model": cfg.to_dict(), "weights": digest.summary(), **details}
        self.origin.append(rec)

    def start(self, engine) -> None:
        """Before the first step of a run that did not resume: the origin of the weights the engine holds."""
        if not self.enabled:
            return
        digest = self._digest(engine.weight_tensors())
        cast = getattr(engine, "init_cast", None)
        if self.origin and not cast and digest.sha256 != self.origin[-1]["weights"]["sha256"]:
            raise ProvenanceError("the weights the engine holds are not the ones imported from "
                                  f"{self.job.trainer.init_from}: their digests differ (a bug in loading)")
        if not self.info.is_main:
            return
        parent = None
        for rec in self.origin:
            parent = self._record(rec.pop("kind"), parent, config=self._config(), **rec)["id"]
        if not self.origin:
            weights = digest
            if cast:  # the engine holds rounded weights: the origin is kfm's fp32 init, recomputed here
                with torch.device("meta"):
                    model = Transformer(self.job.model, self.job.model_runtime)
                weights = init_digest(model, self.job.trainer.seed)
            parent = self._record("init", None, seed=self.job.trainer.seed, model=self.job.model.to_dict(),
                                  config=self._config(), weights=weights.summary())["id"]
        if cast:
            self._record("cast", parent, dtype=cast, weights=digest.summary())
        for env in self.chain:
            self.ledger.append(env)
        log.info("provenance: origin %s, weights sha256 %s", self.chain[0]["record"]["kind"], digest.sha256[:16])

    def resumed(self, ckpt: Path, foreign: bool, engine, step: int, consumed: int) -> None:
        """After loading ``ckpt``: its chain becomes this run's; a checkpoint of another run (``foreign``) or
        one without a chain is marked with a ``resume`` record. The loaded weights must match the record."""
        if not self.enabled:
            return
        digest = self._digest(engine.weight_tensors())
        chain = read_chain(ckpt) or []
        if chain and digest.sha256 != chain[-1]["record"]["weights"]["sha256"]:
            raise ProvenanceError(
                f"{ckpt}: the weights loaded (sha256 {digest.sha256[:16]}...) are not those its provenance record "
                f"names ({chain[-1]['record']['weights']['sha256'][:16]}...): the checkpoint files were changed "
                "after they were written. Resume from another checkpoint, or set provenance.enabled=false to "
                "train on without a provenance chain")
        self.consumed = consumed
        if not self.info.is_main:
            return
        self.chain = list(chain)
        if chain and not foreign:
            return
        known = set()
        if self.ledger.path.is_file():
            known = {env["id"] for env in self.ledger.envelopes()}
        for env in chain:
            if env["id"] not in known:
                self.ledger.append(env)
        env = self._record("resume", self.head, source=str(ckpt), foreign=foreign, unrecorded=not chain, step=step,
                           consumed=consumed, config=self._config(), weights=digest.summary())
        self.ledger.append(env)
        log.warning("provenance: resumed from %s %s", "another run's checkpoint" if foreign else "a checkpoint",
                    f"{ckpt} (recorded: {'yes' if chain else 'no: the chain starts here, origin unknown'})")

    # ----- checkpoints -----
    def checkpoint(self, tmp: Path, engine, step: int, consumed: int, extra: dict) -> dict | None:
        """Collective, before the checkpoint is published: its record and chain into ``tmp``; returns the
        record (rank 0) for ``published``."""
        if not self.enabled:
            return None
        digest = self._digest(engine.weight_tensors())
        if not self.info.is_main:
            self.consumed = consumed
            return None
        samples = self.stream.samples_by_source(self.consumed, consumed)
        seq_len = self.job.loader.seq_len
        segment = {"data_dir": str(self.data_dir.resolve()), "data_dir_from_run": self.data_dir_from_run,
                   "manifest_sha256": self.manifest_sha256,
                   "tokenizer_sha256": self.tokenizer_sha256, "seq_len": seq_len,
                   "samples": consumed - self.consumed, "tokens": {s: n * seq_len for s, n in samples.items()}}
        env = self._record("checkpoint", self.head, step=step, consumed=consumed, config=self._config(),
                           weights=digest.summary(), data=[segment], **extra)
        write_chain(tmp, self.chain, digest.to_json())
        self.consumed = consumed
        return env

    def published(self, env: dict | None) -> None:
        """After the checkpoint's rename (rank 0): its record joins the ledger."""
        if env is not None:
            self.ledger.append(env)

    def rolled_back(self, ckpt: Path, engine, step: int, consumed: int) -> None:
        """Weights restored from ``ckpt``: the chain continues from its record; the samples read since are
        recorded as discarded."""
        if not self.enabled:
            return
        digest = self._digest(engine.weight_tensors())
        chain = read_chain(ckpt) or []
        if not chain or digest.sha256 != chain[-1]["record"]["weights"]["sha256"]:
            raise ProvenanceError(f"rollback to {ckpt}: its weights do not match its provenance record")
        discarded = consumed - chain[-1]["record"]["consumed"]
        self.consumed = consumed
        if not self.info.is_main:
            return
        self.chain = list(chain)
        env = self._record("rollback", self.head, step=step, consumed=consumed, discarded_samples=discarded,
                           weights=digest.summary())
        self.ledger.append(env)
