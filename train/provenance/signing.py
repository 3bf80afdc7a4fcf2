"""Ed25519 signatures of provenance records (``cryptography``), so that records cannot be rewritten later.

    python -m kfm.train.cli.keygen out=keys/team     # writes keys/team.pem (private, mode 0600) and keys/team.pub.pem

Train with ``provenance.signing_key=keys/team.pem``; verify with ``public_key=keys/team.pub.pem``. The
team keeps the private key; the public key can be published with the model. A signature covers the
record's canonical bytes (``kfm.train.provenance.ledger.canonical``), the same bytes its id hashes.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


def _raw_public(key: Ed25519PublicKey) -> str:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


class Signer:
    """Signs with a team's Ed25519 private key (a PEM file, PKCS#8, unencrypted)."""

    def __init__(self, key_file: str | Path) -> None:
        path = Path(key_file)
        if not path.is_file():
            raise FileNotFoundError(f"provenance signing key {path} not found: create one with "
                                    "`python -m kfm.train.cli.keygen out=<path>` or leave provenance.signing_key empty")
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} is not an unencrypted PEM private key ({err})") from err
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} holds a {type(key).__name__}; provenance records are signed with Ed25519 "
                             "keys (`python -m kfm.train.cli.keygen out=<path>`)")
        self._key = key
        self.public_key = _raw_public(key.public_key())

    def sign(self, message: bytes) -> dict:
        return {"ed25519": self._key.sign(message).hex(), "public_key": self.public_key}


def load_public_key(path: str | Path) -> str:
    """The raw public key (hex) in a PEM file, or in the PEM private key it belongs to."""
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        return Signer(path).public_key
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return _raw_public(key)


def signature_valid(signature: dict, message: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(signature["public_key"])).verify(
            bytes.fromhex(signature["ed25519"]), message)
    except (InvalidSignature, KeyError, ValueError):
        return False
    return True


def generate_keypair(out: str | Path) -> tuple[Path, Path]:
    """``<out>.pem`` (private, readable by the owner only) and ``<out>.pub.pem``."""
    out = Path(out)
    private, public = out.with_name(out.name + ".pem"), out.with_name(out.name + ".pub.pem")
    if private.exists():
        raise FileExistsError(f"{private} exists: a new key would orphan the records signed with it; choose "
                              "another out=")
    out.parent.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
