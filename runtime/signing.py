"""Signed builds (the optional `[signing]` extra), in the OpenSSF model-signing format (v1.0).

`convert --sign-key` writes `model.sig` inside the folder: a Sigstore bundle (media type v0.3) whose DSSE
envelope holds an in-toto statement listing every other file of the folder with its sha256 (predicate
`https://model_signing/signature/v1.0`, serialization "files"), signed with an elliptic-curve key (P-256,
P-384 or P-521, as that standard's key signing takes) and recording the build id in its subject's annotations.
The standard tool (`model_signing verify key FOLDER --signature FOLDER/model.sig --public_key KEY.pub.pem`)
accepts it; this module checks it with `cryptography` alone, no sigstore client, no network. It returns what
the bundle signs; `runtime.artifacts` compares that with the bytes it reads, file by file.

`manifest.sig`, the format before it (Ed25519 over the canonical manifest), is still checked, for one more
release (with a warning saying how to re-sign); `sign` writes it only for the tests of that path.

`cryptography` is imported only when a key is given: `import runtime` stays light, and an unsigned service
never needs it. Keys are PEM files: a private key (PKCS#8 or the curve's own) to sign, its public key to verify.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from .contract import BUNDLE_FILE, SIGNATURE_FILE, build_id, canonical
from .errors import RepeatedKeyError, install_hint, shortened
from .errors import SignatureError as SignatureError  # defined in errors.py; importable from here as before
from .jsonstrict import loads_strict

log = logging.getLogger(__name__)

ALGORITHM = "ed25519"
INSTALL_HINT = "signed builds need the `cryptography` package: " + install_hint("signing")
KeySource = str | os.PathLike[str] | bytes  # a PEM file's path, or its bytes
RECORD_FIELDS = ("algorithm", "signature", "key_sha256", "build_id")  # manifest.sig's, all written by `sign`
SIGNATURE_BYTES = 64  # an Ed25519 signature's length
RESIGN = (f"Re-sign it: rebuild with `ensemble-onnx convert --sign-key EC_KEY.pem`, or remove {SIGNATURE_FILE} and "
          f"run `model_signing sign key FOLDER --signature FOLDER/{BUNDLE_FILE} --private_key EC_KEY.pem` "
          f"(docs/releasing.md).")

# The OpenSSF model-signing format, v1.0, as its tool (model_signing 1.1.1) writes and checks it for key signing.
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
BUILD_ID_ANNOTATION = "ensemble_onnx.build_id"  # in the subject's in-toto `annotations`, which verifiers ignore
CURVE_HASHES = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}  # the standard's curves
MAKE_KEY = ("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out KEY.pem; "
            "openssl pkey -in KEY.pem -pubout -out KEY.pub.pem")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _crypto() -> Any:
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    except ImportError:
        raise SignatureError(INSTALL_HINT) from None
    return SimpleNamespace(serialization=serialization, ed25519=ed25519, ec=ec, hashes=hashes,
                           InvalidSignature=InvalidSignature, UnsupportedAlgorithm=UnsupportedAlgorithm)


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
    c = _crypto()
    raw: bytes = public.public_bytes(c.serialization.Encoding.Raw, c.serialization.PublicFormat.Raw)
    return raw


def sign(manifest: dict[str, Any], private_key: KeySource) -> bytes:
    """The bytes of a manifest.sig (the format before model.sig) for this manifest: what builds of the releases
    before wrote, kept to test that their folders still load. `convert` writes model.sig (`sign_folder`)."""
    c = _crypto()
    serialization, ed25519 = c.serialization, c.ed25519
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
    """SignatureError unless `signature_file` (manifest.sig, the format before model.sig) is a valid signature
    of `manifest` by `public_key`, an Ed25519 key; logs a warning saying how to re-sign when it is."""
    c = _crypto()
    pem, where = _pem(public_key)
    key = _load_public(c, pem, where)
    if signature_file is None:
        raise SignatureError(f"the folder is not signed (no {BUNDLE_FILE}) and a public key was given.")
    if not isinstance(key, c.ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where}: {_key_kind(c, key)}; {SIGNATURE_FILE} (the signature format before "
                             f"{BUNDLE_FILE}) is checked with the Ed25519 key that signed it. {RESIGN}")
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
    log.warning("%s: signed in the format before %s (Ed25519 over the manifest), accepted for this release "
                "only. %s", SIGNATURE_FILE, BUNDLE_FILE, RESIGN)


def _load_public(c: Any, pem: bytes, where: str) -> Any:
    try:
        return c.serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, c.UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{where}: not a PEM public key ({exc}).") from None


def _curve_hash(c: Any, key: Any, where: str) -> Any:
    """The hash the standard pairs with the key's curve, or SignatureError for a key it does not sign with."""
    public = key.public_key() if hasattr(key, "public_key") else key  # a private key's public half
    if isinstance(public, c.ed25519.Ed25519PublicKey):
        raise SignatureError(f"{where}: an Ed25519 key; builds are signed in the OpenSSF model-signing format, "
                             f"whose key signing takes an elliptic-curve key (P-256, P-384 or P-521): {MAKE_KEY}. "
                             f"(Ed25519 keys signed {SIGNATURE_FILE}, the format before.)")
    if not isinstance(public, c.ec.EllipticCurvePublicKey) or public.curve.name not in CURVE_HASHES:
        raise SignatureError(f"{where}: {_key_kind(c, public)}; the OpenSSF model-signing format takes an "
                             f"elliptic-curve key on P-256, P-384 or P-521: {MAKE_KEY}.")
    return getattr(c.hashes, CURVE_HASHES[public.curve.name])()


