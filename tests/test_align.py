"""Forced alignment (phonefair.align): the CTC Viterbi against brute force, text normalisation, espeak-ng G2P, the
pocketsphinx backend on synthetic speech with known phone boundaries, out-of-vocabulary words, silence and other
failures, resume and parallel workers, the CTC backend's model layouts, and the alignment-quality statistics
(planted truth)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from phonefair.align import (
    AlignmentFailure,
    align_corpus,
    alignment_quality_by_group,
    boundary_errors,
    ctc_forced_align,
    normalize_transcript,
    summarize_errors,
)
from phonefair.align.g2p import arpabet_from_ipa, ipa_phonemes
from phonefair.align.quality import between_group_permutation_test
from phonefair.align.viterbi import min_frames
from phonefair.cli import main
from phonefair.corpus import load_corpus
from phonefair.corpus.schema import Corpus
from phonefair.errors import ConfigError
from phonefair.synth.corpus import build_synthetic_corpus
from phonefair.synth.espeak import get_synth

SR = 16000


# ---------------------------------------------------------------------------------------------------- CTC Viterbi
def _collapse(path: tuple[int, ...], blank: int) -> list[int]:
    out: list[int] = []
    prev = None
    for p in path:
        if p != prev and p != blank:
            out.append(p)
        prev = p
    return out


@pytest.mark.parametrize("seed", range(6))
def test_ctc_viterbi_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_frames, vocab, blank = 6, 4, 0
    targets = [[1, 2], [2, 2], [1, 1, 3], [3], [1, 2, 1], [2, 3, 3]][seed]
    lp = np.log(rng.dirichlet(np.ones(vocab), size=n_frames))
    best, best_path = -np.inf, None
    for path in itertools.product(range(vocab), repeat=n_frames):
        if _collapse(path, blank) == targets:
            score = lp[np.arange(n_frames), path].sum()
            if score > best:
                best, best_path = score, path
    res = ctc_forced_align(lp, targets, blank=blank)
    assert res.log_prob == pytest.approx(best)
    # the returned path spells the targets and its score is its log-probability
    labels = [blank if k < 0 else targets[k] for k in res.token]
    assert _collapse(tuple(labels), blank) == targets
    assert lp[np.arange(n_frames), labels].sum() == pytest.approx(res.log_prob)
    assert best_path is not None


def test_ctc_viterbi_repeats_need_a_blank_and_impossible_raises() -> None:
    lp = np.log(np.full((2, 3), 1 / 3))
    assert min_frames([1, 1]) == 3 and min_frames([1, 2]) == 2
    with pytest.raises(ValueError, match="needs 3"):
        ctc_forced_align(lp, [1, 1])
    res = ctc_forced_align(np.log(np.full((3, 3), 1 / 3)), [1, 1])
    assert res.token.tolist() == [0, -1, 1]  # token, blank, token
    with pytest.raises(ValueError, match="blank"):
        ctc_forced_align(lp, [0])
    with pytest.raises(ValueError, match="empty"):
        ctc_forced_align(lp, [])


def test_ctc_viterbi_recovers_planted_spans() -> None:
    # posteriors that clearly put token a at frames 2-4 and token b at frames 7-8, blanks elsewhere
    lp = np.full((10, 3), np.log(0.05))
    lp[:, 0] = np.log(0.9)
    lp[2:5] = np.log([0.05, 0.9, 0.05])
    lp[7:9] = np.log([0.05, 0.05, 0.9])
    res = ctc_forced_align(lp, [1, 2])
    assert res.spans(2) == [(2, 4), (7, 8)]


# ---------------------------------------------------------------------------------------------------- text, G2P
def test_normalize_transcript_rule() -> None:
    assert normalize_transcript("Hello, WORLD! It's well-known: 42 o’clock.") == [
        "hello", "world", "it's", "well", "known", "42", "o'clock"]
    assert normalize_transcript("'cause  ...  Straße") == ["cause", "strasse"]
    assert normalize_transcript(" ... ") == []
    assert normalize_transcript("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # combining marks stay inside the word


def test_espeak_g2p_numbers_and_arpabet() -> None:
    forty_two = ipa_phonemes("42", "en-US")
    classes, unknown = arpabet_from_ipa(forty_two)
    assert unknown == [] and classes[:2] == ["f", "aa"] and classes[-2:] == ["t", "uw"]  # "forty two"
    assert arpabet_from_ipa(("ˈoʊ", "q"))[1] == ["q"]  # a label with no ARPABET class is reported
    fr = ipa_phonemes("bonjour", "fr")
    assert fr[0] == "b" and "ʒ" in fr
    with pytest.raises(ConfigError, match="'xx'"):
        ipa_phonemes("a", "xx")


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    d = tmp_path_factory.mktemp("synth")
    return build_synthetic_corpus(d, accents=["en-US", "en-GB-scotland"], speakers_per_group=1, families=("m",),
                                  sentences_per_speaker=2, seed=0, progress=False)


def _table(corpus: Corpus, tmp: Path, extra: list[dict[str, str]] | None = None) -> Path:
    utt = pd.read_csv(Path(corpus.source) / "utterances.csv")
    spk = corpus.speakers.set_index("speaker")
    rows = [{"audio": str(corpus.audio_path(r.recording_id)), "text": r.text, "speaker": r.speaker,
             "accent": spk.loc[r.speaker, "accent"]} for r in utt.itertuples()]
    path = tmp / "utterances.csv"
    pd.DataFrame(rows + (extra or [])).to_csv(path, index=False)
    return path


def _bad_inputs(tmp: Path) -> list[dict[str, str]]:
    """One utterance per failure kind, plus one with an out-of-vocabulary word that must still align."""
    d = tmp / "bad"
    d.mkdir()
    sf.write(d / "silent.wav", np.zeros(SR, dtype=np.float32), SR)
    sf.write(d / "short.wav", 0.1 * np.random.default_rng(0).standard_normal(800).astype(np.float32), SR)
    (d / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    syn = get_synth().synthesize("The zorblax sat down on the mat.", "en-US")
    sf.write(d / "oov.wav", syn.samples, syn.sample_rate)
    sf.write(d / "empty.wav", 0.1 * np.random.default_rng(1).standard_normal(SR).astype(np.float32), SR)
    return [{"audio": str(d / "silent.wav"), "text": "hello there", "speaker": "x1", "accent": "z"},
            {"audio": str(d / "short.wav"), "text": "a rather long sentence for so little audio", "speaker": "x1",
             "accent": "z"},
            {"audio": str(d / "broken.wav"), "text": "hello", "speaker": "x1", "accent": "z"},
            {"audio": str(d / "oov.wav"), "text": "The zorblax sat down on the mat.", "speaker": "x2", "accent": "z"},
            {"audio": str(d / "empty.wav"), "text": "... !", "speaker": "x2", "accent": "z"},
            {"audio": str(d / "nothing.wav"), "text": "", "speaker": "x2", "accent": "z"}]


@pytest.fixture(scope="module")
def aligned(synth: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    tmp = tmp_path_factory.mktemp("aligned")
    table = _table(synth, tmp, _bad_inputs(tmp))
    out = tmp / "out"
    res = align_corpus(table, out, backend="pocketsphinx", progress=False)
    return table, out, res


# ---------------------------------------------------------------------------------------------------- pocketsphinx
def test_pocketsphinx_boundaries_against_espeak_truth(synth: Corpus, aligned: tuple[Path, Path, object]) -> None:
    q = aligned[2].quality  # type: ignore[attr-defined]
    pairs = []
    for rec in synth.recordings.itertuples():
        hyp = q[q["recording_id"] == f"{rec.speaker}/{rec.recording_id}"]
        ref = synth.phones[(synth.phones["recording_id"] == rec.recording_id) & (synth.phones["phone"] != "sil")]
        assert len(hyp) > 10
        pairs.append(boundary_errors(ref[["start", "end", "phone"]], hyp[["start", "end", "phone"]]))
    s = summarize_errors(pd.concat(pairs))
    assert s["median_ms"] < 30 and s["p90_ms"] < 100 and s["label_agreement"] > 0.85
    assert (q["confidence"] <= 0).all() and q["confidence"].notna().all()  # nats per frame, best = 0


def test_every_input_row_is_aligned_or_reported(aligned: tuple[Path, Path, object]) -> None:
    _, out, res = aligned
    u = res.utterances  # type: ignore[attr-defined]
    p = res.problems  # type: ignore[attr-defined]
    status = dict(zip(u["recording_id"], u["status"], strict=True))
    assert status["x1/silent"] == "failed" and status["x1/short"] == "failed" and status["x1/broken"] == "failed"
    assert status["x2/oov"] == "aligned" and status["x2/empty"] == "failed"
    kind = dict(zip(u["recording_id"], u["problem"], strict=True))
    assert kind["x1/silent"] == "audio_silent" and kind["x1/short"] == "audio_too_short"
    assert kind["x1/broken"] == "audio_unreadable" and kind["x2/empty"] == "empty_transcript"
    # the row without a transcript never became an utterance: it is an input problem naming its line
    bad = p[p["kind"] == "bad_input"]
    assert len(bad) == 1 and int(bad["line"].iloc[0]) == 11 and "transcript" in bad["message"].iloc[0]
    oov = p[(p["kind"] == "oov_g2p") & (p["recording_id"] == "x2/oov")]
    assert len(oov) == 1 and "zorblax" in oov["message"].iloc[0] and oov["severity"].iloc[0] == "warning"
    assert set(p.loc[p["recording_id"].isin(["x1/silent", "x1/short", "x1/broken", "x2/empty"]), "severity"]) == {
        "error"}
    # failed utterances leave no TextGrid and no audio link; aligned ones have both
    assert not (out / "x1" / "silent.TextGrid").exists() and not (out / "x1" / "silent.wav").exists()
    assert (out / "x2" / "oov.TextGrid").is_file() and (out / "x2" / "oov.wav").is_file()
    words = res.quality.query("recording_id == 'x2/oov'")["word"].tolist()  # type: ignore[attr-defined]
    assert "zorblax" in words
    assert (out / "alignment_problems.csv").is_file()


def test_aligned_output_loads_with_the_generic_loader(synth: Corpus, aligned: tuple[Path, Path, object]) -> None:
    _, out, res = aligned
    corpus = load_corpus("textgrid", out, speakers=out / "speakers.csv")
    aligned_ids = set(res.utterances.query("status == 'aligned'")["recording_id"])  # type: ignore[attr-defined]
    assert set(corpus.recordings["recording_id"]) == aligned_ids
    assert corpus.problems.query("severity == 'error'").empty
    assert corpus.phones["phone"].notna().all() and (corpus.phones["phone"] != "sil").all()
    spk = corpus.speakers.set_index("speaker")
    truth = synth.speakers.set_index("speaker")["accent"]
    assert (spk.loc[truth.index, "accent"] == truth).all() and spk.loc["x2", "accent"] == "z"
    # the phone table equals the alignment_quality table (same phones, same times)
    q = res.quality  # type: ignore[attr-defined]
    assert len(corpus.phones) == len(q)
    merged = corpus.phones.sort_values(["recording_id", "start"])["start"].to_numpy()
    assert np.allclose(merged, q.sort_values(["recording_id", "start"])["start"].to_numpy(), atol=1e-6)
    assert res.load().recordings.shape[0] == len(aligned_ids)  # type: ignore[attr-defined]


def test_resume_skips_done_and_redoes_changed(aligned: tuple[Path, Path, object], tmp_path: Path) -> None:
    table, out, first = aligned
    grids = sorted(out.rglob("*.TextGrid"))
    stamp = {g: g.stat().st_mtime_ns for g in grids}
    again = align_corpus(table, out, progress=False)
    assert again.counts["resumed"] == again.counts["utterances"]
    assert all(g.stat().st_mtime_ns == stamp[g] for g in grids)
    pd.testing.assert_frame_equal(again.quality, first.quality)  # type: ignore[attr-defined]
    # a changed transcript is aligned again; the others are not
    df = pd.read_csv(table)
    df.loc[df["audio"].str.endswith("oov.wav"), "text"] = "The zorblax sat on the mat."
    changed = tmp_path / "changed.csv"
    df.to_csv(changed, index=False)
    third = align_corpus(changed, out, progress=False)
    assert third.counts["resumed"] == third.counts["utterances"] - 1
    assert (out / "x2" / "oov.TextGrid").stat().st_mtime_ns != stamp[out / "x2" / "oov.TextGrid"]
    assert "down" not in third.quality.query("recording_id == 'x2/oov'")["word"].tolist()


def test_parallel_workers_give_the_same_textgrids(synth: Corpus, aligned: tuple[Path, Path, object],
                                                  tmp_path: Path) -> None:
    _, out1, _ = aligned
    table = _table(synth, tmp_path)
    out2 = tmp_path / "par"
    res = align_corpus(table, out2, jobs=2, progress=False)
    assert res.counts["aligned"] == len(synth.recordings)
    for g in out2.rglob("*.TextGrid"):
        assert g.read_text() == (out1 / g.relative_to(out2)).read_text()


def test_unpronounceable_word_fails_the_utterance(monkeypatch: pytest.MonkeyPatch, synth: Corpus) -> None:
    from phonefair.align import sphinx

    monkeypatch.setattr(sphinx, "ipa_phonemes", lambda word, lang: ("ˈoʊ", "q"))
    aligner = sphinx.PocketsphinxAligner()
    x = np.asarray(sf.read(synth.audio_path(synth.recordings["recording_id"].iloc[0]))[0], dtype=np.float32)
    with pytest.raises(AlignmentFailure) as exc:
        aligner.align(x, ["the", "qqxqq"])
    assert exc.value.kind == "oov_unpronounceable" and "qqxqq" in exc.value.message and "'q'" in exc.value.message


def test_pocketsphinx_refuses_other_languages() -> None:
    from phonefair.align.sphinx import PocketsphinxAligner

    with pytest.raises(ConfigError, match="English only"):
        PocketsphinxAligner(language="fr")


# ---------------------------------------------------------------------------------------------------- inputs, CLI
def test_folder_input_and_cli(synth: Corpus, tmp_path: Path) -> None:
    src = tmp_path / "folder"
    utt = pd.read_csv(Path(synth.source) / "utterances.csv").head(2)
    for r in utt.itertuples():
        (src / r.speaker).mkdir(parents=True, exist_ok=True)
        x, sr = sf.read(synth.audio_path(r.recording_id))
        sf.write(src / r.speaker / f"{r.recording_id}.wav", x, sr)
        (src / r.speaker / f"{r.recording_id}.lab").write_text(r.text)
    sf.write(src / utt.speaker.iloc[0] / "orphan.wav", np.zeros(SR, dtype=np.float32), SR)  # no transcript
    out = tmp_path / "out"
    assert main(["--quiet", "align", str(src), "--out", str(out)]) == 0
    u = pd.read_parquet(out / "alignment_utterances.parquet")
    assert (u["status"] == "aligned").sum() == 2
    p = pd.read_parquet(out / "alignment_problems.parquet")
    assert p["file"].str.endswith("orphan.wav").any()
    corpus = load_corpus("textgrid", out, speakers=out / "speakers.csv")
    assert set(corpus.speakers["speaker"]) == set(utt["speaker"])
    assert main(["--quiet", "align", str(src), "--out", str(tmp_path / "x"), "--backend", "ctc"]) == 2  # no model
    assert main(["--quiet", "align", str(src), "--out", str(src)]) == 2  # would write into the input


# ---------------------------------------------------------------------------------------------------- CTC backend
def _hf_ctc_model(directory: Path, vocab: list[str]) -> Path:
    """A tiny random Wav2Vec2ForCTC in the Hugging Face layout (config + weights + vocab.json)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForCTC

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                         conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                         vocab_size=len(vocab), pad_token_id=0)
    Wav2Vec2ForCTC(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=True).save_pretrained(directory)
    (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    return directory


def test_tokenize_ipa_longest_match() -> None:
    from phonefair.align.ctc import tokenize_ipa

    vocab = {"a": 1, "aɪ": 2, "ɪ": 3, "g": 4, "t": 5, "ʃ": 6}
    assert tokenize_ipa("aɪ", vocab) == (["aɪ"], "")
    assert tokenize_ipa("ɡ", vocab) == (["g"], "")  # U+0261 matches an ASCII g
    assert tokenize_ipa("tʃ", vocab) == (["t", "ʃ"], "")
    assert tokenize_ipa("aɪə", vocab) == (["aɪ"], "ə")


def test_ctc_backend_hf_layout_ipa_vocabulary(synth: Corpus, tmp_path: Path) -> None:
    from phonefair.align.ctc import CTCAligner

    vocab = ["<pad>", "<unk>", "|", *"bdfhjklmnprstvwzæðŋɑɔəɛɜɡɪʃʊʌʒθ", "aɪ", "eɪ", "oʊ", "aʊ", "iː", "uː", "ɹ",
             "ɚ", "ɾ", "tʃ", "dʒ", "ɔː", "ɑː"]
    model = _hf_ctc_model(tmp_path / "hf", vocab)
    aligner = CTCAligner(model, language="en-US")
    assert aligner.phone_scheme == "espeak_ipa" and aligner.blank == 0 and aligner.hop == pytest.approx(0.02)
    rid = synth.recordings["recording_id"].iloc[0]
    x = sf.read(synth.audio_path(rid), dtype="float32")[0]
    words = normalize_transcript(pd.read_csv(Path(synth.source) / "utterances.csv").set_index(
        "recording_id").loc[rid, "text"])
    res = aligner.align(x, words)
    assert [p.word_index for p in res.phones] == sorted(p.word_index for p in res.phones)
    assert all(p.label in vocab for p in res.phones) and all(0 <= p.confidence <= 1 for p in res.phones)
    starts = [p.start for p in res.phones]
    assert starts == sorted(starts) and all(p.end > p.start for p in res.phones)
    assert all(a.end == pytest.approx(b.start) for a, b in zip(res.phones, res.phones[1:], strict=False))


def test_ctc_backend_finetune_layout_through_align_corpus(synth: Corpus, tmp_path: Path) -> None:
    import torch

    from phonefair.encoders.tiny import save_tiny_model
    from phonefair.finetune import VOCAB

    ft = tmp_path / "ft"
    save_tiny_model("wav2vec2", ft / "model", seed=0)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, len(VOCAB))
    torch.save({"state_dict": {f"proj.{k}": v for k, v in head.state_dict().items()}, "vocab": list(VOCAB),
                "hidden_size": 32}, ft / "ctc_head.pt")
    table = _table(synth, tmp_path)
    res = align_corpus(table, tmp_path / "out", backend="ctc", model=ft, progress=False)
    assert res.phone_scheme == "arpabet" and res.counts["aligned"] == len(synth.recordings)
    assert res.quality["phone"].notna().all() and res.quality["confidence"].between(0, 1).all()
    corpus = res.load()
    assert len(corpus.phones) == len(res.quality)


