"""The built-in torch kinds, N-HiTS and PatchTST (`convert/members/nhits.py`, `patchtst.py`): the rebuilt module
equals the training side's, every option the metadata states is real or refused by name, and `.safetensors`
and DataParallel state_dicts are read. Each PatchTST option is trained here with the test's own
TransformerEncoder (the "training script"), and the build must answer as that."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from torch_training import FEATURES, SEED, F, K, _convert, _probabilities, _train

import runtime
from convert.cli import main
from convert.demo import DemoSpec
from convert.errors import MetadataError, StateDictError
from convert.members import MemberSource, get_kind

STAMP = DemoSpec().stamp


@pytest.mark.parametrize("kind", ["nhits", "patchtst"])
def test_rebuilt_torch_module_equals_the_training_sides(demo_models, kind):
    """The converter's rebuild, loaded from the bare state_dict, computes what the trained class computes."""
    import torch

    from convert.demo import build_torch_model

    path = demo_models / f"{kind}_{STAMP}.pth"
    member = get_kind(kind).load(MemberSource(kind, kind, path, path.with_name(f"{path.stem}_meta.json")))
    original = build_torch_model(kind, DemoSpec())
    original.load_state_dict(torch.load(path, weights_only=True))
    x = np.random.default_rng(0).standard_normal((64, 18)).astype(np.float32)
    with torch.no_grad():
        want = torch.softmax(original.eval()(torch.from_numpy(x)), -1).numpy()
    np.testing.assert_allclose(member.reference(x), want, atol=1e-6)


def test_metadata_may_omit_what_shapes_tell_and_n_heads_defaults(demo_models, tmp_path):
    path = Path(shutil.copy(demo_models / f"patchtst_{STAMP}.pth", tmp_path))
    member = get_kind("patchtst").load(MemberSource("p", "patchtst", path, None))
    assert member.hyperparameters["n_heads"] == 8
    assert "n_heads=8 (v5 default, not in metadata)" in member.notes


def test_n_heads_that_does_not_divide_d_model_is_refused(demo_models, tmp_path):
    path = Path(shutil.copy(demo_models / f"patchtst_{STAMP}.pth", tmp_path))
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"architecture": {"n_heads": 5}}))
    with pytest.raises(MetadataError, match="n_heads=5"):
        get_kind("patchtst").load(MemberSource("p", "patchtst", path, meta))


def test_unexpected_and_misshapen_tensors_are_named(demo_models, tmp_path):
    import torch
    state = torch.load(demo_models / f"nhits_{STAMP}.pth", weights_only=True)
    state["fc.9.weight"] = torch.zeros(1)
    state["fc.0.bias"] = torch.zeros(7)
    path = tmp_path / "nhits.pth"
    torch.save(state, path)
    with pytest.raises(StateDictError) as err:
        get_kind("nhits").load(MemberSource("n", "nhits", path))
    assert "unexpected tensor 'fc.9.weight'" in str(err.value) and "fc.0.bias" in str(err.value)


# ---- the built-in PatchTST: every option the metadata states is real, or refused ----

PATCHTST = {"d_model": 8, "n_heads": 2, "n_layers": 2, "dim_feedforward": 16}


# (case, layer keyword arguments, final LayerNorm, what the metadata states)
PATCHTST_OPTIONS = [
    ("v5 defaults", {}, False, {}),
    ("norm_first", {"norm_first": True}, False, {"norm_first": True}),
    ("gelu", {"activation": "gelu"}, False, {"activation": "gelu"}),
    ("norm_first gelu", {"norm_first": True, "activation": "gelu"}, False, {"norm_first": True, "activation": "gelu"}),
    ("layer_norm_eps 0.5", {"layer_norm_eps": 0.5}, False, {"layer_norm_eps": 0.5}),
    ("final LayerNorm", {}, True, {}),
    ("norm_first, final LayerNorm, dropout stated", {"norm_first": True}, True,
     {"norm_first": True, "dropout": 0.2, "encoder_norm": True, "batch_first": True}),
]


