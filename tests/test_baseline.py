"""Amplification against a baseline: planted readings (inherited, amplified, reduced, created), coverage of the
paired speaker-level intervals on null and non-null simulated accuracies, pairing, and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from phonefair.analysis.baseline import READINGS, amplification, reading
from phonefair.errors import ConfigError, DataError

GROUPS = ("a", "b", "c", "d")


def simulate(rng: np.random.Generator, *, n: int, base_mu: dict[str, float], enc_mu: dict[str, dict[str, float]],
             spread: float = 0.04, noise: float = 0.01, base_layers: tuple[str, ...] = ("mfcc",)
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-speaker accuracies ``mu_g + u_s + e``: the speaker effect ``u_s`` is shared by every table (a voice hard
    for every representation), ``e`` is per table. ``enc_mu``: layer -> group -> mean."""
    spk = [(f"{g}{i:02d}", g, rng.normal(0, spread * (1 + GROUPS.index(g) / 3))) for g in GROUPS for i in range(n)]

    def table(mus: dict[str, dict[str, float]]) -> pd.DataFrame:
        return pd.DataFrame([{"layer": layer, "speaker": s, "group": g, "accuracy": mu[g] + u + rng.normal(0, noise)}
                             for layer, mu in mus.items() for s, g, u in spk])

    return table(enc_mu), table({k: base_mu for k in base_layers})


def _readings(res: object, group: str) -> list[str]:
    a = res.tables()["amplification"]  # type: ignore[attr-defined]
    return a[a["group"] == group].sort_values("layer")["reading"].tolist()


def test_planted_readings_against_a_reference_group() -> None:
    rng = np.random.default_rng(1)
    base = {"a": 0.70, "b": 0.58, "c": 0.70, "d": 0.71}  # b is 0.12 behind a in the signal
    enc = {"0": {"a": 0.85, "b": 0.73, "c": 0.85, "d": 0.86},  # b's gap kept            -> inherited
           "1": {"a": 0.85, "b": 0.55, "c": 0.85, "d": 0.86},  # b's gap grows to 0.30  -> amplified
           "2": {"a": 0.85, "b": 0.85, "c": 0.85, "d": 0.86},  # b's gap gone           -> reduced
           "3": {"a": 0.85, "b": 0.73, "c": 0.65, "d": 0.86}}  # c gets a gap of 0.20   -> created
    e, b = simulate(rng, n=10, base_mu=base, enc_mu=enc)
    res = amplification(e, b, reference="a")
    assert _readings(res, "b") == ["inherited", "amplified", "reduced", "inherited"]
    assert _readings(res, "c") == ["absent", "absent", "absent", "created"]
    assert _readings(res, "d") == ["absent"] * 4
    assert "a" not in set(res.tables()["amplification"]["group"])  # the reference has no gap of its own
    a = res.tables()["amplification"].set_index(["layer", "group"])
    assert a.loc[("1", "b"), "amplification"] == pytest.approx(0.18, abs=0.03)
    assert a.loc[("3", "c"), "amplification"] == pytest.approx(0.20, abs=0.03)


def test_planted_readings_against_the_leave_one_out_consensus() -> None:
    rng = np.random.default_rng(2)
    base = {"a": 0.70, "b": 0.58, "c": 0.71, "d": 0.69}
    enc = {"0": {g: m + 0.15 for g, m in base.items()},  # every group gains the same: b's gap kept
           "1": {**{g: m + 0.15 for g, m in base.items()}, "b": 0.58}}  # b gains nothing: its gap grows by 0.15
    e, b = simulate(rng, n=8, base_mu=base, enc_mu=enc)
    res = amplification(e, b)
    assert _readings(res, "b") == ["inherited", "amplified"]
    for g in ("a", "c", "d"):
        assert not set(_readings(res, g)) & {"inherited", "amplified", "created"}
    gaps = res.tables()["gaps"].set_index(["source", "layer", "group"])
    ref = np.mean([gaps.loc[("baseline", "mfcc", g), "accuracy"] for g in ("a", "c", "d")])
    assert gaps.loc[("baseline", "mfcc", "b"), "reference_accuracy"] == pytest.approx(ref)
    assert gaps.loc[("baseline", "mfcc", "b"), "gap"] == pytest.approx(0.12, abs=0.03)


