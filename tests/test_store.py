"""On-disk EmbeddingStore: layout, per-layer reads, journal/resume, torn journal lines, locking, keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonefair.store.base import EmbeddingSource
from phonefair.store.disk import (COMPLETE, EmbeddingStore, StoreError, StoreLockedError, StoreWriter, open_store,
                                  store_key)


def _tokens(n: int = 10) -> pd.DataFrame:
    return pd.DataFrame({"speaker": ["a", "b"] * (n // 2), "phone": ["iy"] * n})


def _write_all(root: Path, key: str = "k1", dtype: str = "float16") -> tuple[EmbeddingStore, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    data = {"0": rng.standard_normal((10, 4)).astype(np.float32),
            "cnn": rng.standard_normal((10, 3)).astype(np.float32)}
    with StoreWriter(root, key, tokens=_tokens(), dims={"cnn": 3, "0": 4}, dtype=dtype) as w:
        for b, (lo, hi) in enumerate(((0, 4), (4, 10))):
            for layer, a in data.items():
                w.write_rows(layer, lo, a[lo:hi])
            w.commit([b], {"n": hi - lo})
        st = w.finalize({"model": "x"}, pd.DataFrame({"message": pd.Series([], dtype="string")}))
    return st, data


def test_roundtrip_layout_and_reads(tmp_path: Path) -> None:
    st, data = _write_all(tmp_path)
    assert isinstance(st, EmbeddingSource)
    assert st.layers == ["cnn", "0"] and st.dims == {"cnn": 3, "0": 4}
    files = sorted(p.name for p in st.path.iterdir())
    for f in ("layer_0.npy", "layer_cnn.npy", "tokens.parquet", "provenance.json", COMPLETE, "journal.jsonl"):
        assert f in files
    assert np.load(st.path / "layer_0.npy", mmap_mode="r").dtype == np.float16
    np.testing.assert_allclose(st.read("0"), data["0"], atol=2e-3)
    got = st.read("cnn", [7, 1, 1])
    assert got.dtype == np.float32 and got.shape == (3, 3)
    np.testing.assert_allclose(got, data["cnn"][[7, 1, 1]], atol=2e-3)
    assert st.provenance["model"] == "x" and st.provenance["n_rows"] == 10
    assert len(st.tokens) == 10
    with pytest.raises(KeyError, match="available"):
        st.read("5")


def test_read_touches_only_its_layer(tmp_path: Path) -> None:
    st, data = _write_all(tmp_path)
    (st.path / "layer_cnn.npy").unlink()  # reading layer "0" must not need any other layer file
    fresh = EmbeddingStore(st.path)
    np.testing.assert_allclose(fresh.read("0", np.arange(3)), data["0"][:3], atol=2e-3)
    with pytest.raises(FileNotFoundError):
        fresh.read("cnn")


def test_float32_store_is_exact(tmp_path: Path) -> None:
    st, data = _write_all(tmp_path, dtype="float32")
    np.testing.assert_array_equal(st.read("0"), data["0"])


def test_incomplete_store_is_never_reported_complete_and_resumes(tmp_path: Path) -> None:
    tok = _tokens()
    rows = np.ones((4, 2), np.float32)
    with StoreWriter(tmp_path, "k", tokens=tok, dims={"0": 2}) as w:
        w.write_rows("0", 0, rows)
        w.commit([0], {})
        w.write_rows("0", 4, rows)  # batch 1 written but never committed: a crash here
    assert open_store(tmp_path, "k") is None
    with pytest.raises(StoreError, match="interrupted"):
        EmbeddingStore(tmp_path / "k")
    # a torn journal line (crash in the middle of an append) is ignored and cleaned up
    with open(tmp_path / "k" / "journal.jsonl", "a") as f:
        f.write('{"done": [1], "sta')
    with StoreWriter(tmp_path, "k", tokens=tok, dims={"0": 2}) as w:
        assert w.done == {0}
        assert (tmp_path / "k" / "journal.jsonl").read_text().endswith("\n")
        w.write_rows("0", 4, rows * 2)
        w.commit([1], {})
        w.write_rows("0", 8, rows[:2] * 3)
        w.commit([2], {})
        st = w.finalize({}, pd.DataFrame({"message": pd.Series([], dtype="string")}))
    assert [json.loads(x)["done"] for x in (st.path / "journal.jsonl").read_text().splitlines()] == [[0], [1], [2]]
    np.testing.assert_array_equal(st.read("0")[:, 0], [1] * 4 + [2] * 4 + [3] * 2)


def test_changed_allocation_is_reallocated(tmp_path: Path) -> None:
    with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 2}) as w:
        w.commit([0], {})
    with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 5}) as w:
        assert w.done == set()  # different shape: the old journal does not apply
        assert np.load(tmp_path / "k" / "layer_0.npy", mmap_mode="r").shape == (10, 5)


def test_lock_blocks_a_second_writer(tmp_path: Path) -> None:
    with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 2}):
        with pytest.raises(StoreLockedError, match="another process"):
            with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 2}, lock_timeout=0):
                pass
    with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 2}, lock_timeout=0):
        pass  # released on exit


def test_write_rows_validates_shape(tmp_path: Path) -> None:
    with StoreWriter(tmp_path, "k", tokens=_tokens(), dims={"0": 2}) as w:
        with pytest.raises(StoreError, match="cannot write"):
            w.write_rows("0", 9, np.zeros((2, 2), np.float32))
        with pytest.raises(StoreError, match="cannot write"):
            w.write_rows("0", 0, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        StoreWriter(tmp_path, "k2", tokens=_tokens(), dims={"0": 2}, dtype="int8")


def test_store_key_is_canonical() -> None:
    a = store_key({"x": 1, "layers": ["0", "1"]})
    assert a == store_key({"layers": ["0", "1"], "x": 1})
    assert a != store_key({"x": 1, "layers": ["0"]})
    assert len(a) == 20