def _training_patchtst(layer_kwargs: dict[str, Any], final_norm: bool) -> Any:
    """The test's own PatchTST, written as a training script would write it (not convert's rebuild)."""
    import torch.nn as nn

    class TrainingPatchTST(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = PATCHTST["d_model"]
            self.embedding = nn.Linear(F, d)
            layer = nn.TransformerEncoderLayer(d, PATCHTST["n_heads"], PATCHTST["dim_feedforward"], dropout=0.1,
                                               batch_first=True, **layer_kwargs)
            self.transformer = nn.TransformerEncoder(layer, PATCHTST["n_layers"], enable_nested_tensor=False,
                                                     norm=nn.LayerNorm(d) if final_norm else None)
            self.fc = nn.Sequential(nn.Linear(d, d // 2), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d // 2, K))

        def forward(self, x: Any) -> Any:
            return self.fc(self.transformer(self.embedding(x.unsqueeze(1))).mean(dim=1))

    return TrainingPatchTST()


@pytest.fixture(scope="module")
def patchtst_matrix(tmp_path_factory) -> dict[str, tuple[Path, Any]]:
    """Each option trained once: case -> (folder with patchtst.pth, _meta.json, ensemble.json; the module)."""
    import torch

    root = tmp_path_factory.mktemp("patchtst-options")
    out = {}
    for case, layer_kwargs, final_norm, stated in PATCHTST_OPTIONS:
        torch.manual_seed(SEED)
        model = _train(_training_patchtst(layer_kwargs, final_norm), epochs=40)
        folder = root / case.replace(" ", "_").replace(",", "")
        folder.mkdir()
        torch.save(model.state_dict(), folder / "patchtst.pth")
        meta = {"architecture": {"n_heads": PATCHTST["n_heads"], **stated}}
        (folder / "patchtst_meta.json").write_text(json.dumps(meta))
        (folder / "ensemble.json").write_text(json.dumps({"feature_names": FEATURES, "members": {
            "patchtst": {"kind": "patchtst", "file": "patchtst.pth", "scaler": None}}}))
        out[case] = (folder, model)
    return out


@pytest.mark.parametrize("case", [c[0] for c in PATCHTST_OPTIONS])
def test_patchtst_options_build_the_model_the_training_script_trained(patchtst_matrix, case, tmp_path):
    folder, model = patchtst_matrix[case]
    out = tmp_path / "out"
    result = _convert(folder, out)
    assert result.exit_code == 0, result.output
    rows = np.random.default_rng(11).normal(size=(300, F)).astype(np.float32)
    built = runtime.load(out).member_probabilities(rows)["patchtst"]
    want = _probabilities(model, rows)
    assert np.abs(built - want).max() <= 1e-5 and (built.argmax(1) == want.argmax(1)).all()
    if case != "v5 defaults" and case != "final LayerNorm":
        # the option matters: the same weights in the default layout answer otherwise (so this test can fail)
        plain = _training_patchtst({}, "encoder_norm" in json.loads((folder / "patchtst_meta.json").read_text())
                                   ["architecture"])
        plain.load_state_dict(model.state_dict())
        assert np.abs(_probabilities(plain.eval(), rows) - want).max() > 1e-3
    hp = json.loads((out / "manifest.json").read_text())["members"]["patchtst"]["hyperparameters"]
    layer = model.transformer.layers[0]
    assert (hp["norm_first"], hp["encoder_norm"], hp["layer_norm_eps"]) == (
        layer.norm_first, model.transformer.norm is not None, layer.norm1.eps)


# (case, the kind, what the architecture object states, the refusal)
ARCHITECTURE_REFUSALS = [
    ("patchtst patch_len", "patchtst", {"patch_len": 16}, "UnsupportedModelError: ['patch_len'] patchtst"),
    ("patchtst bias false", "patchtst", {"bias": False}, "UnsupportedModelError: ['bias']"),
    ("patchtst activation silu", "patchtst", {"activation": "silu"}, "MetadataError: architecture.activation 'silu'"),
    ("patchtst norm_first as text", "patchtst", {"norm_first": "yes"}, "MetadataError: architecture.norm_first"),
    ("patchtst batch_first false", "patchtst", {"batch_first": False}, "MetadataError: architecture.batch_first"),
    ("patchtst layer_norm_eps 0", "patchtst", {"layer_norm_eps": 0}, "MetadataError: architecture.layer_norm_eps"),
    ("patchtst final norm stated, none in the weights", "patchtst", {"encoder_norm": True},
     "MetadataError: encoder_norm=True"),
    ("nhits activation", "nhits", {"activation": "gelu"}, "UnsupportedModelError: ['activation'] nhits"),
    ("nhits dropout 1.5", "nhits", {"dropout": 1.5}, "MetadataError: architecture.dropout"),
]


@pytest.mark.parametrize(("kind", "stated", "expect"), [r[1:] for r in ARCHITECTURE_REFUSALS],
                         ids=[r[0] for r in ARCHITECTURE_REFUSALS])
def test_an_architecture_key_no_rebuild_implements_is_refused_by_name(patchtst_matrix, kind, stated, expect,
                                                                      tmp_path):
    import torch

    folder = tmp_path / "models"
    if kind == "patchtst":
        shutil.copytree(patchtst_matrix["v5 defaults"][0], folder)
    else:
        from convert.demo import _torch_classes  # the training side's N-HiTS

        folder.mkdir()
        torch.save(_torch_classes()[0](F, 4, 1, num_classes=K).state_dict(), folder / "patchtst.pth")
    meta = {"architecture": {**stated, **({"n_heads": 2} if kind == "patchtst" else {})}}
    (folder / "patchtst_meta.json").write_text(json.dumps(meta))
    spec = json.loads((folder / "ensemble.json").read_text()) if kind == "patchtst" else {
        "feature_names": FEATURES, "members": {"patchtst": {"file": "patchtst.pth", "scaler": None}}}
    spec["members"]["patchtst"]["kind"] = kind
    (folder / "ensemble.json").write_text(json.dumps(spec))
    result = _convert(folder, tmp_path / "out")
    error, *words = expect.split(" ")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert all(w in result.output for w in [error, *words, "patchtst_meta.json"]), result.output


@pytest.mark.parametrize(("meta", "expect"), [
    ({"n_heads": 2, "norm_first": True, "dropout": 0.1}, None),  # flat, as many training scripts dump them
    ({"norm_first": True, "architecture": {"n_heads": 2, "norm_first": True}}, None),
    ({"norm_first": False, "architecture": {"n_heads": 2, "norm_first": True}}, "states norm_first=False at the top"),
])
def test_architecture_keys_written_at_the_top_level_are_read_too(patchtst_matrix, meta, expect, tmp_path):
    from convert.errors import MetadataError

    folder, model = patchtst_matrix["norm_first"]
    (tmp_path / "p_meta.json").write_text(json.dumps(meta))
    source = MemberSource("p", "patchtst", folder / "patchtst.pth", tmp_path / "p_meta.json")
    if expect is not None:
        with pytest.raises(MetadataError, match=expect):
            get_kind("patchtst").load(source)
        return
    member = get_kind("patchtst").load(source)
    assert member.hyperparameters["norm_first"] is True and "norm_first=True (from metadata)" in member.notes
    rows = np.random.default_rng(6).normal(size=(40, F)).astype(np.float32)
    assert np.abs(member.reference(rows) - _probabilities(model, rows)).max() <= 1e-6


def test_nhits_dropout_is_accepted_as_no_effect_and_said(tmp_path):
    import torch

    from convert.demo import _torch_classes

    torch.save(_torch_classes()[0](F, 4, 1, num_classes=K).state_dict(), tmp_path / "n.pth")
    (tmp_path / "n_meta.json").write_text(json.dumps({"architecture": {"dropout": 0.3}}))
    member = get_kind("nhits").load(MemberSource("n", "nhits", tmp_path / "n.pth", tmp_path / "n_meta.json"))
    assert "dropout=0.3 (from metadata; no effect in eval mode)" in member.notes


@pytest.mark.parametrize("save", ["safetensors", "dataparallel", "dataparallel safetensors", "safetensors as .pth"])
def test_builtin_kinds_read_safetensors_and_dataparallel_state_dicts(patchtst_matrix, save, tmp_path):
    import torch
    from safetensors.torch import save_file

    folder, model = patchtst_matrix["norm_first"]
    state = torch.nn.DataParallel(model).state_dict() if "dataparallel" in save else model.state_dict()
    file = tmp_path / ("p.safetensors" if save.endswith("safetensors") else "p.pth")  # read by content, not name
    if "safetensors" in save:
        save_file({k: v.contiguous() for k, v in state.items()}, file)
    else:
        torch.save(state, file)
    member = get_kind("patchtst").load(MemberSource("p", "patchtst", file, folder / "patchtst_meta.json"))
    assert any("DataParallel" in n for n in member.notes) == ("dataparallel" in save)
    shown = CliRunner().invoke(main, ["inspect", str(file), "--json"])
    info = json.loads(shown.output)
    assert info["kind"] == "patchtst" and any("DataParallel" in n for n in info["notes"]) == ("dataparallel" in save)
    rows = np.random.default_rng(2).normal(size=(40, F)).astype(np.float32)
    assert np.abs(member.reference(rows) - _probabilities(model, rows)).max() <= 1e-6


@pytest.mark.parametrize(("content", "expect"), [
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", "not a readable safetensors file"),   # header cut short
    (b"\x07\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", "not a readable safetensors file"),    # not a tensor entry
])
def test_a_broken_safetensors_file_is_refused_naming_it(tmp_path, content, expect):
    from convert.errors import ModelFileError
    from convert.loaders import load_state_dict

    file = tmp_path / "bad.safetensors"
    file.write_bytes(content)
    with pytest.raises(ModelFileError, match=expect) as info:
        load_state_dict(file)
    assert str(file) in str(info.value)

