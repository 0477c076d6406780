"""Signed builds: `convert --sign-key` writes model.sig in the OpenSSF model-signing format, which the standard
tool (model_signing, the dev extra) and the runtime (cryptography alone) both accept, and both refuse after the
same edits; the former manifest.sig still loads for one release, with a warning saying how to re-sign.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import model_signing
import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from domain_rows import centre
from test_trust import invoke, read_manifest, rebind, scores

import runtime
from convert.cli import main
from runtime import contract
from runtime.signing import sign, sign_folder

MODEL_SIG = "model.sig"
STANDARD_CLI = Path(sys.executable).with_name("model_signing")


def _write_key(key, folder: Path, name: str) -> tuple[Path, Path]:
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


@pytest.fixture(scope="session")
def rows() -> np.ndarray:
    from convert.demo import DemoSpec, market_data

    return np.ascontiguousarray(market_data(DemoSpec())[0][:16], dtype=np.float64)


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> Path:
    """A folder of real keys: release (P-256, the build's), other (P-384), ed (Ed25519, the former format's),
    rsa (no curve at all); each as NAME.pem and NAME.pub.pem."""
    folder = tmp_path_factory.mktemp("keys")
    _write_key(ec.generate_private_key(ec.SECP256R1()), folder, "release")
    _write_key(ec.generate_private_key(ec.SECP384R1()), folder, "other")
    _write_key(ed25519.Ed25519PrivateKey.generate(), folder, "ed")
    _write_key(rsa.generate_private_key(65537, 2048), folder, "rsa")
    return folder


@pytest.fixture(scope="session")
def signed(demo_models, keys, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(a folder built and signed by `convert --sign-key`, its public key, another key's public key)"""
    out = tmp_path_factory.mktemp("signed") / "artifacts"
    result = invoke("convert", demo_models, "-o", out, "--sign-key", keys / "release.pem", "-q")
    assert result.exit_code == 0, result.output
    assert f"build_id: {contract.build_id(read_manifest(out))}" in result.output
    return out, keys / "release.pub.pem", keys / "other.pub.pem"


@pytest.fixture
def signed_copy(signed, tmp_path) -> Path:
    return Path(shutil.copytree(signed[0], tmp_path / "signed"))


def standard(folder: Path, public: Path) -> None:
    """The standard verifier's library call, as `model_signing verify key` makes it; raises when it refuses."""
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=public).verify(folder, folder / MODEL_SIG)


def standard_cli(folder: Path, public: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(STANDARD_CLI), "verify", "key", str(folder), "--signature", str(folder / MODEL_SIG),
                           "--public_key", str(public)], capture_output=True, text=True)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != MODEL_SIG}


def _resign(folder: Path, private: Path) -> None:
    """What one holding another key does: sign the folder as it stands, as `convert` would."""
    (folder / MODEL_SIG).write_bytes(sign_folder(folder_files(folder), folder.name,
                                                 contract.build_id(read_manifest(folder)), private))


def _forge(folder: Path) -> None:
    manifest = read_manifest(folder)
    manifest["classes"] = manifest["classes"][::-1]
    rebind(folder, manifest)


def _flip(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(data)


def _member(folder: Path) -> Path:
    return folder / next(rel for rel in read_manifest(folder)["files"] if rel.startswith("members/"))


# ------------------------------------------------------------------------------ the build, both verifiers

def test_a_signed_build_passes_the_standard_verifier_and_the_runtime(signed, rows):
    folder, public, _ = signed
    standard(folder, public)
    done = standard_cli(folder, public)
    assert done.returncode == 0 and "Verification succeeded" in done.stdout, done.stderr
    assert scores(runtime.load(folder, public_key=public), rows) == scores(runtime.load(folder), rows)


def test_the_bundle_is_the_standard_format_over_every_file_with_the_build_id(signed):
    folder, _, _ = signed
    bundle = json.loads((folder / MODEL_SIG).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and len(envelope["signatures"]) == 1
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert statement["predicate"]["serialization"] == {"method": "files", "hash_type": "sha256",
                                                       "allow_symlinks": False, "ignore_paths": [MODEL_SIG]}
    signed_files = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    assert signed_files == {rel: hashlib.sha256(data).hexdigest() for rel, data in folder_files(folder).items()}
    assert "manifest.json" in signed_files and set(read_manifest(folder)["files"]) < set(signed_files)
    [subject] = statement["subject"]
    assert subject["annotations"] == {"ensemble_onnx.build_id": contract.build_id(read_manifest(folder))}
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in statement["predicate"]["resources"]))
    assert subject["digest"] == {"sha256": root.hexdigest()} and subject["name"] == folder.name


