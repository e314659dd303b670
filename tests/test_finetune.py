"""Fine-tuning (CTC / adversarial / domain-enhancing) and the before/after comparison, on tiny random encoders and
a tiny generated corpus. CPU-only, deterministic, a few seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from phonefair.corpus.schema import Corpus
from phonefair.finetune import (VOCAB, GroupBalancedSampler, UniformSampler, Utterance, WeightSchedule,
                                build_utterances, edit_distance, finetune, grad_reverse,
                                greedy_decode, per_by_group)
from phonefair.finetune.data import encode_phones
from phonefair.finetune.objectives import GroupClassifier, masked_mean

SR = 16000
PHONES = ["iy", "s", "aa", "m", "t", "eh", "n", "uw"]
FREQ = {p: 200.0 + 90.0 * i for i, p in enumerate(PHONES)}


# ---------------------------------------------------------------------------------------------------- fixtures
def _make_corpus(root: Path, *, speakers_per_group: int = 4, seed: int = 0) -> tuple[Corpus, pd.Series]:
    """2 groups × ``speakers_per_group`` speakers × 1 utterance of 1 s: sil + 8 tones (one per phone) + sil.
    Group B is pitch-shifted (an "accent"). Half of each group's speakers are train, half test."""
    rng = np.random.default_rng(seed)
    phones, recs, spks = [], [], []
    for g, shift in (("A", 1.0), ("B", 1.25)):
        for k in range(speakers_per_group):
            spk = f"{g}{k}"
            rid = f"{spk}_u0"
            order = rng.permutation(PHONES).tolist()
            t = 0.1
            wave = [0.01 * rng.standard_normal(int(0.1 * SR))]
            phones.append(dict(recording_id=rid, speaker=spk, start=0.0, end=0.1, phone_raw="sil", phone="sil"))
            for p in order:
                n = int(0.1 * SR)
                tt = np.arange(n) / SR
                wave.append(0.3 * np.sin(2 * np.pi * FREQ[p] * shift * tt) + 0.01 * rng.standard_normal(n))
                phones.append(dict(recording_id=rid, speaker=spk, start=t, end=t + 0.1, phone_raw=p, phone=p))
                t += 0.1
            wave.append(0.01 * rng.standard_normal(int(0.1 * SR)))
            phones.append(dict(recording_id=rid, speaker=spk, start=t, end=t + 0.1, phone_raw="sil", phone="sil"))
            path = root / f"{rid}.wav"
            sf.write(path, np.concatenate(wave).astype(np.float32), SR)
            recs.append(dict(recording_id=rid, speaker=spk, audio_path=str(path), sampling_rate=SR, num_channels=1,
                             duration=t + 0.1))
            spks.append(dict(speaker=spk, accent=g, age=np.nan))  # (schema: a missing float column fails to cast)
    ph = pd.DataFrame(phones)
    split = {s["speaker"]: ("train" if int(s["speaker"][1:]) < speakers_per_group // 2 else "test") for s in spks}
    ph["split"] = ph["speaker"].map(split)
    corpus = Corpus(phones=ph, speakers=pd.DataFrame(spks), recordings=pd.DataFrame(recs), name="tones",
                    source=str(root))
    groups = pd.Series({s["speaker"]: s["accent"] for s in spks}, name="accent")
    return corpus, groups


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Corpus, pd.Series]:
    return _make_corpus(tmp_path_factory.mktemp("audio"))


@pytest.fixture(scope="module")
def tiny_w2v(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phonefair.encoders.tiny import save_tiny_model

    return save_tiny_model("wav2vec2", tmp_path_factory.mktemp("w2v"), seed=0)


FAST = dict(batch_size=4, lr=1e-3, n_boot=50, progress=False, save_every=100)


# ---------------------------------------------------------------------------------------------------- data
def test_build_utterances_removes_sil_and_reports(tiny_corpus: tuple[Corpus, pd.Series]) -> None:
    corpus, groups = tiny_corpus
    us = build_utterances(corpus, groups.drop("B3"))  # one speaker without a group
    assert len(us.utterances) == 7
    assert us.n_sil_removed == 16
    u = next(x for x in us.utterances if x.speaker == "A0")
    assert len(u.targets) == 8 and 0 not in u.targets  # 8 speech phones, no blank, no sil
    assert VOCAB[0] == "<blank>" and "sil" not in VOCAB and len(VOCAB) == 39
    bad = us.problems[us.problems["file"] == "B3_u0"]
    assert len(bad) == 1 and "no group" in bad["message"].iloc[0]
    s = us.summary()
    assert set(s["split"]) == {"train", "test"} and s["n_phones"].sum() == 7 * 8


def test_encode_phones_rejects_sil() -> None:
    assert encode_phones(["iy", "hh"]) == [1, 38]
    with pytest.raises(ValueError, match="'sil'"):
        encode_phones(["sil"])


def _utts(counts: dict[str, int]) -> list[Utterance]:
    return [Utterance(f"{g}{i}", f"{g}{i}", g, "train", (1,), 0.0, 1.0) for g, n in counts.items() for i in range(n)]


def test_group_balanced_sampler_is_balanced() -> None:
    utts = _utts({"A": 20, "B": 4, "C": 2})  # very unbalanced groups
    sampler = GroupBalancedSampler(utts, 6, seed=3)
    totals = {"A": 0, "B": 0, "C": 0}
    for step in range(50):
        batch = [utts[i].group for i in sampler.batch(step)]
        assert len(batch) == 6
        assert {g: batch.count(g) for g in totals} == {"A": 2, "B": 2, "C": 2}  # exactly balanced per batch
        for g in totals:
            totals[g] += batch.count(g)
    # batch size not divisible by the number of groups: each batch within 1, totals nearly equal
    s7 = GroupBalancedSampler(utts, 7, seed=0)
    counts = np.zeros(3)
    for step in range(300):
        b = [utts[i].group for i in s7.batch(step)]
        c = np.array([b.count(g) for g in "ABC"])
        assert c.max() - c.min() <= 1
        counts += c
    assert np.abs(counts / counts.sum() - 1 / 3).max() < 0.03
    # batches are a pure function of (seed, step): resumable
    assert s7.batch(17) == GroupBalancedSampler(utts, 7, seed=0).batch(17)
    # the uniform sampler, by contrast, follows the group sizes
    uni = UniformSampler(utts, 6, seed=0)
    share_a = np.mean([np.mean([utts[i].group == "A" for i in uni.batch(s)]) for s in range(200)])
    assert share_a > 0.6


# ---------------------------------------------------------------------------------------------------- objectives
def test_gradient_reversal_flips_sign_numerically() -> None:
    torch.manual_seed(0)
    enc = torch.nn.Linear(5, 4)
    clf = GroupClassifier(4, 3, bottleneck=6, dropout=0.0)
    x = torch.randn(2, 7, 5, dtype=torch.float64)
    enc, clf = enc.double(), clf.double()
    mask = torch.ones(2, 7, dtype=torch.bool)
    y = torch.tensor([0, 2])

    def grads(scale: float | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        enc.zero_grad()
        clf.zero_grad()
        h = enc(x)
        h = h if scale is None else grad_reverse(h, scale)
        torch.nn.functional.cross_entropy(clf(h, mask), y).backward()
        return [p.grad.clone() for p in enc.parameters()], [p.grad.clone() for p in clf.parameters()]

    e_plain, c_plain = grads(None)
    e_rev, c_rev = grads(0.7)
    for a, b in zip(e_plain, e_rev, strict=True):
        assert torch.allclose(b, -0.7 * a, atol=1e-12) and a.abs().max() > 0  # encoder gradient: flipped, scaled
    for a, b in zip(c_plain, c_rev, strict=True):
        assert torch.allclose(a, b)  # the classifier itself still learns to predict the group
    # the un-reversed gradient is the true derivative (finite differences), so the reversed one ascends the loss
    w = enc.weight
    eps = 1e-6
    with torch.no_grad():
        w[1, 2] += eps
        lp = torch.nn.functional.cross_entropy(clf(enc(x), mask), y)
        w[1, 2] -= 2 * eps
        lm = torch.nn.functional.cross_entropy(clf(enc(x), mask), y)
        w[1, 2] += eps
    assert float((lp - lm) / (2 * eps)) == pytest.approx(float(e_plain[0][1, 2]), rel=1e-5, abs=1e-9)
    with pytest.raises(ValueError):
        grad_reverse(x, -1.0)


def test_gradient_reversal_on_a_tiny_encoder(tiny_w2v: Path) -> None:
    """The sign flip also holds through a real transformers encoder (pooled states → group classifier)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tiny_w2v).eval()
    torch.manual_seed(0)
    clf = GroupClassifier(32, 2, bottleneck=8, dropout=0.0)
    x = torch.randn(2, 8000)
    y = torch.tensor([0, 1])
    mask = torch.ones(2, 24, dtype=torch.bool)

    def enc_grad(scale: float | None) -> torch.Tensor:
        model.zero_grad()
        h = model(x).last_hidden_state
        h = h if scale is None else grad_reverse(h, scale)
        torch.nn.functional.cross_entropy(clf(h, mask), y).backward()
        return model.encoder.layers[-1].feed_forward.output_dense.weight.grad.clone()

    g0, g1 = enc_grad(None), enc_grad(2.0)
    assert g0.abs().max() > 0
    torch.testing.assert_close(g1, -2.0 * g0, rtol=1e-5, atol=1e-7)


def test_masked_mean_ignores_padding() -> None:
    h = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert float(masked_mean(h, torch.tensor([[True, True, False]]))) == 2.0


def test_weight_schedule() -> None:
    d = WeightSchedule(kind="dann", max=0.5, start=2)
    assert d(0, 12) == 0.0 and d(2, 12) == 0.0
    assert d(12, 12) == pytest.approx(0.5 * (2 / (1 + np.exp(-10)) - 1))
    vals = [d(t, 12) for t in range(2, 13)]
    assert all(b > a for a, b in zip(vals, vals[1:], strict=False))
    assert WeightSchedule(kind="linear", max=1.0)(5, 10) == 0.5
    assert WeightSchedule.parse(0.3) == WeightSchedule(kind="constant", max=0.3)
    assert WeightSchedule.parse({"kind": "linear", "max": 2}).max == 2
    with pytest.raises(ValueError, match="unknown field"):
        WeightSchedule.parse({"maximum": 1})
    with pytest.raises(ValueError):
        WeightSchedule(kind="cosine")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------- PER
def test_greedy_decode_and_edit_distance() -> None:
    assert greedy_decode([0, 3, 3, 0, 3, 5, 5, 0]) == [3, 3, 5]
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([1, 2, 3], [4, 2, 3, 5]) == 2
    assert edit_distance([], [1, 2]) == 2


def test_per_by_group_is_total_edits_over_total_phones() -> None:
    spk = pd.DataFrame({"speaker": ["a", "b", "c", "d", "a"], "group": ["X", "X", "Y", "Y", "X"],
                        "edits": [1, 4, 0, 2, 1], "ref_phones": [10, 10, 20, 20, 10]})
    out = per_by_group(spk, n_boot=200, seed=0).set_index("group")
    assert out.loc["X", "per"] == pytest.approx(6 / 30)  # speaker a's two rows are one cluster
    assert out.loc["Y", "per"] == pytest.approx(2 / 40)
    assert out.loc["X", "n_speakers"] == 2 and out.loc["X", "n_phones"] == 30
    assert out.loc["X", "ci_low"] <= out.loc["X", "per"] <= out.loc["X", "ci_high"]
    assert out.loc["X", "ci_high"] > out.loc["X", "ci_low"]  # speakers differ, so the interval has width


# ---------------------------------------------------------------------------------------------------- training
def test_ctc_finetune_reduces_loss_and_saves_reloadable_model(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series],
                                                              tiny_w2v: Path) -> None:
    corpus, groups = tiny_corpus
    # batch = all 4 training utterances every step, so the logged losses are comparable across steps
    res = finetune(corpus, groups, tiny_w2v, tmp_path / "ctc", objective="ctc", steps=15, head_warmup_steps=3,
                   **{**FAST, "head_lr": 3e-2})
    log = res.log
    assert list(log["step"]) == list(range(15))
    assert log["loss_ctc"].iloc[-3:].mean() < 0.7 * log["loss_ctc"].iloc[:2].mean()
    assert (log["phase"].iloc[:3] == "head").all() and (log["lr"].iloc[:3] == 0).all()  # encoder frozen
    assert log["loss_group"].isna().all() and (log["grad_norm"] > 0).all()
    for c in ("step", "loss_ctc", "loss_group", "lambda", "lr", "grad_norm"):
        assert c in log.columns
    # log + config on disk
    lines = (tmp_path / "ctc" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 15 and json.loads(lines[-1])["step"] == 14
    assert json.loads(lines[0])["loss_group"] is None  # strict JSON: no NaN literals
    assert json.loads((tmp_path / "ctc" / "config.json").read_text())["objective"] == ["ctc"]
    # PER per group on the held-out (test) speakers
    per = res.per_group_per
    assert list(per["group"]) == ["A", "B"] and (per["n_speakers"] == 2).all() and (per["n_phones"] == 16).all()
    assert ((per["per"] >= 0) & (per["ci_low"] <= per["per"]) & (per["per"] <= per["ci_high"])).all()
    assert set(res.per_speaker_per["speaker"]) == {"A2", "A3", "B2", "B3"}
    assert "provenance" in per.attrs
    # the saved directory reloads offline as a standard transformers model; the CNN stayed frozen
    from transformers import AutoModel

    orig = AutoModel.from_pretrained(tiny_w2v)
    tuned = AutoModel.from_pretrained(res.model_dir, local_files_only=True)
    assert (res.model_dir / "preprocessor_config.json").is_file()
    so, st = orig.state_dict(), tuned.state_dict()
    assert all(torch.equal(so[k], st[k]) for k in so if k.startswith("feature_extractor."))
    assert any(not torch.equal(so[k], st[k]) for k in so if k.startswith("encoder.layers."))
    # ... and extracts through phonefair's own encoder loader
    from phonefair.encoders import load_encoder

    frames = load_encoder(str(res.model_dir)).frames(np.zeros(16000, dtype=np.float32) + 0.01)
    assert frames["3"].shape == (49, 32) and np.isfinite(frames["3"]).all()


def test_adversarial_and_domain_objectives(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series],
                                           tiny_w2v: Path) -> None:
    corpus, groups = tiny_corpus
    adv = finetune(corpus, groups, tiny_w2v, tmp_path / "adv", objective="adversarial", steps=4,
                   adv_weight={"kind": "linear", "max": 1.0}, **FAST)
    assert np.isfinite(adv.log["loss_group"]).all()
    assert list(adv.log["lambda"]) == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert not adv.config.balanced
    dom = finetune(corpus, groups, tiny_w2v, tmp_path / "dom", objective="domain", steps=3,
                   **{**FAST, "batch_size": 2})
    assert dom.config.balanced  # domain-enhancing implies group-balanced batches
    assert all(b == {"A": 1, "B": 1} for b in dom.log["groups_in_batch"])
    assert (dom.log["lambda"] == 0).all() and np.isfinite(dom.log["loss_group"]).all()
    # combined: two classifiers on different layers
    both = finetune(corpus, groups, tiny_w2v, tmp_path / "both", objective={"adversarial", "domain"}, steps=2,
                    **FAST)
    assert both.config.objective == ("adversarial", "domain")
    with pytest.raises(ValueError, match="same layer"):
        finetune(corpus, groups, tiny_w2v, tmp_path / "clash", objective=["adversarial", "domain"], steps=1,
                 domain_layer="last", **FAST)


def test_resume_continues_exactly(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series], tiny_w2v: Path) -> None:
    corpus, groups = tiny_corpus
    kw = dict(objective="adversarial", head_warmup_steps=1, **{**FAST, "save_every": 2})
    full = finetune(corpus, groups, tiny_w2v, tmp_path / "full", steps=4, **kw)
    part = finetune(corpus, groups, tiny_w2v, tmp_path / "part", steps=4, stop_after=3, **kw)  # "interrupted"
    assert not part.complete and list(part.log["step"]) == [0, 1, 2] and part.per_group_per.empty
    (tmp_path / "part" / "log.jsonl").open("a").write('{"step": 3, "loss_ctc": -1}\n')  # a step after the checkpoint
    resumed = finetune(corpus, groups, tiny_w2v, tmp_path / "part", steps=4, **kw)
    assert resumed.complete
    assert list(resumed.log["step"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(resumed.log["loss_ctc"], full.log["loss_ctc"], rtol=1e-5)
    from safetensors.torch import load_file

    a = load_file(full.model_dir / "model.safetensors")
    b = load_file(resumed.model_dir / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(resumed.per_group_per, full.per_group_per)
    with pytest.raises(ValueError, match="cannot resume.*lr"):
        finetune(corpus, groups, tiny_w2v, tmp_path / "part", steps=4, **{**kw, "lr": 5e-4})
    with pytest.raises(FileExistsError, match="resume=True"):
        finetune(corpus, groups, tiny_w2v, tmp_path / "part", steps=4, resume=False, **kw)


def test_progress_bar_with_the_ctc_objective(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series], tiny_w2v: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 15 row 9: ``phonefair finetune`` crashed with "unsupported format string passed to
    NoneType.__format__" (the progress bar formatted loss_group=None for the ctc variant); --quiet worked."""
    corpus, groups = tiny_corpus
    res = finetune(corpus, groups, tiny_w2v, tmp_path / "ctc", objective="ctc", steps=2,
                   **{**FAST, "progress": True})
    assert res.complete and "finetune ctc" in capsys.readouterr().err


class _Planted:
    """Unpickling this object creates a file: a stand-in for code planted in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


def test_a_planted_checkpoint_is_refused_not_executed(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series],
                                                      tiny_w2v: Path) -> None:
    """Issue 15 row 4: resuming read ``trainer_state.pt`` with ``torch.load(weights_only=False)``, so a results
    folder received from someone else could run code."""
    from phonefair.finetune.train import CHECKPOINT, STATE_FILE

    corpus, groups = tiny_corpus
    out = tmp_path / "ft"
    part = finetune(corpus, groups, tiny_w2v, out, objective="ctc", steps=3, stop_after=1, **FAST)
    assert not part.complete
    state = out / CHECKPOINT / STATE_FILE
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "payload": _Planted(marker)}, state)
    with pytest.raises(ValueError, match=r"trainer_state\.pt.*not a plain tensor state"):
        finetune(corpus, groups, tiny_w2v, out, objective="ctc", steps=3, **FAST)
    assert not marker.exists()


def test_bad_inputs(tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series], tiny_w2v: Path) -> None:
    corpus, groups = tiny_corpus
    from phonefair.encoders.tiny import save_tiny_model

    whisper = save_tiny_model("whisper", tmp_path / "whisper")
    with pytest.raises(ValueError, match="whisper.*not supported"):
        finetune(corpus, groups, whisper, tmp_path / "w", steps=1, **FAST)
    with pytest.raises(ValueError, match="unknown objective"):
        finetune(corpus, groups, tiny_w2v, tmp_path / "x", objective="fair", steps=1, **FAST)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown key"):
        from phonefair.finetune import FinetuneConfig

        FinetuneConfig.from_dict({"stepz": 3})
    nosplit = corpus.with_tables(phones=corpus.phones.assign(split=pd.NA))
    with pytest.raises(ValueError, match="split"):
        finetune(nosplit, groups, tiny_w2v, tmp_path / "y", steps=1, **FAST)
    one_group = groups.map(lambda g: "A")
    with pytest.raises(ValueError, match=">= 2 groups"):
        finetune(corpus, one_group, tiny_w2v, tmp_path / "z", objective="adversarial", steps=1, **FAST)


# ---------------------------------------------------------------------------------------------------- compare
def test_end_to_end_on_the_espeak_synthetic_corpus(tmp_path: Path, tiny_w2v: Path) -> None:
    """Real (synthetic) speech with espeak phone alignments: build, split, fine-tune adversarially, evaluate."""
    pytest.importorskip("espeakng_loader")
    from phonefair.groups import apply_split, split_speakers
    from phonefair.synth.corpus import build_synthetic_corpus

    corpus = build_synthetic_corpus(tmp_path / "syn", accents=["en-US", "en-GB-scotland"], speakers_per_group=2,
                                    sentences_per_speaker=1, seed=0, progress=False)
    groups = corpus.speakers.set_index("speaker")["accent"].astype(str)
    corpus = apply_split(corpus, split_speakers(groups, test_fraction=0.5, seed=0))
    res = finetune(corpus, groups, tiny_w2v, tmp_path / "ft", objective="adversarial", steps=3, **FAST)
    assert res.complete and res.problems.empty
    assert list(res.per_group_per["group"]) == ["en-GB-scotland", "en-US"]
    assert (res.per_group_per["n_speakers"] == 2).all()
    n_ref = corpus.phones[(corpus.phones["split"] == "test") & (corpus.phones["phone"] != "sil")].shape[0]
    assert res.per_group_per["n_phones"].sum() == n_ref  # every held-out speech phone is scored


@pytest.mark.parametrize("family", ["wav2vec2-stable", "hubert", "wavlm", "data2vec-audio"])
def test_other_families(family: str, tmp_path: Path, tiny_corpus: tuple[Corpus, pd.Series]) -> None:
    from transformers import AutoModel

    from phonefair.encoders.tiny import save_tiny_model

    src = save_tiny_model(family, tmp_path / "src")
    res = finetune(*tiny_corpus, src, tmp_path / "ft", objective="domain", steps=2, **FAST)
    assert np.isfinite(res.log["loss_ctc"]).all() and len(res.per_group_per) == 2
    so = AutoModel.from_pretrained(src).state_dict()
    st = AutoModel.from_pretrained(res.model_dir, local_files_only=True).state_dict()
    assert so.keys() == st.keys()
    assert all(torch.equal(so[k], st[k]) for k in so if k.startswith("feature_extractor."))  # CNN frozen
    assert any(not torch.equal(so[k], st[k]) for k in so if k.startswith("encoder.layers."))