def test_headline_is_the_most_accurate_layer_and_feature_set() -> None:
    rng = np.random.default_rng(3)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=5, base_mu=base, base_layers=("logmel", "mfcc"),
                    enc_mu={"0": {g: 0.6 for g in GROUPS}, "1": {g: 0.9 for g in GROUPS}, "2": base})
    b.loc[b["layer"] == "mfcc", "accuracy"] += 0.05
    res = amplification(e, b)
    assert (res.best_layer, res.baseline_layer) == ("1", "mfcc")
    assert set(res.headline()["layer"]) == {"1"} and set(res.headline()["baseline_layer"]) == {"mfcc"}
    assert set(res.summary()["groups"]) == set(GROUPS)
    res2 = amplification(e, b, best_layer="2", baseline_layer="logmel")
    assert (res2.best_layer, res2.baseline_layer) == ("2", "logmel")
    assert len(res.tables()["amplification"]) == 3 * 2 * 4  # every layer x feature set x group


@pytest.mark.parametrize("method", ["welch", "percentile"])
def test_pairing_makes_the_amplification_interval_narrower(method: str) -> None:
    """Speaker effects shared by both tables cancel in the paired difference: the amplification interval is much
    narrower than the two gap intervals combined as if independent."""
    rng = np.random.default_rng(4)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=6, base_mu=base, enc_mu={"0": base}, spread=0.08, noise=0.01)
    a = amplification(e, b, method=method, n_boot=500).tables()["amplification"]
    w_amp = a["ci_high"] - a["ci_low"]
    w_ind = np.hypot(a["encoder_gap_ci_high"] - a["encoder_gap_ci_low"],
                     a["baseline_gap_ci_high"] - a["baseline_gap_ci_low"])
    assert (w_amp < 0.5 * w_ind).all()
    assert ((a["ci_low"] <= a["amplification"]) & (a["amplification"] <= a["ci_high"])).all()


REPS = 60


def test_welch_intervals_cover_at_the_nominal_rate_with_few_speakers() -> None:
    """4 speakers per group, heteroscedastic groups; layers 0-3 are null (every group gains the same, so the true
    amplification is 0), layers 4-7 are not (b gains less). The share of 95 % intervals holding the truth is 0.95
    within simulation error, and under the null the share of intervals excluding 0 (a reading of amplified /
    reduced / created) is 0.05 (bench/baseline_coverage.py has the full table and the percentile method's
    under-coverage)."""
    rng = np.random.default_rng(5)
    base = {"a": 0.70, "b": 0.62, "c": 0.72, "d": 0.68}
    null = {g: m + 0.12 for g, m in base.items()}
    alt = {**null, "b": 0.70}  # b's gap 0.08 -> 0.12
    enc = {str(i): (null if i < 4 else alt) for i in range(8)}

    def gaps(mu: dict[str, float]) -> dict[str, float]:
        return {g: float(np.mean([mu[h] for h in GROUPS if h != g]) - mu[g]) for g in GROUPS}

    truth_amp = {(layer, g): gaps(mu)[g] - gaps(base)[g] for layer, mu in enc.items() for g in GROUPS}
    truth_enc = {(layer, g): gaps(mu)[g] for layer, mu in enc.items() for g in GROUPS}
    assert truth_amp[("7", "b")] == pytest.approx(0.04) and truth_amp[("0", "b")] == pytest.approx(0.0)
    cover, enc_cover, null_reject = [], [], []
    for _ in range(REPS):
        e, b = simulate(rng, n=4, base_mu=base, enc_mu=enc, spread=0.05, noise=0.03, base_layers=("f0", "f1"))
        res = amplification(e, b)
        a = res.tables()["amplification"]
        t = np.array([truth_amp[k] for k in zip(a["layer"], a["group"], strict=True)])
        cover.extend((a["ci_low"] <= t) & (t <= a["ci_high"]))
        is_null = a["layer"].astype(int) < 4
        null_reject.extend(((a["ci_low"] > 0) | (a["ci_high"] < 0))[is_null])
        gp = res.tables()["gaps"]
        gp = gp[gp["source"] == "encoder"]
        te = np.array([truth_enc[k] for k in zip(gp["layer"], gp["group"], strict=True)])
        enc_cover.extend((gp["ci_low"] <= te) & (te <= gp["ci_high"]))
    assert 0.925 <= np.mean(cover) <= 0.975, np.mean(cover)
    assert 0.925 <= np.mean(enc_cover) <= 0.975, np.mean(enc_cover)
    assert 0.025 <= np.mean(null_reject) <= 0.075, np.mean(null_reject)


