"""Loading and serving, pinned where `make mutation` found the runtime tests silent: `runtime/__init__.py`
(Ensemble, load), `runtime/artifacts.py` (the verified folder and wire readers), `runtime/features.py` (what
callers hand in) and the parity gate's comparison. The graph bound to its manifest: test_graph_binding.py.

Builds that differ from the demo build in their manifest are made the way a careful forger (or an older
builder) would make them: the edited manifest is bound into ensemble.onnx's metadata again and re-hashed, so
the folder is consistent and loads; what the runtime does with it is the promise under test."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from domain_rows import typical_rows
from forge import REBUILD, Edit, rebound, write_manifest

import runtime
import runtime.features
import runtime.limits
import runtime.records
from runtime.errors import RepeatedKeyError
from runtime.jsonstrict import loads_unique


def _without_precision(m: dict[str, Any]) -> None:
    del m["precision"]


def _int8(m: dict[str, Any]) -> None:
    m["precision"] = {"weights": "int8", "scheme": "test"}


def _precision_without_weights(m: dict[str, Any]) -> None:
    m["precision"] = {"scheme": "test"}


EDITS: dict[str, Edit] = {"no precision": _without_precision, "int8": _int8,
                          "precision without weights": _precision_without_weights}


class Builds(dict[str, runtime.Ensemble]):
    """The demo build and consistent variants of it (EDITS), each made and loaded once, when first asked for."""

    def __init__(self, demo_artifacts: Path, where: Path) -> None:
        super().__init__()
        self.demo_artifacts, self.where = demo_artifacts, where

    def __missing__(self, name: str) -> runtime.Ensemble:
        folder = (self.demo_artifacts if name == "demo"
                  else rebound(self.demo_artifacts, self.where / name.replace(" ", "-"), EDITS[name]))
        self[name] = runtime.load(folder)
        return self[name]


@pytest.fixture(scope="module")
def builds(demo_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> Builds:
    return Builds(demo_artifacts, tmp_path_factory.mktemp("builds"))


def features(ens: runtime.Ensemble, n: int = 3) -> np.ndarray:
    """n rows the build takes: inside the domain its gate proved (tests/domain_rows.py)."""
    return typical_rows(ens, n, seed=7)


# ----------------------------------------------------------------------------- describe() and the host

@pytest.mark.parametrize(("build", "precision"), [
    ("demo", {"weights": "fp32"}),
    ("no precision", {"weights": "fp32"}),     # folders written before `precision` existed are fp32
    ("int8", {"weights": "int8", "scheme": "test"}),
    ("precision without weights", {"scheme": "test"}),
])
def test_describe_reports_the_precision_block_or_fp32_without_one(builds, build, precision):
    assert builds[build].describe()["precision"] == precision


FAKE_CPUINFO = {"model name": "Test CPU 9000", "flags": "fpu avx2 fma sse4_2"}
NO_VNNI_NOTE = ("Test CPU 9000 has none of AVX-512 VNNI, AVX-VNNI, AMX-INT8 (or NEON dot product): onnxruntime's "
                "8-bit kernels emulate them, and an int8 build can be slower than fp32 here. Benchmark both on the "
                "serving host (`ensemble-onnx bench FP32 INT8 --models ...`).")


@pytest.mark.parametrize(("build", "note"), [
    ("demo", None), ("no precision", None), ("precision without weights", None), ("int8", NO_VNNI_NOTE)])
def test_only_an_int8_build_warns_a_host_without_8_bit_dot_products(builds, monkeypatch, build, note):
    import os

    import runtime.host

    monkeypatch.setattr(runtime.host, "_cpuinfo", lambda: dict(FAKE_CPUINFO))
    host = {"model": "Test CPU 9000", "cores": os.cpu_count(), "instruction_sets": ["AVX2", "FMA"],
            "int8_fast": False}
    want = host if note is None else {**host, "int8_note": note}
    assert builds[build].describe()["host"] == want


# ----------------------------------------------------------------------------- predict and drift


def test_drift_aligns_named_rows_and_ignores_the_symbol(builds):
    ens = builds["demo"]
    x = features(ens, 30)
    named = [{"symbol": "BTCUSDT", **dict(reversed(list(zip(ens.feature_names, map(float, row), strict=True))))}
             for row in x]
    assert ens.drift(named) == ens.drift(x)


def test_drift_without_training_statistics_says_how_to_rebuild(artifacts_copy):
    (artifacts_copy / "statistics.json").unlink()
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    del manifest["files"]["statistics.json"]  # `files` is bound by the hashes it lists, not by the graph
    (artifacts_copy / "manifest.json").write_text(json.dumps(manifest))
    ens = runtime.load(artifacts_copy)
    with pytest.raises(runtime.ArtifactError) as err:
        ens.drift(features(ens))
    assert str(err.value) == (f"{artifacts_copy}: the build has no statistics.json (built before training statistics "
                              f"were recorded); rebuild with `ensemble-onnx convert --reference-data ROWS`.")


# ----------------------------------------------------------------------------- features

def test_a_repeated_json_key_is_refused_naming_it():
    with pytest.raises(RepeatedKeyError) as err:
        loads_unique('{"a": 1, "b": {"c": 2, "c": 3}}')
    assert (str(err.value), err.value.key) == ("key 'c' appears more than once in one object", "c")


def test_the_verified_reader_returns_the_manifest_and_every_listed_file(demo_artifacts):
    from runtime.artifacts import read_verified

    manifest, files = read_verified(demo_artifacts)
    assert manifest == json.loads((demo_artifacts / "manifest.json").read_text())
    assert files == {rel: (demo_artifacts / rel).read_bytes() for rel in manifest["files"]}
    with pytest.raises(runtime.ArtifactError, match=re.escape(f"{demo_artifacts / 'nowhere'}: not an artifacts")):
        read_verified(demo_artifacts / "nowhere")


# ----------------------------------------------------------------------------- features: what callers hand in

NAMES = ("a", "b", "c")


class DigitsOnly(int):
    """An integer no float can hold, whatever its size: what a decimal type with a huge exponent looks like."""

    def __float__(self) -> float:
        raise OverflowError("too large")


@pytest.mark.parametrize(("value", "says"), [
    (10**400, "an integer of about 401 digits is too large for a float."),           # 1329 bits
    (-(10**400), "an integer of about 401 digits is too large for a float."),
    (DigitsOnly(10**40), "an integer of about 41 digits is too large for a float."),  # the first one told by size
    (DigitsOnly(10**40 - 1), f"{10**40 - 1} is too large for a float."),           # the last one written out
    (DigitsOnly(500), "500 is too large for a float."),
    ("x" * 78, f"'{'x' * 78}' is not a number."),                                     # a repr of 80 characters
    ("x" * 79, f"'{'x' * 76}... is not a number."),                                   # 81: cut to 77 and '...'
])
def test_a_cell_refusal_shows_the_value_cut_short_or_a_huge_integer_by_its_size(value, says):
    with pytest.raises(runtime.InputError) as err:
        runtime.features.rows_to_matrix({"a": 1.0, "b": value, "c": 2.0}, NAMES)
    assert str(err.value) == f"row 0, feature 'b': {says}"


@pytest.mark.parametrize("convert", ["as_matrix", "rows_to_matrix"])
def test_a_masked_array_is_refused_not_scored_under_its_mask(convert):
    masked = np.ma.masked_array(np.zeros((2, 3)), mask=[[0, 1, 0], [0, 0, 0]])
    with pytest.raises(runtime.InputError) as err:
        getattr(runtime.features, convert)(masked, NAMES)
    assert str(err.value) == ("features are a masked array; fill or drop the masked values before scoring "
                              "(np.asarray would score the values under the mask).")


def test_a_ragged_array_is_refused_naming_numpys_complaint():
    with pytest.raises(runtime.InputError) as err:
        runtime.features.as_matrix([[1.0, 2.0, 3.0], [1.0, 2.0]], NAMES)
    assert re.fullmatch(r"features must be a rectangular 2-D array \(ValueError: setting an array element with a "
                        r"sequence\..*\)\.", str(err.value)), str(err.value)


@pytest.mark.parametrize(("text", "message"), [
    ('{"a": 1}\n{"a": 2, "a": 3}\n', "line 2: key 'a' given more than once."),
    ('{"a": 1}\n{"a": \n', "line 2: not a JSON object (Expecting value)."),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}\n", "line 1: not a JSON object (nested too deeply to parse)."),
    ("a,b,a\n1,2,3\n", "line 1: the header names column(s) ['a'] more than once."),
    ("a,b\n" + "x" * 131_073 + ",1\n", f"CSV input is malformed (field larger than field limit ({131_072}))."),
])
def test_unreadable_records_are_refused_with_exactly_what_is_wrong(text, message):
    import csv

    assert csv.field_size_limit() == 131_072  # the standard library's default, which the last row goes past
    with pytest.raises(runtime.InputError) as err:
        runtime.records.read_records(text)
    assert str(err.value) == message


# ----------------------------------------------------------------------------- artifacts: the folder reader

@pytest.mark.parametrize(("constant", "says"), [
    ("NaN", "NaN is not a JSON number"), ("Infinity", "Infinity is not a JSON number"),
    ("-Infinity", "-Infinity is not a JSON number"), ("1e400", "Out of range float values are not JSON compliant"),
])
def test_a_manifest_holding_nan_or_infinity_is_refused_as_not_json(artifacts_copy, constant, says):
    # Found: Python's json reads NaN and Infinity, but no digest can be taken of them: runtime.load raised a bare
    # ValueError from the build id instead of ArtifactError. (1e400 parses to infinity: the digest refuses it.)
    path = artifacts_copy / "manifest.json"
    path.write_text(path.read_text().replace('"parity": {', f'"parity": {{"extra": {constant}, ', 1))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{path}: not valid JSON ({says}); {REBUILD}."


@pytest.mark.parametrize(("data", "says"), [
    (lambda text: text.encode("utf-16"), "not UTF-8 (byte 0xff at offset 0)"),
    (lambda text: text.encode("utf-32"), "not UTF-8 (byte 0xff at offset 0)"),
    (lambda text: text.encode("utf-8-sig"), "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"),
])
def test_a_manifest_in_another_encoding_than_utf8_is_refused(artifacts_copy, data, says):
    # Found: json.loads guesses UTF-16 or UTF-32 from a byte-order mark: such a manifest parsed, and loaded.
    path = artifacts_copy / "manifest.json"
    path.write_bytes(data(path.read_text()))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{path}: not valid JSON ({says}); {REBUILD}."


@pytest.mark.parametrize("entry", ["manifest.json", "manifest.sig"])
def test_a_file_entry_naming_the_manifest_or_its_signature_is_refused(artifacts_copy, entry):
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    manifest["files"][entry] = hashlib.sha256(b"{}").hexdigest()
    path = write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{path}: file entry '{entry}' points outside the folder or at the manifest."


def test_a_linked_folder_inside_the_artifacts_is_refused_as_unlisted(artifacts_copy, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (artifacts_copy / "members" / "more").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == (f"{artifacts_copy / 'members' / 'more'}: not listed in manifest.json; remove it or "
                              f"{REBUILD}.")

# ----------------------------------------------------------------------------- artifacts: signed builds, the wire

@pytest.fixture(scope="module")
def signed(demo_artifacts: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """(a copy of the demo build signed with a fresh Ed25519 key, that key's public PEM)"""
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from runtime.signing import sign

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    folder = Path(shutil.copytree(demo_artifacts, tmp_path_factory.mktemp("signed") / "artifacts"))
    (folder / "manifest.sig").write_bytes(sign(json.loads((folder / "manifest.json").read_text()), private))
    return folder, public


def test_a_signed_folder_is_read_with_its_signature_and_sent_with_it(signed):
    from runtime.artifacts import read_files, read_folder, verify_files

    folder, public = signed
    assert runtime.load(folder, public_key=public).build_id == runtime.load(folder).build_id
    assert read_folder(folder, public_key=public).signature == (folder / "manifest.sig").read_bytes()
    sent = read_files(folder)
    assert sent == {rel: (folder / rel).read_bytes() for rel in [*json.loads((folder / "manifest.json").read_text())[
        "files"], "manifest.json", "manifest.sig"]}
    assert verify_files(sent, public_key=public).signature == (folder / "manifest.sig").read_bytes()


def test_an_unsigned_folder_is_sent_without_a_signature(demo_artifacts):
    from runtime.artifacts import read_files

    sent = read_files(demo_artifacts)
    assert "manifest.sig" not in sent and sent["manifest.json"] == (demo_artifacts / "manifest.json").read_bytes()


def test_a_signature_refusal_names_the_folder(signed, tmp_path):
    folder, _ = signed
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    (copy / "manifest.sig").unlink()
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(copy, public_key=signed[1])
    assert str(err.value) == f"{copy}: the folder is not signed (no model.sig) and a public key was given."


def _sig_with(record: dict[str, Any], field: str, value: object) -> bytes:
    return json.dumps({**record, field: value} if value is not KeyError
                      else {k: v for k, v in record.items() if k != field}).encode()


@pytest.mark.parametrize(("edit", "says"), [
    (lambda r: _sig_with(r, "signature", KeyError), "field 'signature' is missing"),
    (lambda r: _sig_with(r, "algorithm", KeyError), "field 'algorithm' is missing"),
    (lambda r: _sig_with(r, "key_sha256", KeyError), "field 'key_sha256' is missing"),
    (lambda r: _sig_with(r, "build_id", KeyError), "field 'build_id' is missing"),
    (lambda r: _sig_with(r, "signature", 12), "field 'signature' is a JSON number, not a string"),
    (lambda r: _sig_with(r, "signature", None), "field 'signature' is a JSON null, not a string"),
    (lambda r: _sig_with(r, "signature", ["AAAA"]), "field 'signature' is a JSON array, not a string"),
    (lambda r: _sig_with(r, "algorithm", {"name": "ed25519"}), "field 'algorithm' is a JSON object, not a string"),
    (lambda r: _sig_with(r, "build_id", True), "field 'build_id' is a JSON boolean, not a string"),
    (lambda r: _sig_with(r, "signature", "not base64!"), "field 'signature' is not base64: 'not base64!'"),
    (lambda r: _sig_with(r, "signature", r["signature"].rstrip("=")), "field 'signature' is not base64: "),
    (lambda r: _sig_with(r, "signature", "AAAA"), "field 'signature' holds 3 bytes, not the 64 of an ed25519 "
                                                  "signature"),
    (lambda r: json.dumps([r]).encode(), "a JSON array, not an object"),
    (lambda r: b"\xff{", "not JSON: "),
    # Found: json.loads kept the last of two keys, read NaN, took unknown fields, and decoded UTF-16 by a BOM.
    (lambda r: b'{"algorithm": "rsa", ' + json.dumps(r).encode()[1:], "field 'algorithm' is written twice"),
    (lambda r: json.dumps(r).encode().replace(b'"build_id": ', b'"build_id": NaN, "x": ', 1),
     "not JSON: NaN is not a JSON number"),
    (lambda r: _sig_with(r, "comment", "signed by CI"), "field 'comment' is not one `sign` writes"),
    (lambda r: json.dumps(r).encode("utf-16"), "not JSON: not UTF-8 (byte 0xff at offset 0)"),
])
def test_a_signature_record_missing_a_field_or_of_the_wrong_type_is_refused_naming_it(signed, tmp_path, edit, says):
    copy = Path(shutil.copytree(signed[0], tmp_path / "copy"))
    record = json.loads((copy / "manifest.sig").read_text())
    (copy / "manifest.sig").write_bytes(edit(record))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(copy, public_key=signed[1])
    assert str(err.value).startswith(f"{copy}: manifest.sig: not a signature record ({says}"), str(err.value)
    assert str(err.value).endswith(").")


def test_a_long_signature_algorithm_is_cut_short(signed, tmp_path):
    # {algorithm!r} printed all 100,000 characters.
    copy = Path(shutil.copytree(signed[0], tmp_path / "copy"))
    record = json.loads((copy / "manifest.sig").read_text())
    (copy / "manifest.sig").write_bytes(_sig_with(record, "algorithm", "x" * 100_000))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(copy, public_key=signed[1])
    assert str(err.value) == (f"{copy}: manifest.sig: algorithm '" + "x" * 39 + "... (100000 characters); this "
                              "runtime checks ed25519.")


@pytest.mark.parametrize(("key", "says"), [
    (lambda pem: 5, "the public key is an int, not a PEM file's path or PEM bytes."),
    (lambda pem: bytearray(pem), "the public key is a bytearray, not a PEM file's path or PEM bytes."),
    (lambda pem: "key\0.pem", "the key's path 'key\\x00.pem' holds a NUL character; name the PEM file."),
    (lambda pem: pem.decode(), "the key given is PEM text in a str ('-----BEGIN PUBLIC KEY-----\\nMCowBQYDK2V... "
                               "(113 characters)), not a path; pass it as bytes (str.encode()) or name its file."),
])
def test_a_public_key_of_the_wrong_type_or_no_path_is_refused_naming_it_in_one_line(signed, key, says):
    # Found: a NUL raised a bare ValueError, an int or a bytearray a bare TypeError, and a PEM passed as a str
    # was taken for a path, the whole PEM printed as the file that could not be read.
    folder, public = signed
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(folder, public_key=key(public))
    assert str(err.value) == f"{folder}: {says}"


def test_a_linked_signature_is_refused_by_name(signed, tmp_path):
    copy = Path(shutil.copytree(signed[0], tmp_path / "copy"))
    (copy / "manifest.sig").rename(tmp_path / "sig")
    (copy / "manifest.sig").symlink_to(tmp_path / "sig")
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(copy)
    assert str(err.value) == (f"{copy / 'manifest.sig'}: 'manifest.sig' is not a regular file (a link); "
                              f"{REBUILD}.")


class _KeySwapping(os.PathLike[str]):
    """A public key's path that, when the load first asks for it (manifest.json and manifest.sig read, no other
    file yet), runs a real release swap on the filesystem: the rest of the load reads after the swap."""

    def __init__(self, key: Path, swap: Callable[[], None]) -> None:
        self.key, self.swap = key, swap

    def __fspath__(self) -> str:
        swap, self.swap = self.swap, lambda: None
        swap()
        return str(self.key)


def _two_builds(signed: tuple[Path, bytes], where: Path) -> tuple[Path, Path, Path]:
    """(build A: the signed demo copy, build B: A consistently re-bound with its classes reversed, A's key)"""
    a = Path(shutil.copytree(signed[0], where / "a"))
    b = rebound(a, where / "b", lambda m: m.update(classes=m["classes"][::-1]))
    key = where / "public.pem"
    key.write_bytes(signed[1])
    return a, b, key


def test_a_folder_renamed_away_mid_load_is_read_whole_from_the_build_opened(signed, tmp_path):
    from runtime.artifacts import read_folder

    a, b, key = _two_builds(signed, tmp_path)
    aside = tmp_path / "a-old"
    release = _KeySwapping(key, lambda: (os.rename(a, aside), os.rename(b, a)))  # mv a a-old && mv b a
    verified = read_folder(a, public_key=release)
    assert not aside.joinpath("ensemble.onnx").samefile(a / "ensemble.onnx")  # the swap did happen
    listed = json.loads((aside / "manifest.json").read_text())
    assert verified.manifest == listed and verified.manifest["classes"] != json.loads(
        (a / "manifest.json").read_text())["classes"]
    assert verified.files == {rel: (aside / rel).read_bytes() for rel in listed["files"]}
    assert verified.signature == (aside / "manifest.sig").read_bytes()


def test_a_link_re_pointed_mid_load_yields_the_build_it_named_when_the_load_began(signed, tmp_path):
    a, b, key = _two_builds(signed, tmp_path)
    live = tmp_path / "live"
    live.symlink_to(a, target_is_directory=True)

    def repoint() -> None:  # ln -s b live.new && mv -T live.new live: the atomic re-point
        (tmp_path / "live.new").symlink_to(b, target_is_directory=True)
        os.replace(tmp_path / "live.new", live)

    ens = runtime.load(live, public_key=_KeySwapping(key, repoint))
    assert live.resolve() == b.resolve()
    assert ens.manifest == json.loads((a / "manifest.json").read_text())
    assert ens.classes == tuple(json.loads((a / "manifest.json").read_text())["classes"])
    assert ens.path == str(live)


@pytest.mark.parametrize(("sent", "says"), [
    ([("manifest.json", b"{}")], "the artifacts sent are a list, not a mapping of file names to bytes."),
    ({"manifest.json": "{}"}, "entry 'manifest.json' of the artifacts sent is a str -> str, not a file name -> bytes."),
    ({1: b"{}"}, "entry 1 of the artifacts sent is a int -> bytes, not a file name -> bytes."),
])
def test_what_is_not_names_to_bytes_is_refused_by_entry(sent, says):
    from runtime.artifacts import verify_files

    with pytest.raises(runtime.ArtifactError) as err:
        verify_files(sent)
    assert str(err.value) == f"<artifacts in memory>: {says}"


def test_the_wire_reader_names_a_missing_and_an_unlisted_file_under_its_source(demo_artifacts):
    from runtime.artifacts import read_files, verify_files

    sent = read_files(demo_artifacts)
    with pytest.raises(runtime.ArtifactError) as err:
        verify_files({k: v for k, v in sent.items() if k != "members/nhits.onnx"})
    assert str(err.value) == f"<artifacts in memory>/members/nhits.onnx: missing; {REBUILD}."
    with pytest.raises(runtime.ArtifactError) as err:
        verify_files({**sent, "notes.txt": b"x"}, where="worker-3")
    assert str(err.value) == f"worker-3/notes.txt: not listed in manifest.json; remove it or {REBUILD}."
    # bytearrays are taken, and handed on as the bytes they hold
    files = verify_files({**sent, "members/nhits.onnx": bytearray(sent["members/nhits.onnx"])}).files
    assert files == {k: v for k, v in sent.items() if k != "manifest.json"}
    assert type(files["members/nhits.onnx"]) is bytes


def test_input_bytes_are_decoded_as_utf8_without_a_byte_order_mark_or_refused_naming_the_byte():
    from runtime.records import decode_input

    assert decode_input("\ufeffa,b\n1,\u00e9\n".encode(), "in.csv") == "a,b\n1,\u00e9\n"
    with pytest.raises(runtime.InputError) as err:
        decode_input(b"a,b\n1,2\n3,\xff\n", "in.csv")
    assert str(err.value) == "in.csv: line 3: not UTF-8 text (byte 0xff at offset 10); save the file as UTF-8."
    with pytest.raises(runtime.InputError) as err:  # Parquet handed to predict: named, not "save the file as UTF-8"
        decode_input(b"PAR1\x15\x04\x15\x80", "rows.parquet")
    assert str(err.value) == ("rows.parquet: a Parquet file; this command reads CSV with a header or JSON lines "
                              "(`ensemble-onnx score` scores Parquet).")


class FailsToMaterialize:
    """An array-like whose conversion fails with a long message (a lazy frame whose source went away)."""

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        raise ValueError("source gone: " + "x" * 300)


def test_a_failing_conversion_is_refused_with_its_complaint_cut_at_200_characters():
    with pytest.raises(runtime.InputError) as err:
        runtime.features.as_matrix(FailsToMaterialize(), NAMES)
    assert str(err.value) == f"features must be a rectangular 2-D array (ValueError: source gone: {'x' * 187})."


def test_a_non_finite_number_in_an_array_is_refused_naming_row_and_feature():
    x = np.zeros((3, 3))
    x[2, 1] = np.inf
    with pytest.raises(runtime.InputError) as err:
        runtime.features.as_matrix(x, NAMES)
    assert str(err.value) == "row 2, feature 'b': inf is not finite; impute it before scoring."


class MaskedFrame(np.ma.MaskedArray):
    """A masked array that also looks like a DataFrame (`columns`, `to_numpy`)."""

    columns = ["a", "b", "c"]

    def to_numpy(self) -> np.ndarray:
        return np.asarray(self)


def test_a_masked_array_is_refused_even_when_it_passes_for_a_frame():
    rows = MaskedFrame(np.zeros((1, 3)), mask=[[0, 1, 0]])
    with pytest.raises(runtime.InputError, match="^features are a masked array; fill or drop the masked values"):
        runtime.features.rows_to_matrix(rows, NAMES)


@pytest.mark.parametrize("cell", ["1_0", "\u0661"])  # Python's float reads both: 10.0 and 1.0
def test_parse_number_refuses_what_a_data_file_never_means_naming_the_cell(cell):
    with pytest.raises(ValueError) as err:
        runtime.records.parse_number(cell)
    assert str(err.value) == f"not a number: {cell!r}"


def test_the_wire_reader_checks_the_pinned_build_and_the_signature_too(demo_artifacts, signed):
    from runtime.artifacts import read_files, verify_files

    sent = read_files(demo_artifacts)
    identity = runtime.load(demo_artifacts).build_id
    assert verify_files(sent, expect_build_id=identity).build_id == identity
    with pytest.raises(runtime.ArtifactError) as err:
        verify_files(sent, expect_build_id="0" * 64)
    assert str(err.value) == (f"<artifacts in memory>: build {identity}, not the expected build {'0' * 64}; serve "
                              f"the folder of that build, or change the pinned build id.")
    with pytest.raises(runtime.ArtifactError) as err:
        verify_files(sent, public_key=signed[1])
    assert str(err.value) == ("<artifacts in memory>: the folder is not signed (no model.sig) and a public key "
                              "was given.")


@pytest.mark.parametrize("rows", [5, 10, 11])  # one chunk, exactly two, and three
def test_rows_are_scored_in_chunks_that_add_up_to_the_whole(builds, monkeypatch, rows):
    ens = builds["demo"]
    x = features(ens, rows)
    whole = ens._session.run(None, {ens._session.get_inputs()[0].name: x})
    monkeypatch.setattr(runtime, "RUN_CHUNK", 5)
    out = ens.predict_proba(x)
    assert out.shape == (rows, 3)
    np.testing.assert_allclose(out, whole[0], rtol=0, atol=1e-6)


def test_a_manifest_writing_a_key_twice_is_refused_naming_it(artifacts_copy):
    path = artifacts_copy / "manifest.json"
    path.write_text(path.read_text().replace('"classes": [', '"classes": ["UP"], "classes": [', 1))
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{path}: key 'classes' is written twice; {REBUILD}."


def test_unusable_training_statistics_are_refused_at_load_naming_the_file(artifacts_copy):
    statistics = b'{"statistics_version": 99}'
    (artifacts_copy / "statistics.json").write_bytes(statistics)
    manifest = json.loads((artifacts_copy / "manifest.json").read_text())
    manifest["files"]["statistics.json"] = hashlib.sha256(statistics).hexdigest()
    write_manifest(artifacts_copy, manifest)
    with pytest.raises(runtime.ArtifactError) as err:
        runtime.load(artifacts_copy)
    assert str(err.value) == f"{artifacts_copy}/statistics.json: field 'statistics_version' is not 1."
