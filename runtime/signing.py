"""Signed builds (the optional `[signing]` extra): an ed25519 signature over the canonical manifest.

The manifest lists the sha256 of every other file, and ensemble.onnx carries the digest of the rest of the
manifest, so one signature over `contract.canonical(manifest)` covers every byte the runtime serves. The
signature lives inside the folder as `manifest.sig` (JSON: algorithm, build_id, the signing key's sha256,
the base64 signature): a folder copied whole stays signed, and it is the one file a folder may hold that
the manifest does not list (the manifest cannot list the signature of itself).

`cryptography` is imported only when a key is given: `import runtime` stays light, and an unsigned service
never needs it. Keys are PEM files: an Ed25519 private key (PKCS#8) to sign, its public key to verify.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import stat
from typing import Any

from .contract import SIGNATURE_FILE, build_id, canonical
from .errors import EnsembleOnnxError, install_hint, shortened
from .features import RepeatedKeyError, loads_strict

ALGORITHM = "ed25519"
INSTALL_HINT = "signed builds need the `cryptography` package: " + install_hint("signing")
KeySource = str | os.PathLike[str] | bytes  # a PEM file's path, or its bytes
RECORD_FIELDS = ("algorithm", "signature", "key_sha256", "build_id")  # manifest.sig's, all written by `sign`
SIGNATURE_BYTES = 64  # an Ed25519 signature's length


class SignatureError(EnsembleOnnxError, ValueError):
    """A key or signature that cannot be used; the caller turns it into its own error family."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise SignatureError(INSTALL_HINT) from None
    return serialization, ed25519


MAX_KEY_BYTES = 64 << 10  # a PEM key is a few hundred bytes; anything far larger is not a key


def _pem(key: KeySource) -> tuple[bytes, str]:
    if isinstance(key, bytes):
        return key, "the given key"
    where = os.fspath(key) if isinstance(key, (str, os.PathLike)) else None
    if not isinstance(where, str):  # an int would be taken for a descriptor, a bytearray refused by os.open
        raise SignatureError(f"the public key is {_a(type(key).__name__)}, not a PEM file's path or PEM bytes.")
    if "-----BEGIN" in where:  # never echoed whole: a PEM is several lines
        raise SignatureError(f"the key given is PEM text in a str ({shortened(where)}), not a path; pass it as "
                             f"bytes (str.encode()) or name its file.")
    if "\0" in where:
        raise SignatureError(f"the key's path {shortened(where)} holds a NUL character; name the PEM file.")
    try:
        # O_NONBLOCK and fstat on the descriptor: a FIFO (or device) named as the key would block the read
        # forever, and a huge file would be read whole. (os.open's descriptors are close-on-exec already.)
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        if os.path.islink(where) and exc.errno in (errno.ELOOP, errno.ENOENT):
            raise SignatureError(f"{where}: the key is a symbolic link that cannot be resolved ("
                                 f"{'a loop of links' if exc.errno == errno.ELOOP else 'it leads to no file'}); "
                                 f"name the PEM file.") from None
        raise SignatureError(f"{where}: cannot read the key ({exc.strerror}).") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which raises IsADirectoryError for a folder
        os.close(fd)
        raise SignatureError(f"{where}: the key is not a regular file (a folder, FIFO or device); name the "
                             f"PEM file.")
    with os.fdopen(fd, "rb") as fh:
        if info.st_size > MAX_KEY_BYTES:
            raise SignatureError(f"{where}: {info.st_size} bytes is not a PEM key (limit {MAX_KEY_BYTES}).")
        try:
            return fh.read(MAX_KEY_BYTES + 1), where
        except OSError as exc:
            raise SignatureError(f"{where}: cannot read the key ({exc.strerror}).") from None


def _raw_public(public: Any) -> bytes:
    serialization, _ = _crypto()
    raw: bytes = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw


def sign(manifest: dict[str, Any], private_key: KeySource) -> bytes:
    """The bytes of manifest.sig for this manifest."""
    serialization, ed25519 = _crypto()
    pem, where = _pem(private_key)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc}).") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{where}: an {type(key).__name__}; signing takes an Ed25519 key "
                             f"(openssl genpkey -algorithm ed25519 -out KEY.pem).")
    record = {"algorithm": ALGORITHM, "build_id": build_id(manifest),
              "key_sha256": hashlib.sha256(_raw_public(key.public_key())).hexdigest(),
              "signature": base64.b64encode(key.sign(canonical(manifest))).decode()}
    return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def verify(manifest: dict[str, Any], signature_file: bytes | None, public_key: KeySource) -> None:
    """SignatureError unless `signature_file` is a valid signature of `manifest` by `public_key`."""
    serialization, ed25519 = _crypto()
    pem, where = _pem(public_key)
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc}).") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where}: an {type(key).__name__}; signed builds use Ed25519 keys.")
    if signature_file is None:
        raise SignatureError(f"the folder is not signed (no {SIGNATURE_FILE}) and a public key was given.")
    record = _record(signature_file)
    algorithm, signature = record["algorithm"], _signature_bytes(record["signature"])
    if algorithm != ALGORITHM:
        raise SignatureError(f"{SIGNATURE_FILE}: algorithm {shortened(algorithm)}; this runtime checks {ALGORITHM}.")
    if len(signature) != SIGNATURE_BYTES:
        raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field 'signature' holds {len(signature)} "
                             f"bytes, not the {SIGNATURE_BYTES} of an {ALGORITHM} signature).")
    # Checked only for clearer messages: the signature itself covers the manifest, whatever these say.
    if record["key_sha256"] != hashlib.sha256(_raw_public(key)).hexdigest():
        raise SignatureError(f"{SIGNATURE_FILE}: the signature does not match {where}: the folder was signed by "
                             f"another key.")
    if record["build_id"] != build_id(manifest):
        raise SignatureError(f"{SIGNATURE_FILE}: the signature does not match manifest.json (signed for build "
                             f"{record['build_id'][:80]!r}; the manifest changed after signing).")
    try:
        key.verify(signature, canonical(manifest))
    except Exception:  # cryptography's InvalidSignature; imported lazily, so caught broadly here
        raise SignatureError(f"{SIGNATURE_FILE}: the signature does not match manifest.json under {where} "
                             f"(signed by another key, or the manifest changed after signing).") from None


def _record(signature_file: bytes) -> dict[str, Any]:
    """manifest.sig parsed, with every field `sign` writes present and a string, or SignatureError naming the
    file and the field in words (never a bare KeyError's "'signature'")."""
    try:
        record = loads_strict(signature_file)  # as manifest.json is read: UTF-8, each key once, no NaN
    except RepeatedKeyError as exc:
        raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field {shortened(exc.key)} is written "
                             f"twice).") from None
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply, NaN or Infinity
        raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (not JSON: {str(exc)[:200]}).") from None
    if not isinstance(record, dict):
        raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (a JSON {_json_type(record)}, not an "
                             f"object).")
    for field in record:  # nothing rides along unsigned-for that a reader might take as said by the signer
        if field not in RECORD_FIELDS:
            raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field {shortened(field)} is not one "
                                 f"`sign` writes).")
    for field in RECORD_FIELDS:
        if field not in record:
            raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field '{field}' is missing).")
        if not isinstance(record[field], str):
            raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field '{field}' is a JSON "
                                 f"{_json_type(record[field])}, not a string).")
    return record


def _signature_bytes(text: str) -> bytes:
    """The `signature` field's base64 (standard alphabet, padded), decoded; SignatureError naming the field."""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise SignatureError(f"{SIGNATURE_FILE}: not a signature record (field 'signature' is not base64: "
                             f"{text[:40]!r}).") from None


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _json_type(value: object) -> str:
    return {bool: "boolean", int: "number", float: "number", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