def test_percentile_intervals_are_seeded_and_paired() -> None:
    rng = np.random.default_rng(6)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=5, base_mu=base, enc_mu={"0": base, "1": base})
    r1 = amplification(e, b, method="percentile", n_boot=300, seed=1).tables()["amplification"]
    r2 = amplification(e, b, method="percentile", n_boot=300, seed=1).tables()["amplification"]
    r3 = amplification(e, b, method="percentile", n_boot=300, seed=2).tables()["amplification"]
    pd.testing.assert_frame_equal(r1, r2)
    assert not np.allclose(r1["ci_low"], r3["ci_low"])
    # identical encoder and baseline accuracies: every resample gives amplification exactly 0
    same = amplification(b.assign(layer="x"), b, method="percentile", n_boot=200).tables()["amplification"]
    assert (same[["amplification", "ci_low", "ci_high"]].abs().to_numpy() < 1e-12).all()


def test_reading_truth_table() -> None:
    pos, zero, neg = (0.01, 0.2), (-0.1, 0.1), (-0.2, -0.01)
    assert reading(pos, pos, pos) == "amplified"
    assert reading(zero, pos, zero) == "inherited"
    assert reading(neg, pos, neg) == "reduced"  # reversed into an advantage: still reduced
    assert reading(pos, zero, pos) == "created"
    assert reading(pos, neg, pos) == "created"
    assert reading(pos, zero, zero) == "unclear"
    assert reading(zero, zero, pos) == "absent"
    assert reading(neg, neg, zero) == "absent"
    assert reading((np.nan, np.nan), pos, pos) == "insufficient"
    assert set(READINGS) == {"amplified", "inherited", "reduced", "created", "unclear", "absent", "insufficient"}


def test_unpaired_speakers_and_bad_rows_are_reported_not_dropped_silently() -> None:
    rng = np.random.default_rng(7)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=4, base_mu=base, enc_mu={"0": base, "1": base})
    e = e[e["speaker"] != "a00"]  # only in the baseline
    b = b[b["speaker"] != "b01"]  # only in the encoder
    e.loc[(e["speaker"] == "c02") & (e["layer"] == "1"), "accuracy"] = np.nan
    e = e[~((e["speaker"] == "d03") & (e["layer"] == "0"))]  # a missing (layer, speaker) row
    res = amplification(e, b)
    pr = res.tables()["problems"].set_index("speaker")
    assert set(pr.index) == {"a00", "b01", "c02", "d03"}
    assert "not in the encoder table" in pr.loc["a00", "reason"]
    assert "layer(s) ['1']" in pr.loc["c02", "reason"]
    assert res.provenance["n_speakers"] == 12
    assert res.tables()["gaps"].groupby("group")["n_speakers"].first().to_dict() == {"a": 3, "b": 3, "c": 3, "d": 3}


def test_a_group_with_one_speaker_reads_insufficient() -> None:
    rng = np.random.default_rng(8)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=3, base_mu=base, enc_mu={"0": base})
    keep = ~e["speaker"].isin(["d01", "d02"])
    res = amplification(e[keep], b[~b["speaker"].isin(["d01", "d02"])], reference="a")
    a = res.tables()["amplification"].set_index("group")
    assert a.loc["d", "reading"] == "insufficient" and np.isnan(a.loc["d", "ci_low"])
    assert a.loc["b", "reading"] != "insufficient"  # b's contrast (a vs b) does not involve d


def test_bad_input_fails_clearly() -> None:
    rng = np.random.default_rng(9)
    base = {"a": 0.7, "b": 0.6, "c": 0.7, "d": 0.7}
    e, b = simulate(rng, n=3, base_mu=base, enc_mu={"0": base})
    with pytest.raises(DataError, match="lacks column"):
        amplification(e.drop(columns="group"), b)
    with pytest.raises(DataError, match="duplicated"):
        amplification(pd.concat([e, e.head(1)]), b)
    with pytest.raises(DataError, match="group 'a' in the encoder table but 'b'"):
        amplification(e, b.assign(group=b["group"].where(b["speaker"] != "a00", "b")))
    with pytest.raises(ConfigError, match="reference group 'zz'"):
        amplification(e, b, reference="zz")
    with pytest.raises(ConfigError, match="method"):
        amplification(e, b, method="bca")
    with pytest.raises(ConfigError, match="best_layer='9'"):
        amplification(e, b, best_layer="9")
    with pytest.raises(DataError, match="at least two groups"):
        amplification(e[e["group"] == "a"], b[b["group"] == "a"])