def _key_kind(c: Any, public: Any) -> str:
    """A public key's kind in words, for a refusal: 'an elliptic-curve key on secp256k1', 'a key of type RSA'."""
    if isinstance(public, c.ec.EllipticCurvePublicKey):
        return f"an elliptic-curve key on {public.curve.name}"
    return f"a key of type {type(public).__name__.removesuffix('PublicKey')}"


def _key_hint(c: Any, public: Any) -> str:
    """sha256 of the public key's PEM (SubjectPublicKeyInfo), hex: the bundle's `publicKey.hint`."""
    pem: bytes = public.public_bytes(c.serialization.Encoding.PEM, c.serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding (DSSE v1.0): what the envelope's signature is over."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def signing_key(private_key: KeySource) -> Any:
    """The private key, loaded and checked (an unencrypted EC key on P-256, P-384 or P-521), or SignatureError."""
    c = _crypto()
    pem, where = _pem(private_key)
    try:
        key = c.serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, c.UnsupportedAlgorithm) as exc:
        raise SignatureError(f"{where}: not an unencrypted PEM private key ({exc}).") from None
    _curve_hash(c, key, where)
    return key


def sign_folder(files: Mapping[str, bytes], name: str, build: str, private_key: KeySource) -> bytes:
    """model.sig's bytes: an OpenSSF model-signing bundle over `files` ({'/'-separated path: bytes}, every file
    of the folder, manifest.json included), with the subject named `name` and annotated with `build`."""
    c = _crypto()
    key = signing_key(private_key)
    # The standard's order (its paths' parts, sorted), though verifiers hash the resources in the order listed.
    resources = [{"algorithm": "sha256", "digest": hashlib.sha256(data).hexdigest(), "name": rel}
                 for rel, data in sorted(files.items(), key=lambda item: item[0].split("/"))]
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": root}, "annotations": {BUILD_ID_ANNOTATION: build}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {"serialization": {"method": "files", "hash_type": "sha256", "allow_symlinks": False,
                                        "ignore_paths": [BUNDLE_FILE]},
                      "resources": resources},
    }
    payload = (json.dumps(statement, indent=2) + "\n").encode()
    algorithm = _curve_hash(c, key, "the signing key")
    try:  # RFC 6979: the same build signs to the same bytes, where cryptography and its OpenSSL offer it
        signature = key.sign(pae(PAYLOAD_TYPE, payload), c.ec.ECDSA(algorithm, deterministic_signing=True))
    except (TypeError, c.UnsupportedAlgorithm):
        signature = key.sign(pae(PAYLOAD_TYPE, payload), c.ec.ECDSA(algorithm))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": _key_hint(c, key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {"payload": base64.b64encode(payload).decode(), "payloadType": PAYLOAD_TYPE,
                         "signatures": [{"sig": base64.b64encode(signature).decode(), "keyid": ""}]},
    }
    return (json.dumps(bundle, indent=2) + "\n").encode()