def test_the_same_files_sign_to_the_same_bytes(signed, keys):
    folder, _, _ = signed
    files = folder_files(folder)
    build = contract.build_id(read_manifest(folder))
    assert sign_folder(files, "artifacts", build, keys / "release.pem") == (folder / MODEL_SIG).read_bytes()


# Each edit, and what the runtime says; the standard verifier must refuse each as well.
EDITS = [
    ("a flipped byte in a member", lambda f, k: _flip(_member(f)), "sha256 does not match model.sig"),
    ("a flipped byte in the manifest", lambda f, k: _flip(f / "manifest.json", 40),
     "manifest.json: sha256 does not match model.sig"),
    ("an added file", lambda f, k: (f / "extra.txt").write_text("x"), "extra.txt: not signed in model.sig"),
    ("an added member file", lambda f, k: (f / "members" / "extra.onnx").write_bytes(b"x"),
     "extra.onnx: not signed in model.sig"),
    ("a removed file", lambda f, k: (f / "README.md").unlink(), "README.md: missing"),
    ("a removed member", lambda f, k: _member(f).unlink(), ".onnx: missing"),
    ("re-signed with another key", lambda f, k: _resign(f, k / "other.pem"), "signed by another key"),
    ("a forged manifest re-signed with another key", lambda f, k: (_forge(f), _resign(f, k / "other.pem")),
     "signed by another key"),
    ("a forged manifest re-signed with the same key type and no key hint",
     lambda f, k: (_forge(f), _resign(f, k / "release2.pem"), _drop_hint(f)), "the signature does not verify"),
    ("the signature removed", lambda f, k: (f / MODEL_SIG).unlink(), "not signed (no model.sig)"),
]


def _drop_hint(folder: Path) -> None:
    bundle = json.loads((folder / MODEL_SIG).read_text())
    del bundle["verificationMaterial"]["publicKey"]["hint"]
    (folder / MODEL_SIG).write_text(json.dumps(bundle))


@pytest.fixture(scope="session")
def second_release_key(keys) -> Path:
    """Another P-256 key: one the standard verifier's key hint alone cannot tell from the release key's type."""
    _write_key(ec.generate_private_key(ec.SECP256R1()), keys, "release2")
    return keys / "release2.pem"


@pytest.mark.parametrize(("edit", "says"), [(e[1], e[2]) for e in EDITS], ids=[e[0] for e in EDITS])
def test_the_standard_verifier_and_the_runtime_refuse_the_same_edits(signed, signed_copy, keys, second_release_key,
                                                                     edit, says):
    _, public, _ = signed
    edit(signed_copy, keys)
    with pytest.raises(Exception) as refused:  # ValueError, InvalidSignature or FileNotFoundError, by the edit
        standard(signed_copy, public)
    assert refused.value is not None
    if (signed_copy / MODEL_SIG).exists():
        assert standard_cli(signed_copy, public).returncode == 1
    with pytest.raises(runtime.ArtifactError, match=re.escape(says)):
        runtime.load(signed_copy, public_key=public)


def test_the_standard_verifiers_refusals_are_for_the_edit(signed, signed_copy):
    """Not some other failure: the standard tool names the changed, added and removed files."""
    _, public, _ = signed
    _flip(_member(signed_copy))
    (signed_copy / "extra.txt").write_text("x")
    (signed_copy / "README.md").unlink()
    with pytest.raises(ValueError) as refused:
        standard(signed_copy, public)
    said = str(refused.value)
    assert "extra.txt" in said and "README.md" in said and _member(signed_copy).name in said, said


def test_the_wrong_public_key_is_refused(signed):
    folder, _, other = signed
    with pytest.raises(runtime.ArtifactError, match="signed by another key"):
        runtime.load(folder, public_key=other)
    with pytest.raises(ValueError, match="Key mismatch"):
        standard(folder, other)


def test_a_folder_the_standard_tool_signed_loads_under_its_key(signed, signed_copy, keys, rows):
    """The runtime checks the format, not `convert`'s writing of it: the standard tool's own signature of a build
    (no build id recorded) loads, and is refused after an edit like any other."""
    folder, _, _ = signed
    (signed_copy / MODEL_SIG).unlink()
    _standard_sign(signed_copy, keys / "other.pem")
    loaded = runtime.load(signed_copy, public_key=keys / "other.pub.pem")
    assert scores(loaded, rows) == scores(runtime.load(folder), rows)
    _flip(_member(signed_copy))
    with pytest.raises(runtime.ArtifactError, match="sha256 does not match model.sig"):
        runtime.load(signed_copy, public_key=keys / "other.pub.pem")


