"""Static sharding: plan, per-shard extraction, merge == single-process extract bit for bit, skip/resume, verification."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonefair.corpus.schema import Corpus
from phonefair.encoders import load_encoder, save_tiny_model
from phonefair.extraction import extract
from phonefair.extraction.shards import extract_shard, merge_shards, plan_shards, shard_name, shard_status
from phonefair.store.disk import EmbeddingStore, StoreError

BS = 3  # 8 utterances -> 3 batches: shards cut inside the batch sequence


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    from phonefair.synth.corpus import build_synthetic_corpus

    c = build_synthetic_corpus(tmp_path_factory.mktemp("synth"), accents=["en-US", "en-GB-x-rp"],
                               speakers_per_group=1, sentences_per_speaker=2, seed=0, progress=False)
    assert c.recordings["recording_id"].nunique() == 8
    return c


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    # group-norm (one utterance at a time) and stable layer-norm (padded batches: the batching must match)
    return {f: save_tiny_model(f, root / f) for f in ("wav2vec2", "wav2vec2-stable")}


def assert_same_store(a: EmbeddingStore, b: EmbeddingStore) -> None:
    assert a.key == b.key
    assert a.layers == b.layers and a.dims == b.dims
    pd.testing.assert_frame_equal(a.tokens, b.tokens)
    pd.testing.assert_frame_equal(a.problems, b.problems)
    for layer in a.layers:
        x, y = a.array(layer), b.array(layer)
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), layer  # bit for bit (NaN-safe)
    for k in ("n_phones_clamped", "n_utterances_chunked", "n_nan_rows", "n_float16_overflow", "n_problems",
              "audio_seconds", "corpus", "encoder", "frame_rule", "pooling", "dtype", "batch_size"):
        assert a.provenance[k] == b.provenance[k], k


def run_shards(corpus: Corpus, model: Path, root: Path, n: int, **kw: object) -> EmbeddingStore:
    enc = load_encoder(model)
    for i in range(n):
        extract_shard(corpus, enc, shard=i, num_shards=n, store_root=root, batch_size=BS, progress=False, **kw)
    return merge_shards(corpus, enc, store_root=root, num_shards=n, batch_size=BS, **kw)


def test_plan_tiles_batches(corpus: Corpus) -> None:
    for balance in ("duration", "index"):
        for n in (1, 2, 3, 5):
            p = plan_shards(corpus, n, batch_size=BS, balance=balance)
            assert list(p["shard"]) == list(range(n))
            assert p["batch_lo"].iloc[0] == 0 and p["batch_hi"].iloc[-1] == 3
            assert (p["batch_lo"].to_numpy()[1:] == p["batch_hi"].to_numpy()[:-1]).all()
            assert (p["row_lo"].to_numpy()[1:] == p["row_hi"].to_numpy()[:-1]).all()
            assert p["row_hi"].iloc[-1] == len(corpus.phones) and p["utt_hi"].iloc[-1] == 8
            assert ((p["utt_lo"] % BS == 0) | (p["utt_lo"] == 8)).all()  # shards start on local batch boundaries
            assert p.attrs["provenance"]["balance"] == balance
    p = plan_shards(corpus, 5, batch_size=BS, balance="index")
    assert (p["batch_hi"] - p["batch_lo"]).tolist().count(0) == 2  # 3 batches, 5 shards
    assert p["audio_seconds"].sum() == pytest.approx(corpus.recordings["duration"].sum(), abs=0.01)
    with pytest.raises(ValueError, match="num_shards"):
        plan_shards(corpus, 0)
    with pytest.raises(ValueError, match="balance"):
        plan_shards(corpus, 2, balance="random")


def test_plan_duration_balance() -> None:
    """One long utterance among short ones: duration balancing isolates it, index balancing does not."""
    recs = pd.DataFrame({"recording_id": [f"r{i}" for i in range(6)], "speaker": "s", "audio_path": "x.wav",
                         "sampling_rate": 16000, "num_channels": 1, "duration": [10.0, 1, 1, 1, 1, 1]})
    phones = pd.DataFrame({"recording_id": [f"r{i}" for i in range(6)], "speaker": "s", "start": 0.0, "end": 0.5,
                           "phone_raw": "a", "phone": "aa"})
    c = Corpus(phones=phones, speakers=pd.DataFrame({"speaker": ["s"]}), recordings=recs, name="t")
    d = plan_shards(c, 2, batch_size=1, balance="duration")
    assert d["utt_hi"].tolist() == [1, 6]
    i = plan_shards(c, 2, batch_size=1, balance="index")
    assert i["utt_hi"].tolist() == [3, 6]


@pytest.mark.parametrize(("family", "n", "dtype"), [("wav2vec2-stable", 2, "float16"), ("wav2vec2", 3, "float32"),
                                                      ("wav2vec2-stable", 5, "float16")])
def test_shard_merge_equals_local(corpus: Corpus, models: dict[str, Path], tmp_path: Path, family: str, n: int,
                                  dtype: str) -> None:
    local = extract(corpus, load_encoder(models[family]), store_root=tmp_path / "local", batch_size=BS,
                    dtype=dtype, progress=False)
    merged = run_shards(corpus, models[family], tmp_path / "sharded", n, dtype=dtype)
    assert_same_store(local, merged)
    b = merged.provenance["backend"]
    assert b["name"] == "shards" and b["num_shards"] == n and len(b["shards"]) == n
    st = shard_status(corpus, models[family], store_root=tmp_path / "sharded", num_shards=n, batch_size=BS,
                      dtype=dtype)
    assert (st["state"] == "complete").all()


def test_finished_shards_are_skipped_and_merge_reports_missing(corpus: Corpus, models: dict[str, Path],
                                                               tmp_path: Path) -> None:
    enc = load_encoder(models["wav2vec2"])
    s0 = extract_shard(corpus, enc, shard=0, num_shards=2, store_root=tmp_path, batch_size=BS, progress=False)
    prov0 = (s0 / "provenance.json").read_text()
    calls = enc.n_forward_calls
    assert extract_shard(corpus, enc, shard=0, num_shards=2, store_root=tmp_path, batch_size=BS,
                         progress=False) == s0
    assert enc.n_forward_calls == calls and (s0 / "provenance.json").read_text() == prov0  # skipped, not redone
    missing = s0.parent / shard_name(1, 2)
    with pytest.raises(StoreError, match=f"1 of 2 shard.*{missing.name}.*missing"):
        merge_shards(corpus, enc, store_root=tmp_path, num_shards=2, batch_size=BS)
    with pytest.raises(StoreError, match="another plan"):  # same shard dir, different batching
        extract_shard(corpus, enc, shard=0, num_shards=2, store_root=tmp_path, batch_size=2, progress=False)
    with pytest.raises(ValueError, match="shard must be"):
        extract_shard(corpus, enc, shard=2, num_shards=2, store_root=tmp_path, progress=False)


def test_resume_partial_shard_and_merge(corpus: Corpus, models: dict[str, Path], tmp_path: Path) -> None:
    """A shard interrupted after its first commit resumes from its journal; the merge still equals local."""
    enc = load_encoder(models["wav2vec2-stable"])
    local = extract(corpus, enc, store_root=tmp_path / "local", batch_size=BS, progress=False)
    root = tmp_path / "sh"
    s1 = extract_shard(corpus, enc, shard=0, num_shards=2, store_root=root, batch_size=BS, progress=False,
                       commit_every_s=0.0)  # shard 0 = batches 0, 1
    # simulate a crash after the first commit: drop COMPLETE and all but the first journal line
    lines = (s1 / "journal.jsonl").read_text().splitlines(keepends=True)
    assert len(lines) >= 2
    (s1 / "journal.jsonl").write_text(lines[0])
    for f in ("COMPLETE", "provenance.json"):
        (s1 / f).unlink()
    extract_shard(corpus, enc, shard=0, num_shards=2, store_root=root, batch_size=BS, progress=False)
    assert json.loads((s1 / "provenance.json").read_text())["n_utterances_reused"] == BS
    extract_shard(corpus, enc, shard=1, num_shards=2, store_root=root, batch_size=BS, progress=False)
    merged = merge_shards(corpus, enc, store_root=root, num_shards=2, batch_size=BS, remove_shards=True)
    assert_same_store(local, merged)
    assert not (merged.path / "shards").exists()
    # shards may be extracted again after a merge: the store is complete, so nothing happens
    extract_shard(corpus, enc, shard=0, num_shards=2, store_root=root, batch_size=BS, progress=False)
    assert not (merged.path / "shards").exists()


def test_corrupt_shard_is_detected(corpus: Corpus, models: dict[str, Path], tmp_path: Path) -> None:
    enc = load_encoder(models["wav2vec2"])
    for i in range(2):
        s = extract_shard(corpus, enc, shard=i, num_shards=2, store_root=tmp_path, batch_size=BS, progress=False)
    f = s / "layer_2.npy"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="layer_2.npy: checksum"):
        merge_shards(corpus, enc, store_root=tmp_path, num_shards=2, batch_size=BS)


def test_unreadable_audio_gives_same_problems(corpus: Corpus, models: dict[str, Path], tmp_path: Path) -> None:
    src = Path(corpus.source)
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    recs = corpus.recordings.copy()
    bad = recs["audio_path"].iloc[4]
    recs["audio_path"] = [str(dst / p) if not Path(p).is_absolute() else str(dst / Path(p).relative_to(src))
                          for p in recs["audio_path"]]
    Path(recs["audio_path"].iloc[4]).write_bytes(b"not a wav")
    c = Corpus(phones=corpus.phones, speakers=corpus.speakers, recordings=recs, name="bad")
    enc = load_encoder(models["wav2vec2"])
    local = extract(c, enc, store_root=tmp_path / "l", batch_size=BS, progress=False, on_audio_error="skip")
    assert len(local.problems) == 1 and Path(str(bad)).name in local.problems["file"].iloc[0]
    merged = run_shards(c, models["wav2vec2"], tmp_path / "s", 2, on_audio_error="skip")
    assert_same_store(local, merged)
    assert merged.provenance["n_nan_rows"] > 0