@dataclass(frozen=True)
class Signed:
    """What a model.sig that verified signs: each file's sha256 (hex, lower case) by its '/'-separated path, and
    the build id it records (None in a bundle signed by another tool than `convert`)."""

    files: dict[str, str]
    build_id: str | None


def verify_bundle(bundle: bytes | None, public_key: KeySource) -> Signed:
    """What `bundle` (model.sig's bytes) signs, once its signature verifies under `public_key`; SignatureError
    naming model.sig and the field otherwise. The files themselves are the caller's to compare."""
    c = _crypto()
    pem, where = _pem(public_key)
    key = _load_public(c, pem, where)
    if bundle is None:
        raise SignatureError(f"the folder is not signed (no {BUNDLE_FILE}) and a public key was given.")
    algorithm = _curve_hash(c, key, where)
    record = _object(_json(bundle, BUNDLE_FILE), BUNDLE_FILE, "")
    if _get(record, "mediaType", str, BUNDLE_FILE) != BUNDLE_MEDIA_TYPE:
        raise SignatureError(f"{BUNDLE_FILE}: media type {shortened(record['mediaType'])}; this runtime checks "
                             f"{BUNDLE_MEDIA_TYPE} bundles (OpenSSF model signing with a key).")
    material = _get(record, "verificationMaterial", dict, BUNDLE_FILE)
    if "publicKey" not in material:  # a certificate (keyless through Sigstore, or a PKI's) vouches instead
        raise SignatureError(f"{BUNDLE_FILE}: signed with a certificate, not a key (no field "
                             f"'verificationMaterial.publicKey'); check it with `model_signing verify sigstore` or "
                             f"`model_signing verify certificate`: this runtime checks key-signed builds.")
    hint = _get(_get(material, "publicKey", dict, BUNDLE_FILE, "verificationMaterial."), "hint", str, BUNDLE_FILE,
                "verificationMaterial.publicKey.", required=False)
    if hint and hint != _key_hint(c, key):  # for the message only: the signature decides
        raise SignatureError(f"{BUNDLE_FILE}: signed by another key than {where} (its key hint is not the sha256 of "
                             f"that key).")
    envelope = _get(record, "dsseEnvelope", dict, BUNDLE_FILE)
    payload_type = _get(envelope, "payloadType", str, BUNDLE_FILE, "dsseEnvelope.")
    if payload_type != PAYLOAD_TYPE:
        raise SignatureError(f"{BUNDLE_FILE}: field 'dsseEnvelope.payloadType' is {shortened(payload_type)}, not "
                             f"{PAYLOAD_TYPE}.")
    signatures = _get(envelope, "signatures", list, BUNDLE_FILE, "dsseEnvelope.")
    if len(signatures) != 1:
        raise SignatureError(f"{BUNDLE_FILE}: field 'dsseEnvelope.signatures' holds {len(signatures)} signatures, "
                             f"not the one a key signs.")
    sig = _base64(_get(_object(signatures[0], BUNDLE_FILE, "dsseEnvelope.signatures[0]"), "sig", str, BUNDLE_FILE,
                       "dsseEnvelope.signatures[0]."), "dsseEnvelope.signatures[0].sig")
    payload = _base64(_get(envelope, "payload", str, BUNDLE_FILE, "dsseEnvelope."), "dsseEnvelope.payload")
    try:
        key.verify(sig, pae(payload_type, payload), c.ec.ECDSA(algorithm))
    except c.InvalidSignature:
        raise SignatureError(f"{BUNDLE_FILE}: the signature does not verify under {where} (signed by another key, "
                             f"or the bundle changed after signing).") from None
    return _statement(payload)