def test_signature_checks_through_the_cli(signed, demo_models, tmp_path):
    folder, public, other = signed
    ok = invoke("verify", folder, "--models", demo_models, "--public-key", public, "-q")
    assert ok.exit_code == 0 and f"build_id: {contract.build_id(read_manifest(folder))}" in ok.output, ok.output
    refused = invoke("verify", folder, "--models", demo_models, "--public-key", other, "-q")
    assert refused.exit_code == 1 and "signed by another key" in refused.output
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps(centre(runtime.load(folder))) + "\n")  # a row the build takes
    assert invoke("predict", folder, "--input", rows_file, "--public-key", public).exit_code == 0
    refused = invoke("predict", folder, "--input", rows_file, "--public-key", other)
    assert refused.exit_code == 1 and "signed by another key" in refused.output, refused.output


def test_workers_check_the_bundle_on_the_files_sent(signed):
    from runtime.artifacts import read_files, verify_files

    folder, public, other = signed
    sent = read_files(folder)
    assert sent[MODEL_SIG] == (folder / MODEL_SIG).read_bytes()
    assert verify_files(sent, public_key=public).bundle == sent[MODEL_SIG]
    with pytest.raises(runtime.ArtifactError, match="signed by another key"):
        verify_files(sent, public_key=other)
    with pytest.raises(runtime.ArtifactError, match="extra.txt: not signed in model.sig"):
        verify_files({**sent, "extra.txt": b"x"}, public_key=public)
    with pytest.raises(runtime.ArtifactError, match="not signed in model.sig"):
        verify_files({**sent, "manifest.sig": b"{}"}, public_key=public)


