"""The safe loaders (`convert/loaders.py`): pickles name only allowlisted globals (nothing outside runs), and
metadata past its size limit or not JSON is refused."""

from __future__ import annotations

import pytest

from convert.errors import MetadataError, UnsafeFileError
from convert.loaders import load_pickle

# --- loaders -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("builtins", "exec"), ("os", "system"),
                                          ("numpy", "load"), ("sklearn.preprocessing._data", "minmax_scale")])
def test_globals_outside_the_allowlist_are_refused(tmp_path, module, name):
    path = tmp_path / "x.pkl"
    # protocol-0 GLOBAL + REDUCE: would call module.name("1") if the global were resolved
    path.write_bytes(f"c{module}\n{name}\n(S'1'\ntR.".encode())
    with pytest.raises(UnsafeFileError, match=f"{module}.{name}"):
        load_pickle(path, "scaler")


def test_oversized_and_malformed_metadata_is_refused(tmp_path):
    from convert.loaders import load_json

    big = tmp_path / "big.json"
    big.write_text('{"x": "' + "a" * (2 << 20) + '"}')
    with pytest.raises(MetadataError, match="limit"):
        load_json(big)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(MetadataError, match="not valid JSON"):
        load_json(bad)