# ---------------------------------------------------------------------------------------------------- quality
def _simulated(n_per_group: int, shift: float, rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                   pd.Series]:
    rows, utts, groups = [], [], {}
    for g, delta in (("A", 0.0), ("B", shift)):
        for k in range(n_per_group):
            spk = f"{g}{k}"
            groups[spk] = g
            level = rng.normal(-1.0 + delta, 0.2)  # speaker effect: tokens are nested in speakers
            for u in range(3):
                utts.append({"speaker": spk, "status": "aligned"})
                for phone in ("aa", "iy", "s"):
                    rows.append({"speaker": spk, "phone": phone, "confidence": level + rng.normal(0, 0.3)})
    return pd.DataFrame(rows), pd.DataFrame(utts), pd.Series(groups)


def test_quality_test_null_rate_and_planted_shift() -> None:
    rng = np.random.default_rng(0)
    p_null = []
    for _ in range(200):
        q, u, g = _simulated(8, 0.0, rng)
        spk = q.groupby("speaker")["confidence"].mean()
        p_null.append(between_group_permutation_test(spk.to_numpy(), g[spk.index].to_numpy(), n_perm=99,
                                                     seed=int(rng.integers(1 << 30)))[1])
    rate = float(np.mean(np.array(p_null) <= 0.05))
    assert 0.01 <= rate <= 0.10  # nominal 5 %; binomial sd over 200 runs is 1.5 %
    q, u, g = _simulated(8, 0.5, rng)
    by_group, tests, warnings = alignment_quality_by_group(q, u, g, n_perm=199, n_boot=200, seed=0)
    conf = tests.set_index("metric").loc["confidence"]
    assert conf["p_value"] < 0.01 and conf["significant"]
    est = by_group.query("metric == 'confidence'").set_index("group")
    assert est.loc["B", "estimate"] > est.loc["A", "estimate"]
    assert (est["ci_low"] <= est["estimate"]).all() and (est["estimate"] <= est["ci_high"]).all()
    assert any("alignment confidence differs" in w and "worst A" in w for w in warnings)
    assert not tests.set_index("metric").loc["failure_rate", "significant"]  # no failures planted


