"""Signed builds, one promise at a time (`runtime/signing.py`): the signature record, keys given as a path or
as bytes, and every refusal (another key, an edited manifest, a key of another kind, an unreadable key file,
no cryptography). Signatures are checked with `cryptography` directly; nothing trains or loads a model.
End to end, with the OpenSSF tool: test_signing.py."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

# -------------------------------------------------------------------------------------- signing


@pytest.fixture(scope="module")
def crypto() -> Any:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    return serialization, ed25519, ec


def _pem_private(key: Any, serialization: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key: Any, serialization: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys(crypto) -> dict[str, Any]:
    serialization, ed25519, ec = crypto
    release, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    curve = ec.generate_private_key(ec.SECP256R1())
    return {"release": release, "private": _pem_private(release, serialization),
            "public": _pem_public(release, serialization), "other_public": _pem_public(other, serialization),
            "other_private": _pem_private(other, serialization),
            "ec_private": _pem_private(curve, serialization), "ec_public": _pem_public(curve, serialization)}


MANIFEST = {"schema_version": 1, "classes": ["SELL", "BUY"], "files": {"ensemble.onnx": "00" * 32}}
MANIFEST_ID = hashlib.sha256(json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_sign_writes_the_record_of_the_build_its_key_and_a_signature_over_the_canonical_manifest(keys, crypto):
    from runtime.signing import sign

    serialization, _, _ = crypto
    data = sign(MANIFEST, keys["private"])
    record = json.loads(data)
    raw_public = keys["release"].public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert set(record) == {"algorithm", "build_id", "key_sha256", "signature"}
    assert record["algorithm"] == "ed25519" and record["build_id"] == MANIFEST_ID
    assert record["key_sha256"] == hashlib.sha256(raw_public).hexdigest()
    signed_bytes = json.dumps(MANIFEST, sort_keys=True, separators=(",", ":")).encode()
    keys["release"].public_key().verify(base64.b64decode(record["signature"]), signed_bytes)  # raises if not
    assert data == (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()


def test_a_signature_verifies_under_its_key_given_as_a_path_or_as_bytes(keys, tmp_path):
    from runtime.signing import sign, verify

    private, public = tmp_path / "release.pem", tmp_path / "release.pub.pem"
    private.write_bytes(keys["private"])
    public.write_bytes(keys["public"])
    data = sign(MANIFEST, private)
    assert verify(MANIFEST, data, public) is None
    assert verify(copy.deepcopy(MANIFEST), data, keys["public"]) is None
    assert verify(MANIFEST, sign(MANIFEST, str(private)), str(public)) is None


def _record(data: bytes, **changes: object) -> bytes:
    record = json.loads(data)
    record.update(changes)
    return json.dumps(record).encode()


def _refusal(manifest: dict[str, Any], signature: bytes | None, public_key: Any) -> str:
    from runtime.signing import SignatureError, verify

    with pytest.raises(SignatureError) as caught:
        verify(manifest, signature, public_key)
    return str(caught.value)


def test_an_unsigned_folder_is_refused_when_a_key_is_given(keys):
    assert _refusal(MANIFEST, None, keys["public"]) == (
        "the folder is not signed (no model.sig) and a public key was given.")


def test_another_key_s_signature_is_refused_naming_the_key(keys, tmp_path):
    from runtime.signing import sign

    public = tmp_path / "release.pub.pem"
    public.write_bytes(keys["public"])
    assert _refusal(MANIFEST, sign(MANIFEST, keys["other_private"]), public) == (
        f"manifest.sig: the signature does not match {public}: the folder was signed by another key.")
    assert _refusal(MANIFEST, sign(MANIFEST, keys["private"]), keys["other_public"]) == (
        "manifest.sig: the signature does not match the given key: the folder was signed by another key.")


def test_a_manifest_changed_after_signing_is_refused_naming_the_signed_build(keys):
    from runtime.signing import sign

    changed = {**MANIFEST, "classes": ["BUY", "SELL"]}
    assert _refusal(changed, sign(MANIFEST, keys["private"]), keys["public"]) == (
        f"manifest.sig: the signature does not match manifest.json (signed for build '{MANIFEST_ID}'; the manifest "
        f"changed after signing).")


def test_a_signature_that_is_not_the_manifest_s_is_refused(keys):
    from runtime.signing import sign

    data = sign(MANIFEST, keys["private"])
    forged = base64.b64encode(keys["release"].sign(b"another manifest")).decode()
    assert _refusal(MANIFEST, _record(data, signature=forged), keys["public"]) == (
        "manifest.sig: the signature does not match manifest.json under the given key (signed by another key, or "
        "the manifest changed after signing).")


def test_a_signature_with_characters_outside_base64_is_refused_not_cleaned(keys):
    from runtime.signing import sign

    data = sign(MANIFEST, keys["private"])
    signature = json.loads(data)["signature"]
    refused = _refusal(MANIFEST, _record(data, signature=signature[:8] + "*" + signature[8:]), keys["public"])
    assert refused.startswith("manifest.sig: not a signature record (")


@pytest.mark.parametrize(("record", "says"), [
    (b"not json", "manifest.sig: not a signature record (not JSON: Expecting value: line 1 column 1 (char 0))."),
    (b"{}", "manifest.sig: not a signature record (field 'algorithm' is missing)."),
    (b'{"signature": ""}', "manifest.sig: not a signature record (field 'algorithm' is missing)."),
    (b"[]", "manifest.sig: not a signature record (a JSON array, not an object)."),
    (b'{"signature": 5, "algorithm": "ed25519"}', "manifest.sig: not a signature record (field 'signature' is a "
                                                   "JSON number, not a string)."),
    (b'{"signature": "", "algorithm": "rsa", "key_sha256": "", "build_id": ""}',
     "manifest.sig: algorithm 'rsa'; this runtime checks ed25519."),
    (b'{"signature": "", "algorithm": "rsa", "algorithm": "ed25519"}',
     "manifest.sig: not a signature record (field 'algorithm' is written twice)."),
])
def test_a_signature_file_that_is_no_record_is_refused(keys, record, says):
    assert _refusal(MANIFEST, record, keys["public"]) == says


def test_keys_that_are_not_ed25519_are_refused_by_their_kind(keys, tmp_path):
    from runtime.signing import RESIGN, SignatureError, sign

    assert _refusal(MANIFEST, b"{}", keys["ec_public"]) == (
        f"the given key: an elliptic-curve key on secp256r1; manifest.sig (the signature format before model.sig) is "
        f"checked with the Ed25519 key that signed it. {RESIGN}")
    private = tmp_path / "ec.pem"
    private.write_bytes(keys["ec_private"])
    with pytest.raises(SignatureError) as caught:
        sign(MANIFEST, private)
    assert str(caught.value) == (f"{private}: an ECPrivateKey; signing takes an Ed25519 key (openssl genpkey "
                                 f"-algorithm ed25519 -out KEY.pem).")


def test_what_is_not_a_pem_key_is_refused_with_the_reason(keys, crypto):
    from runtime.signing import SignatureError, sign

    serialization, _, _ = crypto
    refused = _refusal(MANIFEST, b"{}", b"not a key")
    assert refused.startswith("the given key: not a PEM public key (") and refused.endswith(").")
    assert _refusal(MANIFEST, b"{}", keys["private"]).startswith("the given key: not a PEM public key (")
    encrypted = keys["release"].private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"secret"))
    for key in (b"not a key", encrypted, keys["public"]):
        with pytest.raises(SignatureError) as caught:
            sign(MANIFEST, key)
        assert str(caught.value).startswith("the given key: not an unencrypted PEM private key (")


def test_a_key_path_that_is_no_regular_file_is_refused_without_blocking(crypto, tmp_path):
    from runtime.signing import sign

    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    open_before = len(os.listdir("/proc/self/fd")) if Path("/proc/self/fd").exists() else None
    for where in (tmp_path, fifo):
        assert _refusal(MANIFEST, b"{}", where) == (
            f"{where}: the key is not a regular file (a folder, FIFO or device); name the PEM file.")
    if open_before is not None:
        assert len(os.listdir("/proc/self/fd")) == open_before  # the refused key's descriptor is closed
    missing = tmp_path / "missing.pem"
    assert _refusal(MANIFEST, b"{}", missing) == f"{missing}: cannot read the key (No such file or directory)."
    from runtime.signing import SignatureError

    with pytest.raises(SignatureError, match="cannot read the key"):
        sign(MANIFEST, missing)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="Linux only: /proc/self/mem fails its read")
def test_a_key_file_that_fails_its_read_is_refused(crypto):
    assert _refusal(MANIFEST, b"{}", "/proc/self/mem") == "/proc/self/mem: cannot read the key (Input/output error)."


def test_a_key_file_of_the_size_limit_is_read_whole_and_one_byte_more_is_refused(keys, tmp_path):
    from runtime.signing import MAX_KEY_BYTES, sign, verify

    assert MAX_KEY_BYTES == 64 * 1024
    padded = tmp_path / "padded.pub.pem"
    # Text before the PEM armour is ignored by the reader.
    pem = keys["public"].rstrip(b"\n")  # so that the limit's last byte is the armour's last '-'
    padded.write_bytes(b"#" * (MAX_KEY_BYTES - len(pem) - 1) + b"\n" + pem)
    assert padded.stat().st_size == MAX_KEY_BYTES
    assert verify(MANIFEST, sign(MANIFEST, keys["private"]), padded) is None
    padded.write_bytes(b"#" + padded.read_bytes())
    assert _refusal(MANIFEST, b"{}", padded) == (
        f"{padded}: {MAX_KEY_BYTES + 1} bytes is not a PEM key (limit {MAX_KEY_BYTES}).")


def test_without_cryptography_a_key_is_refused_with_the_install_hint(monkeypatch):
    from runtime.signing import INSTALL_HINT, sign

    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)  # as on a host without the extra
    assert INSTALL_HINT == ("signed builds need the `cryptography` package: pip install --find-links dist/ "
                            "'ensemble-onnx[signing]' (dist/: the folder with the wheel `make dist` builds), or pip "
                            "install '.[signing]' in a clone of the repository")
    assert _refusal(MANIFEST, None, b"key") == INSTALL_HINT
    from runtime.signing import SignatureError

    with pytest.raises(SignatureError) as caught:
        sign(MANIFEST, b"key")
    assert str(caught.value) == INSTALL_HINT