def _statement(payload: bytes) -> Signed:
    """The signed in-toto statement read as the model-signing v1.0 predicate: a digest per file, the subject's
    digest over them, serialization by files with sha256. Only what verified is read here."""
    at = f"{BUNDLE_FILE} (its statement)"
    statement = _object(_json(payload, at), at, "")
    if _get(statement, "_type", str, at) != STATEMENT_TYPE:
        raise SignatureError(f"{at}: field '_type' is {shortened(statement['_type'])}, not {STATEMENT_TYPE}.")
    if _get(statement, "predicateType", str, at) != PREDICATE_TYPE:
        raise SignatureError(f"{at}: field 'predicateType' is {shortened(statement['predicateType'])}; this runtime "
                             f"checks {PREDICATE_TYPE}.")
    subjects = _get(statement, "subject", list, at)
    if len(subjects) != 1:
        raise SignatureError(f"{at}: field 'subject' holds {len(subjects)} subjects, not the one model.")
    subject = _object(subjects[0], at, "subject[0]")
    root = _get(_get(subject, "digest", dict, at, "subject[0]."), "sha256", str, at, "subject[0].digest.")
    annotations = _get(subject, "annotations", dict, at, "subject[0].", required=False) or {}
    build = _get(annotations, BUILD_ID_ANNOTATION, str, at, "subject[0].annotations.", required=False)
    predicate = _get(statement, "predicate", dict, at)
    serialization = _get(predicate, "serialization", dict, at, "predicate.")
    for field, want in (("method", "files"), ("hash_type", "sha256")):
        if _get(serialization, field, str, at, "predicate.serialization.") != want:
            raise SignatureError(f"{at}: field 'predicate.serialization.{field}' is "
                                 f"{shortened(serialization[field])}; this runtime checks '{want}'.")
    files: dict[str, str] = {}
    listed = hashlib.sha256()
    for n, item in enumerate(_get(predicate, "resources", list, at, "predicate.")):
        prefix = f"predicate.resources[{n}]."
        resource = _object(item, at, prefix[:-1])
        name = _get(resource, "name", str, at, prefix)
        if _get(resource, "algorithm", str, at, prefix) != "sha256":
            raise SignatureError(f"{at}: field '{prefix}algorithm' is {shortened(resource['algorithm'])}, not sha256.")
        digest = _get(resource, "digest", str, at, prefix)
        if not _HEX64.fullmatch(digest):
            raise SignatureError(f"{at}: field '{prefix}digest' is {shortened(digest)}, not a sha256 (64 hex digits).")
        if name in files:
            raise SignatureError(f"{at}: file {shortened(name)} is listed twice in 'predicate.resources'.")
        files[name] = digest.lower()
        listed.update(bytes.fromhex(digest))
    if not _HEX64.fullmatch(root) or root.lower() != listed.hexdigest():
        raise SignatureError(f"{at}: field 'subject[0].digest.sha256' is not the sha256 of the files' digests (the "
                             f"statement is inconsistent).")
    return Signed(files, build)


def _json(data: bytes, at: str) -> Any:
    try:
        return loads_strict(data)  # as manifest.json is read: UTF-8, each key once, no NaN
    except RepeatedKeyError as exc:
        raise SignatureError(f"{at}: not a model-signing bundle (field {shortened(exc.key)} is written "
                             f"twice).") from None
    except ValueError as exc:  # malformed, not UTF-8, nested too deeply, NaN or Infinity
        raise SignatureError(f"{at}: not a model-signing bundle (not JSON: {str(exc)[:200]}).") from None


def _object(value: Any, at: str, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SignatureError(f"{at}: not a model-signing bundle ({f'field {path!r} is ' if path else ''}"
                             f"{_a('JSON ' + _json_type(value))}, not an object).")
    return value


def _get(obj: dict[str, Any], field: str, kind: type, at: str, prefix: str = "", required: bool = True) -> Any:
    """obj[field] if it is of `kind` (None when absent, or null, and not required); SignatureError naming the
    field otherwise."""
    value = obj.get(field)
    if value is None and not required:
        return None
    if field not in obj:
        raise SignatureError(f"{at}: not a model-signing bundle (field '{prefix}{shortened(field, quoted=False)}' "
                             f"is missing).")
    if not isinstance(value, kind) or isinstance(value, bool):
        want = {"str": "a string", "dict": "an object", "list": "an array"}[kind.__name__]
        raise SignatureError(f"{at}: not a model-signing bundle (field '{prefix}{shortened(field, quoted=False)}' "
                             f"is {_a('JSON ' + _json_type(value))}, not {want}).")
    return value


def _base64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or a character outside ASCII
        raise SignatureError(f"{BUNDLE_FILE}: not a model-signing bundle (field '{field}' is not base64: "
                             f"{text[:40]!r}).") from None


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
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)