def test_quality_by_group_on_real_alignment(aligned: tuple[Path, Path, object]) -> None:
    _, _, res = aligned
    u = res.utterances  # type: ignore[attr-defined]
    groups = pd.Series({s: ("bad" if s.startswith("x") else "synthetic") for s in u["speaker"].unique()})
    by_group, tests, _ = res.quality_by_group(groups, n_perm=99, n_boot=100)  # type: ignore[attr-defined]
    fr = by_group.query("metric == 'failure_rate'").set_index("group")
    assert fr.loc["synthetic", "estimate"] == 0.0 and fr.loc["bad", "estimate"] > 0.5
    assert set(tests["metric"]) == {"confidence", "confidence_phone_adjusted", "failure_rate"}
    assert tests["p_value"].between(0, 1).all()


@pytest.mark.slow
def test_ctc_backend_with_a_tiny_model_finetuned_by_phonefair(tmp_path: Path) -> None:
    """A tiny wav2vec2 (random frozen CNN) gets a phone CTC head from ``phonefair.finetune`` on synthetic speech;
    forced alignment with it on held-out speakers must beat spreading the phones uniformly over the speech."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from phonefair.finetune import finetune

    # 2 accents x 2 voice families x 5 speakers x 8 sentences; speaker 5 of each cell (other sentences) held out
    corpus = build_synthetic_corpus(tmp_path / "synth", accents=["en-US", "en-GB-x-rp"], speakers_per_group=5,
                                    families=("m", "f"), sentences_per_speaker=8, seed=1, progress=False)
    torch.manual_seed(0)
    model = tmp_path / "tiny64"
    Wav2Vec2Model(Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                                 conv_dim=(64,) * 7, num_conv_pos_embeddings=16,
                                 num_conv_pos_embedding_groups=2)).save_pretrained(model)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SR, do_normalize=False).save_pretrained(model)
    held_out = {s for s in corpus.speakers["speaker"] if s.endswith("_s05")}
    groups = corpus.speakers.set_index("speaker")["accent"]
    split = corpus.phones["speaker"].map(lambda s: "test" if s in held_out else "train")
    trained = corpus.with_tables(phones=corpus.phones.assign(split=split))
    # fewer steps or utterances than this and the tiny model memorises its training audio instead of learning
    # phones (its alignments of new speakers are then no better than uniform)
    ft = finetune(trained, groups, model, tmp_path / "ft", steps=500, batch_size=8, lr=3e-3, head_lr=1e-2,
                  n_boot=10, progress=False, seed=0)

    texts = pd.read_csv(Path(corpus.source) / "utterances.csv").set_index("recording_id")["text"]
    rows = [{"audio": str(corpus.audio_path(r.recording_id)), "text": texts[r.recording_id], "speaker": r.speaker}
            for r in corpus.recordings.itertuples() if r.speaker in held_out]
    pd.DataFrame(rows).to_csv(tmp_path / "held_out.csv", index=False)
    res = align_corpus(tmp_path / "held_out.csv", tmp_path / "out", backend="ctc", model=ft.out_dir,
                       progress=False)
    assert res.counts["aligned"] == len(rows)
    ctc, uniform = [], []
    for rid, hyp in res.quality.groupby("recording_id"):
        ref = corpus.phones[(corpus.phones["recording_id"] == rid.split("/")[1]) & (corpus.phones["phone"] != "sil")]
        ctc.append(boundary_errors(ref[["start", "end", "phone"]], hyp[["start", "end", "phone"]]))
        edges = np.linspace(ref["start"].min(), ref["end"].max(), len(hyp) + 1)
        uniform.append(boundary_errors(ref[["start", "end", "phone"]],
                                       hyp[["phone"]].assign(start=edges[:-1], end=edges[1:])))
    got, base = summarize_errors(pd.concat(ctc)), summarize_errors(pd.concat(uniform))
    assert got["median_ms"] < 0.75 * base["median_ms"], (got, base)
    assert got["within_20ms"] > base["within_20ms"] + 0.1, (got, base)
