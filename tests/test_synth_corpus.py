"""Synthetic espeak-ng corpus: voices, timings, determinism, phone maps, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.corpus.phonesets import ARPABET39, map_label
from phonefair.corpus.schema import Corpus
from phonefair.synth.corpus import build_synthetic_corpus, events_to_phones, plan_speakers
from phonefair.synth.espeak import ACCENT_VOICES, VARIANTS, EspeakError, get_synth, voice_name
from phonefair.synth.sentences import SENTENCES

TEXT = "She could not put the wool back in the wooden box."
ACCENTS = ("en-US", "en-GB-scotland")


def _f0(x: np.ndarray, sr: int) -> float:
    """Median autocorrelation F0 over loud 40 ms frames."""
    x = x.astype(np.float64)
    n = int(0.04 * sr)
    lo, hi = int(sr / 400), int(sr / 60)
    thr = 0.3 * np.sqrt(np.mean(x**2))
    f0s = []
    for i in range(0, len(x) - n, n):
        seg = x[i:i + n] - x[i:i + n].mean()
        if np.sqrt(np.mean(seg**2)) < thr:
            continue
        ac = np.correlate(seg, seg, "full")[n - 1:]
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.3 * ac[0]:
            f0s.append(sr / k)
    return float(np.median(f0s))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Corpus, Path]:
    out = tmp_path_factory.mktemp("synth") / "a"
    c = build_synthetic_corpus(out, accents=ACCENTS, speakers_per_group=1, sentences_per_speaker=1, seed=3,
                               progress=False)
    return c, out


# ---------------------------------------------------------------- synthesiser
def test_singleton_and_version() -> None:
    s = get_synth()
    assert s is get_synth()
    assert s.sample_rate == 22050
    assert s.version.startswith("1.")


def test_unknown_voice_fails_loudly() -> None:
    s = get_synth()
    for bad in ("en-gb", "en-US+zz9", "xx-nothing"):
        with pytest.raises(EspeakError, match="unknown espeak voice"):
            s.synthesize(TEXT, bad)
    with pytest.raises(EspeakError, match="outside"):
        s.synthesize(TEXT, "en-US", pitch=150)


def test_all_accent_variant_voices_exist() -> None:
    s = get_synth()
    for acc in ACCENT_VOICES:
        for fam in VARIANTS.values():
            for v in fam:
                s.set_voice(voice_name(acc, v))  # raises on failure


def test_synthesis_is_deterministic_and_order_independent() -> None:
    s = get_synth()
    a = s.synthesize(TEXT, "en-US+m3", pitch=40)
    s.synthesize("Something else entirely, with a pause.", "en-GB-scotland+f2", pitch=70)
    b = s.synthesize(TEXT, "en-US+m3", pitch=40)
    assert np.array_equal(a.samples, b.samples)
    assert a.events == b.events
    samples, events, sr = a  # unpacks like the documented tuple
    assert samples.dtype == np.int16 and sr == 22050 and events is a.events


def test_events_monotone_and_end_at_audio_end() -> None:
    syn = get_synth().synthesize(TEXT + " Then, after a while, it rained.", "en-US")
    on = np.array([e.onset_ms for e in syn.events])
    assert np.all(np.diff(on) >= 0)
    assert syn.events[-1].label == ""
    assert abs(on[-1] - syn.duration_ms) <= 1.0  # end-of-audio event == sample count (within 1 ms)
    assert syn.timing_source == "sample"
    labels = [e.label for e in syn.events if e.label]
    assert labels[:2] == ["ʃ", "iː"]
    words = [w for e, w in zip(syn.events, syn.words, strict=True) if e.label]
    assert words[0] == "She" and "while" in words and "rained" in words


def test_pitch_changes_f0_and_rate_changes_duration() -> None:
    s = get_synth()
    lo = s.synthesize(TEXT, "en-US+m1", pitch=15)
    hi = s.synthesize(TEXT, "en-US+m1", pitch=85)
    f_lo, f_hi = _f0(lo.samples, lo.sample_rate), _f0(hi.samples, hi.sample_rate)
    assert f_hi > 1.4 * f_lo, (f_lo, f_hi)
    slow = s.synthesize(TEXT, "en-US", rate=120)
    fast = s.synthesize(TEXT, "en-US", rate=300)
    assert slow.duration_ms > 1.8 * fast.duration_ms


def test_accents_differ() -> None:
    s = get_synth()
    us = [e.label for e in s.synthesize(TEXT, "en-US").events]
    sc = [e.label for e in s.synthesize(TEXT, "en-GB-scotland").events]
    assert us != sc
    assert "ʉ" in "".join(sc) and "ʉ" not in "".join(us)  # Scottish GOOSE/FOOT vowel


def test_every_emitted_label_is_mapped_and_all_classes_covered() -> None:
    """Every accent voice x every built-in sentence: no label outside espeak_ipa.tsv; all 39 classes occur."""
    s = get_synth()
    seen: set[str] = set()
    classes: set[str] = set()
    for acc in ACCENT_VOICES:
        for text in SENTENCES:
            for e in s.synthesize(text, acc).events:
                if e.label in seen:
                    continue
                seen.add(e.label)
                targets, _ = map_label(e.label or "_", "espeak_ipa")  # raises UnknownPhoneError
                classes.update(targets)
    assert classes == set(ARPABET39)
    assert len(SENTENCES) >= 60


# ---------------------------------------------------------------- corpus
def test_plan_speakers_and_bad_arguments(tmp_path: Path) -> None:
    sp = plan_speakers(ACCENTS, speakers_per_group=3, seed=1)
    assert len(sp) == 12 and len({s.speaker for s in sp}) == 12
    assert {s.gender for s in sp} == {"male", "female"}
    assert plan_speakers(ACCENTS, speakers_per_group=3, seed=1) == sp
    assert plan_speakers(ACCENTS, speakers_per_group=3, seed=2) != sp
    with pytest.raises(ValueError, match="unknown accent"):
        plan_speakers(("en-XX",))
    with pytest.raises(ValueError, match="not among"):
        plan_speakers(ACCENTS, snr_db={"en-029": 10})
    (tmp_path / "x").write_text("occupied")
    with pytest.raises(FileExistsError):
        build_synthetic_corpus(tmp_path, accents=("en-US",), speakers_per_group=1, sentences_per_speaker=1,
                               progress=False)


def test_corpus_tables_and_files(tiny: tuple[Corpus, Path]) -> None:
    c, out = tiny
    assert c.counts["speakers"] == 4 and c.counts["recordings"] == 4
    assert set(c.speakers["accent"]) == set(ACCENTS)
    for col in ("voice", "variant", "pitch", "rate", "range", "volume", "snr_db", "lowpass_hz", "seed"):
        assert col in c.speakers.columns
    assert c.phones["phone"].notna().all()
    assert set(c.phones["phone"]) <= set(ARPABET39)
    assert c.phones["word"].notna().sum() > 0.9 * (c.phones["phone"] != "sil").sum()
    csv = pd.read_csv(out / "speakers.csv")
    assert list(csv["speaker"]) == list(c.speakers["speaker"])
    utt = pd.read_csv(out / "utterances.csv")
    assert set(utt["recording_id"]) == set(c.recordings["recording_id"]) and set(utt["text"]) <= set(SENTENCES)
    loaded = Corpus.load(out)
    assert loaded.fingerprint() == c.fingerprint()
    pd.testing.assert_frame_equal(loaded.phones, c.phones)
    # TextGrid has the espeak labels (before multi-segment splitting) on the "phones" tier
    from praatio import textgrid

    rid = c.recordings["recording_id"].iloc[0]
    spk = c.recordings["speaker"].iloc[0]
    tg = textgrid.openTextgrid(str(out / "alignments" / spk / f"{rid}.TextGrid"), includeEmptyIntervals=False)
    tier = tg.getTier("phones")
    labels = [e.label for e in tier.entries]
    raw = c.phones.loc[c.phones["recording_id"] == rid, "phone_raw"].tolist()
    assert [x for i, x in enumerate(raw) if i == 0 or x != raw[i - 1]] == \
        [x for i, x in enumerate(labels) if i == 0 or x != labels[i - 1]]


def test_phone_timings_line_up_with_audio(tiny: tuple[Corpus, Path]) -> None:
    c, _ = tiny
    for rec in c.recordings.itertuples():
        x, sr = sf.read(c.audio_path(rec.recording_id), dtype="float64")
        assert sr == 16000 and abs(len(x) / sr - rec.duration) < 1e-9
        ph = c.phones[c.phones["recording_id"] == rec.recording_id]
        assert np.all(ph["end"].to_numpy() > ph["start"].to_numpy())
        assert np.all(np.diff(ph["start"].to_numpy()) > 0)
        assert np.all(ph["start"].to_numpy()[1:] >= ph["end"].to_numpy()[:-1] - 1e-9)
        first, last = ph["start"].min(), ph["end"].max()
        assert 0 < first < 0.05
        assert 0 <= rec.duration - last < 0.03  # trailing silence after the last phone: a few ms
        speech = [x[int(s * sr):int(e * sr)] for s, e, p in zip(ph["start"], ph["end"], ph["phone"], strict=True)
                  if p != "sil"]
        p_speech = np.mean(np.concatenate(speech) ** 2)
        outside = np.concatenate([x[:int(first * sr)], x[int(np.ceil(last * sr)):]])
        p_out = np.mean(outside**2) if len(outside) else 0.0
        assert p_speech > 100 * p_out


def test_build_is_byte_identical(tiny: tuple[Corpus, Path], tmp_path: Path) -> None:
    c, out = tiny
    c2 = build_synthetic_corpus(tmp_path / "b", accents=ACCENTS, speakers_per_group=1, sentences_per_speaker=1,
                                seed=3, progress=False)
    for rel in c.recordings["audio_path"]:
        assert (out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    pd.testing.assert_frame_equal(c.phones, c2.phones)
    pd.testing.assert_frame_equal(c.recordings, c2.recordings)
    pd.testing.assert_frame_equal(c.speakers, c2.speakers)
    c3 = build_synthetic_corpus(tmp_path / "c", accents=ACCENTS, speakers_per_group=1, sentences_per_speaker=1,
                                seed=4, progress=False)
    assert not c3.speakers[["pitch", "rate"]].equals(c.speakers[["pitch", "rate"]])


def test_channel_effects_and_minutes_cap(tmp_path: Path) -> None:
    c = build_synthetic_corpus(tmp_path / "n", accents=ACCENTS, speakers_per_group=1, sentences_per_speaker=2,
                               families=("f",), snr_db={"en-GB-scotland": 5.0}, lowpass_hz={"en-US": 1000.0},
                               max_minutes=0.05, progress=False)
    # the cap keeps whole rounds of utterances and reports the rest
    assert 1 <= c.counts["recordings"] < 4
    assert (c.problems["action"] == "skipped utterance").sum() == 1
    for rec in c.recordings.itertuples():
        x, sr = sf.read(c.audio_path(rec.recording_id), dtype="float64")
        ph = c.phones[c.phones["recording_id"] == rec.recording_id]
        lead = x[:int(ph["start"].min() * sr)]
        spec = np.abs(np.fft.rfft(x)) ** 2
        f = np.fft.rfftfreq(len(x), 1 / sr)
        hf_share = spec[f > 2000].sum() / spec.sum()
        if rec.speaker.startswith("en-GB-scotland"):
            assert np.sqrt(np.mean(lead**2)) > 1e-3  # noise fills the leading silence
        else:
            assert hf_share < 1e-3  # low-passed at 1 kHz
            assert np.sqrt(np.mean(lead**2)) < 1e-3


def test_events_to_phones_pause_policy() -> None:
    syn = get_synth().synthesize("Hello there. Good morning.", "en-US")
    df = events_to_phones(syn)
    assert df["phone_raw"].iloc[0] != "_" and df["phone_raw"].iloc[-1] != "_"
    assert (df["phone_raw"] == "_").sum() == 1  # one internal pause between the two sentences
    assert df["word"][df["phone_raw"] == "_"].isna().all()


def test_generic_textgrid_loader_reads_the_same_phones(tiny: tuple[Corpus, Path]) -> None:
    from phonefair.corpus.textgrid_corpus import load_textgrid_corpus

    c, out = tiny
    g = load_textgrid_corpus(out / "audio", alignments=out / "alignments", speakers=out / "speakers.csv",
                             phone_scheme="espeak_ipa", phone_tier="phones", word_tier="words")
    assert g.counts["phones"] == c.counts["phones"] and g.counts["recordings"] == c.counts["recordings"]
    a = c.phones.sort_values(["speaker", "start"], kind="stable").reset_index(drop=True)
    b = g.phones.sort_values(["speaker", "start"], kind="stable").reset_index(drop=True)
    np.testing.assert_allclose(a["start"], b["start"], atol=1e-9)
    np.testing.assert_allclose(a["end"], b["end"], atol=1e-9)
    assert (a["phone"] == b["phone"]).all() and (a["phone_raw"] == b["phone_raw"]).all()
    assert set(g.speakers["accent"]) == set(ACCENTS)


def test_several_sentences_per_recording_read_the_same_sentences_in_fewer_recordings(tmp_path: Path) -> None:
    """The demo's Whisper pads every input to 30 s: two sentences per recording halve the recordings, not the speech."""
    kw: dict = {"accents": ("en-US",), "speakers_per_group": 1, "families": ("m",), "sentences_per_speaker": 4,
                "seed": 0, "progress": False}
    one = build_synthetic_corpus(tmp_path / "one", **kw)
    two = build_synthetic_corpus(tmp_path / "two", sentences_per_recording=2, **kw)
    assert len(one.recordings) == 4 and len(two.recordings) == 2
    assert two.recordings["duration"].sum() == pytest.approx(one.recordings["duration"].sum(), rel=0.15)
    texts = pd.read_csv(tmp_path / "two" / "utterances.csv")["text"].tolist()
    assert texts == [f"{SENTENCES[0]} {SENTENCES[1]}", f"{SENTENCES[2]} {SENTENCES[3]}"]
    speech = ~one.phones["phone"].isin(["sil"])  # the joined reading may add a pause between the sentences
    assert sorted(two.phones.loc[~two.phones["phone"].isin(["sil"]), "phone"]) == sorted(one.phones.loc[speech,
                                                                                                          "phone"])
    assert two.extra["sentences_per_recording"] == 2
    with pytest.raises(ValueError, match="divide sentences_per_speaker"):
        build_synthetic_corpus(tmp_path / "bad", **{**kw, "sentences_per_speaker": 3}, sentences_per_recording=2)
