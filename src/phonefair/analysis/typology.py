"""``analyze``: the random-vs-systematic typology of phone embeddings, per group, phone, layer and space.

Per layer (one layer in memory at a time):

1. a seeded token sample → per-phone centres (numerics) and, for the ``"lda"`` space, a whitened shrinkage LDA fitted
   on phone labels only (no group labels enter it, so it leaves the group permutation tests exact);
2. one streaming pass → per-(speaker, phone) count / mean / within-SS in every space;
3. descriptive statistics of every group against the consensus of the others (or the reference): shift and
   variance components (decomposition), the pairwise shift matrix, per-phone shift tests and variance tests with
   adaptive speaker permutations, speaker-bootstrap intervals, per-speaker normalised variance;
4. for the groups found served worse (:mod:`~phonefair.analysis.served`), the mechanism tests of
   :mod:`~phonefair.analysis.mechanism`.

After all layers: Benjamini–Hochberg across layers × groups × phones for the descriptive tests, the
variance–accuracy relation, the mechanism tables. See ``docs/typology.md`` for every definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair import rng
from phonefair.analysis.decomposition import components, consensus, group_moments, nanmean_last
from phonefair.analysis.mechanism import MechanismPlan, mechanism_tables, plan_mechanisms
from phonefair.analysis.shift_tests import CrossFit, SplitPair, adaptive_test, percentile, permutation_test, subset
from phonefair.analysis.sufficient import LayerStats, SpaceStats, accumulate_layer, fit_lda, phone_centres, sample_rows
from phonefair.analysis.variance import phone_scale, speaker_dispersion, variance_accuracy
from phonefair.audit.design import Design
from phonefair.io import ResultTables, load_tables, save_tables
from phonefair.layers import layer_order, parse_layers
from phonefair.settings import AnalysisSettings
from phonefair.stats import benjamini_hochberg, cluster_bootstrap_weights, holm
from phonefair.store.base import EmbeddingSource

__all__ = ["TypologyResults", "analyze", "consensus_pvalue", "TABLES"]

TABLES = ("decomposition", "shift_tests", "pairwise_shift", "variance_tests", "speaker_variance",
          "variance_accuracy", "mechanism", "mechanism_components", "phone_shift", "shares", "problems")


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


@dataclass
class TypologyResults(ResultTables):
    """Output of :func:`analyze`: tidy tables by name (see :data:`TABLES` and ``docs/typology.md``) + provenance."""

    def summary(self) -> dict[str, Any]:
        """Per layer and group: the phone-averaged shift² and variance ratio against the consensus, with q."""
        st = self.table_map["shift_tests"]
        vt = self.table_map["variance_tests"]
        out: dict[str, Any] = {}
        for (layer, space), d in st[st["phone"] == "*"].groupby(["layer", "space"], sort=False):
            v = vt[(vt["layer"] == layer) & (vt["space"] == space)].set_index("group")
            out.setdefault(str(layer), {})[str(space)] = {
                str(r["group"]): {"shift_sq": _clean(r["effect"]), "q_shift": _clean(r["q_value"]),
                                  "variance_ratio": _clean(v.loc[r["group"], "variance_ratio"])
                                  if r["group"] in v.index else None}
                for _, r in d.iterrows()}
        return {"layers": out, "settings": self.provenance.get("settings", {})}

    def save(self, directory: str | Path) -> Path:
        return save_tables(Path(directory), self.table_map, fmt="typology", meta={"provenance": self.provenance})

    @classmethod
    def load(cls, directory: str | Path) -> TypologyResults:
        tables, meta = load_tables(directory, fmt="typology")
        return cls(table_map=tables, provenance=meta["provenance"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.table_map.items())
        return f"TypologyResults({sizes})"


def consensus_pvalue(pair_p: np.ndarray, n_groups: int) -> np.ndarray:
    """Combine pairwise p-values ``[G-1, ...]`` of one group into a p-value against the median-group consensus.

    The consensus shift of ``g`` is positive only if ``g`` differs from at least ``K = ceil(G/2)`` of the other
    groups. Intersection–union test: reject when the ``K``-th smallest pairwise p-value is small, Bonferroni-corrected
    over the ``G − K`` ways one true null can slip in: ``p = min(1, (G − K) · p_(K))``.
    """
    K = min(int(np.ceil(n_groups / 2)), n_groups - 1)
    srt = np.sort(pair_p, axis=0)  # NaN sort last
    return np.minimum(1.0, max(n_groups - K, 1) * srt[K - 1])


# ---------------------------------------------------------------------------------------------- analyze
def analyze(source: EmbeddingSource, design: Design, settings: AnalysisSettings | None = None, *,
            served: Any = None, speaker_accuracy: pd.DataFrame | None = None,
            layers: Sequence[str] | None = None, seed: int = 0, progress: bool = False,
            lda_max_tokens: int = 50_000, lda_shrinkage: float = 0.1, chunk_rows: int = 32_768) -> TypologyResults:
    """Random (variance) vs systematic (shift) typology of phone embeddings, per group, phone, layer and space.

    ``design``: the validated audit design. ``served``: the :class:`~phonefair.analysis.served.ServedWorse` result
    (its groups served worse get the mechanism tests). ``speaker_accuracy``: the probes' per-speaker accuracies
    (columns ``layer, speaker, standardized_accuracy``) for the variance–accuracy relation.
    """
    s = settings or AnalysisSettings()
    all_layers = [str(x) for x in source.layers]
    layer_list = layer_order(all_layers if layers is None else parse_layers(list(layers), all_layers))
    spaces = list(s.spaces)
    n_mech = min(s.n_perm, 1999)
    halves = speaker_halves(design, seed) if "lda" in spaces else None
    plans = plan_mechanisms(design, served.decisions, n_perm=n_mech, seed=seed, halves=halves) \
        if served is not None else []
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("decomposition", "tests", "pairwise", "variance",
                                                             "speaker")}
    problems: list[dict[str, Any]] = [dict(r) for r in design.problems.to_dict("records")]
    lda_info: dict[str, Any] = {}
    n_perm_used: list[int] = []
    it: Any = layer_list
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(layer_list, desc="typology", unit="layer", leave=False)
    for layer in it:
        ls, info, cf = _layer_stats(source, design, layer, spaces, seed=seed, lda_max_tokens=lda_max_tokens,
                                    lda_shrinkage=lda_shrinkage, chunk_rows=chunk_rows, halves=halves)
        lda_info[layer] = info
        if ls.nonfinite_rows is not None and len(ls.nonfinite_rows):
            problems.append({"reason": f"layer {layer}: {len(ls.nonfinite_rows)} token rows hold NaN/inf and were "
                                       f"not analysed (first rows: {ls.nonfinite_rows[:10].tolist()})"})
        for space in spaces:
            st = ls.spaces[space]
            scale = phone_scale(st)
            gen = rng.derive(seed, "typology", layer, space)
            xfit = cf if space == "lda" else None
            n_perm_used += _describe(st, design, layer, space, scale, rows, n_perm=s.n_perm, n_boot=s.n_boot,
                                     level=s.level, gen=gen, cross_fit=xfit)
            for plan in plans:
                if layer in plan.layers or layer == plan.peak_layer:
                    plan.collect(layer, space, st, scale, design.phones, n_boot=s.n_boot, level=s.level, seed=seed,
                                 cross_fit=xfit)
        del ls

    tests = pd.DataFrame(rows["tests"])
    vt = pd.DataFrame(rows["variance"])
    # per-phone shift tests ("where"): Benjamini–Hochberg across layers × groups × phones. The phone-averaged
    # tests and the variance tests say something about a whole group: Holm (family-wise), so that one strongly
    # shifted group cannot carry an unshifted one over the threshold (as BH would, its p-values being tiny)
    for frame, fam, method in ((tests, ["space", "omnibus"], None), (vt, ["space"], "holm")):
        if frame.empty:
            continue
        frame["q_value"] = np.nan
        for (key), sub in frame.groupby(fam):
            omnibus = bool(key[1]) if isinstance(key, tuple) and len(key) > 1 else False
            if method == "holm" or omnibus:
                q = holm(sub["p_value"].to_numpy())
            else:
                q, _ = benjamini_hochberg(sub["p_value"].to_numpy(), s.fdr_alpha)
            frame.loc[sub.index, "q_value"] = q
        level = np.where(frame.get("omnibus", pd.Series(True, index=frame.index)).astype(bool), s.alpha,
                         s.fdr_alpha)
        frame["significant"] = (frame["q_value"] <= level).fillna(False).astype(bool)
        if "p_less" in frame:
            frame["q_less"] = np.nan
            for _, sub in frame.groupby(fam):
                frame.loc[sub.index, "q_less"] = holm(sub["p_less"].to_numpy())
            frame["significant_less"] = (frame["q_less"] <= s.alpha).fillna(False).astype(bool)
    if not tests.empty:
        tests = tests.drop(columns="omnibus")
    spk_var = pd.DataFrame(rows["speaker"])
    va_rows = []
    if speaker_accuracy is not None and len(spk_var):
        acc = speaker_accuracy.assign(layer=speaker_accuracy["layer"].astype(str))
        col = "standardized_accuracy" if "standardized_accuracy" in acc.columns else "accuracy"
        for (layer, space), sv in spk_var.groupby(["layer", "space"], sort=False):
            a = acc[acc["layer"] == layer][["speaker", col]].rename(columns={col: "accuracy"})
            va = variance_accuracy(sv[["speaker", "group", "variance"]], a, n_boot=s.n_boot,
                                   seed=rng.derive_seed(seed, "va", layer, space), level=s.level)
            va_rows.append({"layer": layer, "space": space, **va})
    mech = mechanism_tables(plans, design, alpha=s.alpha, fdr_alpha=s.fdr_alpha)
    floor = 1.0 / (s.n_perm + 1)
    family = int(tests["p_value"].notna().sum()) if len(tests) else 0
    notes = []
    if family and floor > s.fdr_alpha / max(family, 1):
        k = int(np.ceil(floor * family / s.fdr_alpha))
        notes.append(f"descriptive shift tests: the smallest attainable p ({floor:.2g}, n_perm={s.n_perm}) exceeds "
                     f"the first Benjamini–Hochberg threshold ({s.fdr_alpha / family:.2g}) over {family} tests: at "
                     f"least {k} tests at the floor are needed before any passes; raise [analysis] n_perm")
    prov = {"stage": "phonefair.analysis.analyze", "seed": seed,
            "settings": {**s.to_dict(), "layers": layer_list, "lda_max_tokens": lda_max_tokens,
                         "lda_shrinkage": lda_shrinkage, "reference": design.reference,
                         "consensus": "median over the other groups (pairwise)" if design.reference is None
                         else None, "mechanism_permutations": n_mech},
            "design": design.summary(), "lda": lda_info, "notes": notes,
            "permutations": {"median": float(np.median(n_perm_used)) if n_perm_used else None,
                             "max": int(np.max(n_perm_used)) if n_perm_used else None},
            "source": dict(getattr(source, "provenance", {}) or {})}
    tables = {"decomposition": pd.DataFrame(rows["decomposition"]), "shift_tests": tests,
              "pairwise_shift": pd.DataFrame(rows["pairwise"]), "variance_tests": vt, "speaker_variance": spk_var,
              "variance_accuracy": pd.DataFrame(va_rows, columns=["layer", "space", "rho", "ci_low", "ci_high",
                                                                  "n_speakers", "rank_agreement"]),
              **mech,
              "problems": pd.DataFrame(problems, columns=["speaker", "group", "phone", "reason"])}
    for name, df in tables.items():
        df.attrs = {"provenance": {**prov, "table": name}}
    return TypologyResults(table_map=tables, provenance=prov)


def speaker_halves(design: Design, seed: int) -> np.ndarray:
    """``[S]`` 0/1: every group's speakers split in two halves at random (the cross-fitted projection's folds)."""
    gen = rng.derive(seed, "halves")
    half = np.zeros(design.n_speakers, dtype=np.int64)
    for g in range(design.n_groups):
        idx = gen.permutation(np.flatnonzero(design.speaker_group == g))
        half[idx[len(idx) // 2:]] = 1
    return half


def _layer_stats(source: EmbeddingSource, design: Design, layer: str, spaces: list[str], *, seed: int,
                 lda_max_tokens: int, lda_shrinkage: float, chunk_rows: int, halves: np.ndarray | None = None
                 ) -> tuple[LayerStats, dict[str, Any], CrossFit | None]:
    """Per-(speaker, phone) statistics of one layer in every space (raw and/or LDA); with ``halves``, also the
    LDA space cross-fitted by speaker halves (:class:`~phonefair.analysis.shift_tests.CrossFit`, for the tests)."""
    t = design.tokens
    rows = t["row"].to_numpy()
    pidx = t["phone_idx"].to_numpy()
    sidx = t["speaker_idx"].to_numpy()
    P, S = len(design.phones), design.n_speakers
    samp_pos = np.searchsorted(rows, sample_rows(rows, lda_max_tokens, rng.derive_seed(seed, "lda", layer)))
    Xs = np.asarray(source.read(layer, rows[samp_pos]), dtype=np.float32)
    fin = np.isfinite(Xs).all(1)
    Xs, samp_pos = Xs[fin], samp_pos[fin]
    centre = phone_centres(Xs, pidx[samp_pos], P)
    projections: dict[str, np.ndarray | None] = {}
    info: dict[str, Any] = {}
    if "raw" in spaces:
        projections["raw"] = None
    cross = "lda" in spaces and halves is not None
    if "lda" in spaces:
        # fitted on the tokens as they are: phone-centred tokens would have no between-phone scatter left
        W, ev = fit_lda(Xs, pidx[samp_pos], P, shrinkage=lda_shrinkage)
        projections["lda"] = W
        info = {"n_components": int(W.shape[1]), "n_tokens": int(len(samp_pos)),
                "fitted_on": "all analysed speakers (phone labels only)", "top_eigenvalues": [float(x) for x in ev[:5]]}
        if cross:
            assert halves is not None
            in_half = halves[sidx[samp_pos]]
            for h in (0, 1):
                sel = in_half == h
                if len(np.unique(pidx[samp_pos][sel])) < 2:
                    cross = False
                    break
                projections[f"lda/{h}"] = fit_lda(Xs[sel], pidx[samp_pos][sel], P, shrinkage=lda_shrinkage)[0]
            info["cross_fitted"] = "tests: each half of every group's speakers projected by the LDA of the other half"
    del Xs
    ls = accumulate_layer(source, layer, rows, sidx, pidx, S, P, centre=centre, projections=projections,
                          chunk_rows=chunk_rows)
    cf = None
    if cross:
        assert halves is not None
        members = [np.flatnonzero(halves == h) for h in (0, 1)]
        cf = CrossFit(stats=[subset(ls.spaces.pop(f"lda/{1 - h}"), members[h]) for h in (0, 1)], members=members,
                      half=halves)
    else:
        for h in (0, 1):
            ls.spaces.pop(f"lda/{h}", None)
    return ls, info, cf


def _describe(st: SpaceStats, design: Design, layer: str, space: str, scale: np.ndarray,
              rows: dict[str, list[dict[str, Any]]], *, n_perm: int, n_boot: int, level: float,
              gen: np.random.Generator, cross_fit: CrossFit | None = None) -> list[int]:
    """Decomposition, pairwise shifts, tests and speaker variance of every group in one (layer, space).

    With ``cross_fit``, the tests use the cross-fitted projection (:class:`CrossFit`); the estimates stay those
    of the projection fitted on all speakers (descriptive)."""
    G, S, P = design.n_groups, design.n_speakers, len(design.phones)
    labels = design.speaker_group
    names = design.group_names
    ref = None if design.reference is None else names.index(design.reference)
    onehot = (labels[None, :] == np.arange(G)[:, None]).astype(np.float64)
    members = [np.flatnonzero(labels == g) for g in range(G)]
    N_obs = onehot @ st.has
    common = (N_obs >= 2).all(0)
    obs = _summaries(st, onehot[None], ref, common, members)
    c0 = obs["components"]

    # ---- tests: pairwise, labels shuffled among the two groups' speakers only
    pairs = [(g, ref) for g in range(G) if g != ref] if ref is not None else \
        [(g, h) for g in range(G) for h in range(g + 1, G)]
    pp = np.full((G, G, P), np.nan)
    pps = np.full((G, G), np.nan)
    pv = np.full((G, G), np.nan)
    used: list[int] = []
    for g, h in pairs:
        idx = np.flatnonzero((labels == g) | (labels == h))
        sub = subset(st, idx)
        lab = labels[idx] == g
        com = (sub.has[lab].sum(0) >= 2) & (sub.has[~lab].sum(0) >= 2)
        if cross_fit is None:
            r = permutation_test(sub, lab, com, scale, n_max=n_perm, gen=gen)
        else:
            sp = SplitPair(cross_fit, idx, lab)
            r = adaptive_test(sp, lab, n_max=n_perm, gen=gen, batch=sp.batch(), strata=cross_fit.half[idx])
        pp[g, h] = pp[h, g] = r.p_phone
        pps[g, h] = pps[h, g] = r.p_star[0]
        pv[g, h], pv[h, g] = r.p_var_a[0], r.p_var_b[0]
        used += r.n_perm.tolist()
    if ref is None:
        others = [[h for h in range(G) if h != g] for g in range(G)]
        p = np.stack([consensus_pvalue(pp[g, others[g]], G) for g in range(G)])
        p_star = np.array([consensus_pvalue(pps[g, others[g]], G) for g in range(G)])
        ratio_p = np.array([consensus_pvalue(pv[g, others[g]], G) for g in range(G)])
        # less variable than the consensus: the reverse one-sided pairwise tests
        less_p = np.array([consensus_pvalue(pv[others[g], g], G) for g in range(G)])
    else:
        p, p_star, ratio_p, less_p = pp[:, ref], pps[:, ref], pv[:, ref], pv[ref, :]

    # ---- speaker bootstrap within groups (intervals)
    _, Wb = cluster_bootstrap_weights(np.arange(S), n_boot, seed=int(gen.integers(2**31)), strata=labels)
    reps = [_summaries(st, Wb[a:a + 100][:, None, :] * onehot[None], ref, common, members)
            for a in range(0, n_boot, 100)]
    sh_b = np.concatenate([r["shift"] for r in reps])
    ss_b = np.concatenate([r["shift_star"] for r in reps])
    lr_b = np.concatenate([r["logratio"] for r in reps])
    sh_lo, sh_hi = percentile(sh_b, level)
    ss_lo, ss_hi = percentile(ss_b, level)
    lr_lo, lr_hi = percentile(lr_b, level)

    D = st.dim
    vtot = c0.between[0] + c0.within[0]  # [G, P] per-dim
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a phone no group has: NaN, left out of the averages
        vref = np.nanmedian(vtot, axis=0) if ref is None else vtot[ref]
    for gi, g in enumerate(names):
        n_spk = int((labels == gi).sum())
        for pi, ph in enumerate([*design.phones, "*"]):
            if ph == "*":
                sh, lo, hi = obs["shift_star"][0, gi], ss_lo[gi], ss_hi[gi]
                bv, wv = nanmean_last(c0.between[0, gi], common), nanmean_last(c0.within[0, gi], common)
                ex = D * (nanmean_last(vtot[gi], common) - nanmean_last(vref, common))
                ns, nt, pval = n_spk, int(np.nansum(c0.tokens[0, gi])), p_star[gi]
            else:
                sh, lo, hi = obs["shift"][0, gi, pi], sh_lo[gi, pi], sh_hi[gi, pi]
                bv, wv = c0.between[0, gi, pi], c0.within[0, gi, pi]
                ex = D * (vtot[gi, pi] - vref[pi])
                ns, nt, pval = int(c0.N[0, gi, pi]), int(c0.tokens[0, gi, pi]), p[gi, pi]
            shp = 0.0 if np.isnan(sh) else max(sh, 0.0)
            exp_ = 0.0 if np.isnan(ex) else max(ex, 0.0)
            rows["decomposition"].append({
                "layer": layer, "space": space, "group": g, "phone": ph, "shift_sq": sh, "shift_ci_low": lo,
                "shift_ci_high": hi, "between_speaker_var": bv, "within_speaker_var": wv,
                "random_sq": D * (bv + wv) if np.isfinite(bv) and np.isfinite(wv) else np.nan,
                "excess_random_sq": ex,
                "share_systematic": shp / (shp + exp_) if shp + exp_ > 0 else np.nan,
                "n_speakers": ns, "n_tokens": nt, "dim": D})
            if gi != ref:
                rows["tests"].append({"layer": layer, "space": space, "group": g, "phone": ph, "effect": sh,
                                      "p_value": pval, "omnibus": ph == "*"})
        rows["variance"].append({"layer": layer, "space": space, "group": g,
                                 "variance_ratio": float(np.exp(obs["logratio"][0, gi])),
                                 "ci_low": float(np.exp(lr_lo[gi])), "ci_high": float(np.exp(lr_hi[gi])),
                                 "p_value": np.nan if gi == ref else ratio_p[gi],
                                 "p_less": np.nan if gi == ref else less_p[gi]})
    for pi, ph in enumerate([*design.phones, "*"]):
        M = obs["d_star"][0] if ph == "*" else c0.D[0, :, :, pi]
        for a, ga in enumerate(names):
            for b, gb in enumerate(names):
                rows["pairwise"].append({"layer": layer, "space": space, "phone": ph, "group_a": ga, "group_b": gb,
                                         "dist_sq": M[a, b]})
    disp = speaker_dispersion(st, onehot[None], scale)[0]
    n_tok = st.count.sum(1)
    for i, spk in enumerate(design.speakers):
        rows["speaker"].append({"layer": layer, "space": space, "speaker": spk, "group": names[labels[i]],
                                "variance": disp[i], "n_tokens": int(n_tok[i])})
    return used


def _summaries(st: SpaceStats, w: np.ndarray, ref: int | None, common: np.ndarray,
               members: list[np.ndarray]) -> dict[str, Any]:
    """Consensus (or reference) shift and log variance ratio for a batch of within-group weights ``w [b, G, S]``."""
    c = components(group_moments(st, w, members=members))
    d_star = nanmean_last(c.D, common)  # [b, G, G]
    V = c.between + c.within
    vbar = nanmean_last(V, common)
    if ref is None:
        shift, shift_star = consensus(c.D), consensus(d_star[..., None])[..., 0]
    else:
        shift, shift_star = c.D[:, :, ref, :].copy(), d_star[:, :, ref].copy()
        shift[:, ref], shift_star[:, ref] = np.nan, np.nan
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        denom = np.nanmedian(vbar, axis=1, keepdims=True) if ref is None else vbar[:, ref:ref + 1]
        logratio = np.log(vbar / denom)
    return {"shift": shift, "shift_star": shift_star, "logratio": logratio, "d_star": d_star, "components": c}