def test_a_git_file_the_standard_tool_skips_by_default_is_refused_by_the_runtime(signed, signed_copy):
    """The one place the two differ, on purpose: model_signing skips .git, .gitattributes, .github and .gitignore
    unless told not to; the runtime serves a folder that holds exactly what was signed."""
    _, public, _ = signed
    (signed_copy / ".gitignore").write_text("*\n")
    standard(signed_copy, public)  # accepted: ignored by the standard's default
    with pytest.raises(runtime.ArtifactError, match=re.escape(".gitignore: not signed in model.sig")):
        runtime.load(signed_copy, public_key=public)


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_every_curve_the_standard_takes_signs_what_both_verifiers_accept(tmp_path, curve):
    from runtime.signing import verify_bundle

    private, public = _write_key(ec.generate_private_key(curve), tmp_path, "key")
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    files = {"a.txt": b"a", "sub/b.bin": bytes(range(256))}
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    (folder / MODEL_SIG).write_bytes(sign_folder(files, "model", "0" * 64, private))
    standard(folder, public)
    signed = verify_bundle((folder / MODEL_SIG).read_bytes(), public)
    assert signed.files == {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    assert signed.build_id == "0" * 64
    (folder / "a.txt").write_bytes(b"b")
    with pytest.raises(ValueError, match="Hash mismatch for 'a.txt'"):
        standard(folder, public)


# ------------------------------------------------------------------------------------------------- keys

@pytest.mark.parametrize(("name", "says"), [
    ("ed", "an Ed25519 key; builds are signed in the OpenSSF model-signing format"),
    ("rsa", "a key of type RSA; the OpenSSF model-signing format takes an elliptic-curve key on P-256"),
    ("secp256k1", "an elliptic-curve key on secp256k1; the OpenSSF model-signing format takes"),
    ("garbage", "not an unencrypted PEM private key"),
])
def test_convert_refuses_a_key_that_cannot_sign_before_building(keys, tmp_path, name, says):
    if name == "secp256k1":
        _write_key(ec.generate_private_key(ec.SECP256K1()), tmp_path, name)
        key = tmp_path / f"{name}.pem"
    elif name == "garbage":
        key = tmp_path / "garbage.pem"
        key.write_text("not a key")
    else:
        key = keys / f"{name}.pem"
    result = invoke("convert", tmp_path, "-o", tmp_path.with_name(tmp_path.name + "-out"), "--sign-key", key, "-q")
    assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output, result.output
    assert not tmp_path.with_name(tmp_path.name + "-out").exists()


def test_an_ed25519_public_key_is_refused_for_a_bundle_saying_which_keys_serve(signed, keys):
    folder, _, _ = signed
    with pytest.raises(runtime.ArtifactError, match="an Ed25519 key; builds are signed in the OpenSSF"):
        runtime.load(folder, public_key=keys / "ed.pub.pem")


def _unresolvable(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """{kind: (a key path that is a symbolic link that cannot be resolved, the reason named)}"""
    loop, dangling = tmp_path / "loop.pem", tmp_path / "dangling.pem"
    loop.symlink_to(loop)
    dangling.symlink_to(tmp_path / "nowhere.pem")
    return {"loop": (loop, "a loop of links"), "dangling": (dangling, "it leads to no file")}


@pytest.mark.parametrize("kind", ["loop", "dangling"])
def test_a_key_that_is_a_link_that_cannot_be_resolved_is_refused_for_what_it_is(demo_artifacts, tmp_path, kind):
    key, reason = _unresolvable(tmp_path)[kind]
    says = f"{key}: the key is a symbolic link that cannot be resolved ({reason}); name the PEM file."
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(demo_artifacts, public_key=key)
    assert str(err.value) == f"{demo_artifacts}: {says}"
    predicted = CliRunner().invoke(main, ["predict", str(demo_artifacts), "--public-key", str(key)], input="")
    assert predicted.exit_code == 1 and predicted.output.strip().endswith(says), predicted.output
    assert "Traceback" not in predicted.output


def test_a_sign_key_that_is_a_link_that_cannot_be_resolved_is_refused_before_building(tmp_path):
    key, reason = _unresolvable(tmp_path)["loop"]
    signed = invoke("convert", tmp_path, "-o", tmp_path.with_name(tmp_path.name + "-out"), "--sign-key", key, "-q")
    assert signed.exit_code == 1 and signed.output.strip().endswith(
        f"--sign-key: {key}: the key is a symbolic link that cannot be resolved ({reason}); name the PEM file."), \
        signed.output
    assert "Traceback" not in signed.output and not tmp_path.with_name(tmp_path.name + "-out").exists()


def test_the_runtime_checks_a_bundle_with_cryptography_alone(signed, demo_artifacts):
    """No sigstore client, no model_signing, on a serving host: cryptography only when a key is given."""
    folder, public, _ = signed
    code = ("import runtime, sys; runtime.load({!r}{}); "
            "print(sorted(m for m in ('cryptography', 'sigstore', 'model_signing', 'sigstore_models', 'OpenSSL', "
            "'in_toto_attestation', 'requests', 'urllib3') if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}

    def imported(path: Path, key: str) -> str:
        return subprocess.run([sys.executable, "-c", code.format(str(path), key)], capture_output=True, text=True,
                              env=env).stdout.strip()
    assert imported(demo_artifacts, "") == "[]"
    assert imported(folder, f", public_key={str(public)!r}") == "['cryptography']"


# --------------------------------------------------------------------------------- the bundle, field by field

def _bundle(folder: Path) -> dict:
    return json.loads((folder / MODEL_SIG).read_text())


def _statement(bundle: dict) -> dict:
    return json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def _signed_statement(folder: Path, private: Path, edit) -> None:
    """Edit the statement, then sign it again with the release key: what a buggy or hostile signer writes."""
    bundle = _bundle(folder)
    statement = _statement(bundle)
    edit(statement)
    payload = json.dumps(statement).encode()
    kind = b"application/vnd.in-toto+json"
    pae = b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)  # DSSE v1.0, written out here
    key = serialization.load_pem_private_key(private.read_bytes(), None)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(
        key.sign(pae, ec.ECDSA(hashes.SHA256()))).decode()
    (folder / MODEL_SIG).write_text(json.dumps(bundle))


def _set(obj: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if value is KeyError:
        del obj[last]
    else:
        obj[last] = value


@pytest.mark.parametrize(("path", "value", "says"), [
    ("mediaType", "application/vnd.dev.sigstore.bundle.v0.2+json", "model.sig: media type "),
    ("mediaType", KeyError, "model.sig: not a model-signing bundle (field 'mediaType' is missing)."),
    ("verificationMaterial.publicKey", KeyError, "model.sig: signed with a certificate, not a key"),
    ("verificationMaterial.publicKey.hint", 5, "field 'verificationMaterial.publicKey.hint' is a JSON number, not "
                                               "a string"),
    ("dsseEnvelope.payloadType", "text/plain", "field 'dsseEnvelope.payloadType' is 'text/plain'"),
    ("dsseEnvelope.signatures", [], "field 'dsseEnvelope.signatures' holds 0 signatures"),
    ("dsseEnvelope.signatures.0.sig", "not base64!", "field 'dsseEnvelope.signatures[0].sig' is not base64"),
    ("dsseEnvelope.payload", "e30=", "the signature does not verify"),
    ("dsseEnvelope", [], "field 'dsseEnvelope' is a JSON array, not an object"),
])
def test_a_bad_bundle_field_is_refused_naming_it(signed, signed_copy, path, value, says):
    _, public, _ = signed
    bundle = _bundle(signed_copy)
    _set(bundle, path, value)
    (signed_copy / MODEL_SIG).write_text(json.dumps(bundle))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(signed_copy, public_key=public)
    assert says in str(err.value), str(err.value)


@pytest.mark.parametrize(("data", "says"), [
    (b"not json", "model.sig: not a model-signing bundle (not JSON"),
    (b"[]", "model.sig: not a model-signing bundle (a JSON array, not an object)."),
    (b'{"mediaType": 1, "mediaType": 2}', "model.sig: not a model-signing bundle (field 'mediaType' is written "
                                          "twice)."),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_bundle_that_is_no_json_object_is_refused(signed, signed_copy, data, says):
    _, public, _ = signed
    (signed_copy / MODEL_SIG).write_bytes(data)
    with pytest.raises(runtime.ArtifactError, match="model.sig") as err:
        runtime.load(signed_copy, public_key=public)
    assert says in str(err.value), str(err.value)


def _first_resource(statement: dict) -> dict:
    return statement["predicate"]["resources"][0]


@pytest.mark.parametrize(("edit", "says"), [
    (lambda s: s.update(_type="https://in-toto.io/Statement/v0.1"), "field '_type' is"),
    (lambda s: s.update(predicateType="https://model_signing/Digests/v0.1"), "field 'predicateType' is"),
    (lambda s: s["subject"].append(s["subject"][0]), "field 'subject' holds 2 subjects"),
    (lambda s: s["predicate"]["serialization"].update(method="shards"),
     "field 'predicate.serialization.method' is 'shards'; this runtime checks 'files'"),
    (lambda s: s["predicate"]["serialization"].update(hash_type="blake3"),
     "field 'predicate.serialization.hash_type' is 'blake3'"),
    (lambda s: _first_resource(s).update(algorithm="sha512"), "field 'predicate.resources[0].algorithm' is"),
    (lambda s: _first_resource(s).update(digest="ab" * 16), "field 'predicate.resources[0].digest' is"),
    (lambda s: _first_resource(s).pop("name"), "field 'predicate.resources[0].name' is missing"),
    (lambda s: s["predicate"]["resources"].append(dict(_first_resource(s))), "is listed twice"),
    (lambda s: s["subject"][0]["digest"].update(sha256="0" * 64), "is not the sha256 of the files' digests"),
    (lambda s: s["subject"][0]["annotations"].update({"ensemble_onnx.build_id": "0" * 64}), "records build"),
    (lambda s: s["subject"][0]["annotations"].update({"ensemble_onnx.build_id": 7}),
     "field 'subject[0].annotations.ensemble_onnx.build_id' is a JSON number"),
])
def test_a_signed_statement_that_is_not_a_build_is_refused_naming_the_field(signed, signed_copy, keys, edit, says):
    _, public, _ = signed
    _signed_statement(signed_copy, keys / "release.pem", edit)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(signed_copy, public_key=public)
    assert says in str(err.value), str(err.value)


def test_a_statement_that_signs_another_set_of_files_is_refused(signed, signed_copy, keys):
    _, public, _ = signed

    def drop_readme(statement: dict) -> None:
        resources = [r for r in statement["predicate"]["resources"] if r["name"] != "README.md"]
        statement["predicate"]["resources"] = resources
        root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
        statement["subject"][0]["digest"]["sha256"] = root

    _signed_statement(signed_copy, keys / "release.pem", drop_readme)
    with pytest.raises(runtime.ArtifactError, match="README.md: listed in manifest.json but not signed in model.sig"):
        runtime.load(signed_copy, public_key=public)


def _verified_part(bundle: bytes) -> tuple:
    """What a verifier decides by: the media type, payload type, payload and signature (the key hint, which may be
    left out, only says sooner that another key signed)."""
    b = json.loads(bundle)
    envelope = b["dsseEnvelope"]
    return (b["mediaType"], envelope["payloadType"],
            base64.b64decode(envelope["payload"]), [base64.b64decode(s["sig"]) for s in envelope["signatures"]])


def test_no_flip_of_the_signature_loads_under_the_key_unless_it_changes_nothing_read(signed_copy, signed):
    """A flip that loads may only touch what the format leaves unread (a field name outside the signed
    statement that verifiers ignore, as in-toto and Sigstore say they must): what is verified stays the same."""
    _, public, _ = signed
    path = signed_copy / MODEL_SIG
    original = path.read_bytes()
    loaded = []
    for pos in range(0, len(original), 5):  # every fifth byte: each field, the base64 and the JSON around it
        changed = bytearray(original)
        changed[pos] ^= 0x01
        path.write_bytes(changed)
        try:
            runtime.load(signed_copy, public_key=public)
        except runtime.ArtifactError:
            continue
        loaded.append(pos)
        assert _verified_part(bytes(changed)) == _verified_part(original), f"byte {pos}"
    path.write_bytes(original)
    assert len(loaded) < 10, loaded  # the few bytes of names such as 'tlogEntries' and 'keyid', no more


# --------------------------------------------------------------------------- the former format, one release

@pytest.fixture
def legacy(signed_copy, keys) -> Path:
    """A folder signed as the releases before signed: manifest.sig, Ed25519 over the canonical manifest."""
    (signed_copy / MODEL_SIG).unlink()
    (signed_copy / "manifest.sig").write_bytes(sign(read_manifest(signed_copy), keys / "ed.pem"))
    return signed_copy


def test_a_folder_signed_in_the_former_format_loads_with_a_warning_saying_how_to_re_sign(legacy, keys, caplog):
    with caplog.at_level(logging.WARNING, logger="runtime.signing"):
        runtime.load(legacy, public_key=keys / "ed.pub.pem")
    [record] = caplog.records
    assert "manifest.sig: signed in the format before model.sig" in record.message
    assert "--sign-key EC_KEY.pem" in record.message and "model_signing sign key FOLDER" in record.message
    caplog.clear()
    runtime.load(legacy)  # no key: nothing checked, nothing said
    assert caplog.records == []


def test_the_former_format_is_still_refused_after_any_change(legacy, keys):
    _forge(legacy)
    with pytest.raises(runtime.ArtifactError, match="manifest.sig: the signature does not match manifest.json"):
        runtime.load(legacy, public_key=keys / "ed.pub.pem")


def test_an_ec_key_on_a_folder_of_the_former_format_says_how_to_re_sign(legacy, keys):
    with pytest.raises(runtime.ArtifactError, match="is checked with the Ed25519 key that signed it. Re-sign it"):
        runtime.load(legacy, public_key=keys / "release.pub.pem")


def test_the_predict_command_shows_the_warning_on_stderr(legacy, keys, tmp_path):
    rows_file = tmp_path / "rows.jsonl"
    rows_file.write_text(json.dumps(centre(runtime.load(legacy))) + "\n")  # a row the build takes
    done = subprocess.run([sys.executable, "-m", "convert.cli", "predict", str(legacy), "--input", str(rows_file),
                           "--public-key", str(keys / "ed.pub.pem")], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})
    assert done.returncode == 0, done.stderr
    assert "signed in the format before model.sig" in done.stderr and "Re-sign it" in done.stderr


def _standard_sign(folder: Path, private: Path) -> None:
    done = subprocess.run([str(STANDARD_CLI), "sign", "key", str(folder), "--signature", str(folder / MODEL_SIG),
                           "--private_key", str(private)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_former_folder_re_signed_with_its_old_signature_inside_is_refused_saying_to_remove_it(legacy, keys):
    _standard_sign(legacy, keys / "release.pem")  # manifest.sig left in: the standard signs it as a file
    with pytest.raises(runtime.ArtifactError, match="model.sig signs manifest.sig, the former signature: remove it "
                                                    "and sign the folder again"):
        runtime.load(legacy, public_key=keys / "release.pub.pem")


def test_a_former_folder_re_signed_as_the_warning_says_loads_without_it(legacy, keys, caplog):
    (legacy / "manifest.sig").unlink()
    _standard_sign(legacy, keys / "release.pem")
    with caplog.at_level(logging.WARNING, logger="runtime.signing"):
        runtime.load(legacy, public_key=keys / "release.pub.pem")
    assert caplog.records == []
