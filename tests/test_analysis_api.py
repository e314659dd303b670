"""Public API of phonefair.analysis: table contract, provenance, inputs from probes, save/load, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis import TypologyResults, analyze, load
from phonefair.store.base import InMemoryEmbeddings
from phonefair.synth.simulate import simulate

FAST = {"n_perm": 99, "n_boot": 50, "progress": False}

CONTRACT = {
    "decomposition": ["layer", "space", "group", "phone", "shift_sq", "shift_ci_low", "shift_ci_high",
                      "between_speaker_var", "within_speaker_var", "share_systematic", "share_random", "n_speakers",
                      "n_tokens"],
    "shift_tests": ["layer", "space", "group", "phone", "effect", "p_value", "q_value", "significant"],
    "pairwise_shift": ["layer", "space", "phone", "group_a", "group_b", "dist_sq"],
    "speaker_variance": ["layer", "space", "speaker", "group", "variance", "n_tokens"],
    "variance_accuracy": ["layer", "space", "rho", "ci_low", "ci_high", "n_speakers", "rank_agreement"],
    "verdict": ["layer", "group", "verdict", "accuracy_gap", "accuracy_gap_ci_low", "accuracy_gap_ci_high",
                "shift_sq", "variance_ratio", "in_group_benefit", "evidence"],
}


def ncm_accuracy(sim, layer: str = "0") -> pd.DataFrame:  # type: ignore[no-untyped-def]
    """Leave-speaker-out nearest-class-mean accuracy per speaker, written independently of the module."""
    tok = sim.tokens.reset_index(drop=True)
    X = sim.embeddings.read(layer).astype(np.float64)
    rows = []
    for spk, idx in tok.groupby("speaker").groups.items():
        others = tok.index.difference(idx)
        means = pd.DataFrame(X[others]).groupby(tok.loc[others, "phone"].to_numpy()).mean()
        d = ((X[idx][:, None, :] - means.to_numpy()[None]) ** 2).sum(-1)
        pred = means.index.to_numpy()[d.argmin(1)]
        rows.append({"layer": layer, "speaker": spk, "group": sim.groups[spk],
                     "accuracy": float(np.mean(pred == tok.loc[idx, "phone"].to_numpy()))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def shift_res() -> TypologyResults:
    sim = simulate("shift", seed=7, layers=("0", "1"))
    return analyze(sim.embeddings, sim.groups, **FAST)


def test_tables_follow_contract_with_provenance(shift_res: TypologyResults) -> None:
    t = shift_res.tables()
    for name, cols in CONTRACT.items():
        assert list(t[name].columns) == cols, name
        prov = t[name].attrs["provenance"]
        assert prov["seed"] == 0 and prov["table"] == name
        assert prov["settings"]["n_perm"] == 99
    assert list(pd.unique(t["verdict"]["layer"])) == ["0", "1"]
    assert set(t["decomposition"]["space"]) == {"raw", "lda"}
    d = t["decomposition"]
    star = d[d["phone"] == "*"]
    np.testing.assert_allclose((star["share_systematic"] + star["share_random"]).to_numpy(), 1.0)
    # pairwise matrix: symmetric, zero diagonal
    pw = t["pairwise_shift"]
    m = pw[(pw["layer"] == "0") & (pw["space"] == "raw") & (pw["phone"] == "*")].pivot(
        index="group_a", columns="group_b", values="dist_sq")
    np.testing.assert_allclose(m.to_numpy(), m.to_numpy().T, atol=1e-10)
    np.testing.assert_allclose(np.diag(m.to_numpy()), 0.0)
    assert m.loc["C", "A"] > 1.0 and abs(m.loc["A", "B"]) < 0.5


def test_summary_and_save_load_roundtrip(shift_res: TypologyResults, tmp_path: Path) -> None:
    s = shift_res.summary()
    assert s["layers"]["0"]["C"]["verdict"] == "systematic-dominant"
    assert all(x["group"] == "C" for x in s["significant_shifts"])
    shift_res.save(tmp_path / "typ")
    back = load(tmp_path / "typ")
    for name, df in shift_res.tables().items():
        pd.testing.assert_frame_equal(back.tables()[name], df, check_dtype=False)
        assert back.tables()[name].attrs["provenance"]["settings"]["n_boot"] == 50
    with pytest.raises(FileNotFoundError, match="typology.json"):
        TypologyResults.load(tmp_path)


def test_given_probe_tables_are_used() -> None:
    sim = simulate("variance", seed=3)
    acc = ncm_accuracy(sim)
    igb = pd.DataFrame({"layer": ["0"] * 3, "group": ["A", "B", "C"], "delta": [0.0, 0.05, 0.0],
                        "ci_low": [-0.01, 0.02, -0.01], "ci_high": [0.01, 0.08, 0.01],
                        "q_value": [0.9, 0.01, 0.9]})
    res = analyze(sim.embeddings, sim.groups, speaker_accuracy=acc, in_group_benefit=igb, **FAST)
    t = res.tables()
    assert t["verdict"].attrs["provenance"]["settings"]["accuracy_source"] == "given"
    v = t["verdict"].set_index("group")
    # B has no shift in the embeddings but a significant in-group benefit: behavioural evidence of systematic error
    assert v.loc["B", "verdict"] == "systematic-dominant"
    assert v.loc["B", "in_group_benefit"] == pytest.approx(0.05)
    assert v.loc["C", "verdict"] == "random-dominant"
    # the noisier group is the less accurate one: negative speaker-level ρ, group rankings agree
    va = t["variance_accuracy"].set_index("space")
    assert va.loc["lda", "rho"] < 0 and va.loc["lda", "ci_high"] < 0.1
    assert va.loc["lda", "n_speakers"] == 36
    gap = v.loc["C", ["accuracy_gap", "accuracy_gap_ci_low"]]
    assert gap["accuracy_gap"] > 0


def test_probe_results_object_is_accepted() -> None:
    sim = simulate("null", seed=1)

    class FakeProbeResults:
        def tables(self) -> dict[str, pd.DataFrame]:
            return {"speaker_accuracy": ncm_accuracy(sim), "in_group_benefit": pd.DataFrame(
                {"layer": ["0"], "group": ["A"], "delta": [0.0], "q_value": [1.0]})}

    res = analyze(sim.embeddings, sim.groups, probe_results=FakeProbeResults(), spaces=("raw",), **FAST)
    assert (res.tables()["verdict"]["verdict"] == "no detectable disadvantage").all()


def test_fallback_accuracy_and_problems_reported() -> None:
    sim = simulate("null", seed=2)
    tok = sim.tokens.copy()
    tok.loc[tok.index[:30], "phone"] = "sil"
    emb = InMemoryEmbeddings(tok, {"0": sim.embeddings.read("0")})
    groups = sim.groups.copy()
    groups["ghost"] = "A"  # in groups, no tokens
    groups = groups.drop(groups.index[groups == "B"][0])  # a speaker with tokens but no group
    res = analyze(emb, groups, spaces=("raw",), **FAST)
    pr = res.tables()["problems"]
    reasons = " | ".join(pr["reason"])
    assert "exclude_phones" in reasons and "no tokens" in reasons and "no group" in reasons
    assert res.tables()["verdict"].attrs["provenance"]["settings"]["accuracy_source"].startswith("fallback")
    sv = res.tables()["speaker_variance"]
    assert len(sv) == 35 and sv["variance"].between(0.3, 3).all()


def test_small_groups_are_excluded_and_reported() -> None:
    sim = simulate("null", seed=2)
    g = sim.groups.copy()
    g[g.index[g == "C"][:9]] = "D"  # D has 9 speakers, C only 3
    res = analyze(sim.embeddings, g, spaces=("raw",), min_speakers=5, **FAST)
    assert set(res.tables()["verdict"]["group"]) == {"A", "B", "D"}
    assert res.tables()["problems"]["reason"].str.contains("min_speakers").any()


def test_bad_input_errors() -> None:
    sim = simulate("null", seed=0)
    with pytest.raises(ValueError, match="reference group 'Z'"):
        analyze(sim.embeddings, sim.groups, reference="Z", **FAST)
    with pytest.raises(ValueError, match="unknown layers"):
        analyze(sim.embeddings, sim.groups, layers=["7"], **FAST)
    with pytest.raises(ValueError, match="unknown space"):
        analyze(sim.embeddings, sim.groups, spaces=("pca",), **FAST)
    with pytest.raises(TypeError, match="pandas Series"):
        analyze(sim.embeddings, dict(sim.groups), **FAST)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 groups"):
        analyze(sim.embeddings, sim.groups.map(lambda _: "A"), **FAST)
    with pytest.raises(ValueError, match="speaker_accuracy is missing columns"):
        analyze(sim.embeddings, sim.groups, speaker_accuracy=pd.DataFrame({"speaker": ["A_s00"]}), **FAST)


def test_nonfinite_rows_are_skipped_and_reported() -> None:
    """Stores mark utterances they could not embed with NaN rows: those rows must not poison the statistics."""
    sim = simulate("shift", seed=7)
    X = sim.embeddings.read("0").copy()
    X[[3, 500, 900]] = np.nan
    emb = InMemoryEmbeddings(sim.tokens, {"0": X})
    res = analyze(emb, sim.groups, **FAST)
    t = res.tables()
    assert t["problems"]["reason"].str.contains("3 token rows hold NaN").any()
    assert np.isfinite(t["decomposition"]["within_speaker_var"]).all()
    assert t["speaker_variance"]["n_tokens"].sum() == 2 * (len(sim.tokens) - 3)  # two spaces
    assert dict(zip(t["verdict"]["group"], t["verdict"]["verdict"], strict=True))["C"] == "systematic-dominant"
