"""``analyze``: the random-vs-systematic error typology, per group, phone, layer and space.

Pipeline per layer (one layer in memory at a time):

1. a seeded sample of training-speaker tokens → per-phone centres (numerics) and, for the ``"lda"`` space, a
   whitened shrinkage-LDA projection fitted on training speakers only;
2. one streaming pass over the layer → per-(speaker, phone) count / mean / within-SS in every space;
3. on those statistics: pairwise U-statistic distances, variance components, speaker permutations, speaker
   bootstrap (:mod:`~phonefair.analysis.shift_tests`), per-speaker normalised variance
   (:mod:`~phonefair.analysis.variance`);
4. after all layers: BH-FDR across layers × groups × phones, the variance–accuracy relation, the gap attribution
   and the verdict (:mod:`~phonefair.analysis.verdict`).

See ``docs/typology.md`` for the exact definitions and the calibration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.io import ResultTables, load_tables, save_tables

from phonefair.analysis.shift_tests import SpaceResult, analyze_space
from phonefair.analysis.sufficient import LayerStats, SpaceStats, accumulate_layer, fit_lda, phone_centres, sample_rows
from phonefair.analysis.variance import phone_scale, speaker_dispersion, variance_accuracy
from phonefair.analysis.verdict import accuracy_gaps, decide, evidence_text, gap_attribution
from phonefair.stats import benjamini_hochberg
from phonefair.store.base import EmbeddingSource

SPACES = ("raw", "lda")
TABLES = ("decomposition", "shift_tests", "pairwise_shift", "speaker_variance", "variance_accuracy", "verdict",
          "variance_tests", "gap_attribution", "problems")


def _clean(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v




@dataclass
class TypologyResults(ResultTables):
    """Output of :func:`analyze`: tidy tables by contract name (``decomposition``, ``shift_tests``,
    ``pairwise_shift``, ``speaker_variance``, ``variance_accuracy``, ``verdict``) plus ``variance_tests``,
    ``gap_attribution`` and ``problems`` (see ``docs/typology.md``), and provenance."""

    def summary(self) -> dict[str, Any]:
        """Per layer and group: verdict, shift² and variance ratio with CIs, accuracy gap; significant shifts."""
        v = self.table_map["verdict"]
        st = self.table_map["shift_tests"]
        layers: dict[str, Any] = {}
        for layer, d in v.groupby("layer", sort=False):
            layers[str(layer)] = {str(r["group"]): {
                "verdict": r["verdict"], "shift_sq": _clean(r["shift_sq"]),
                "variance_ratio": _clean(r["variance_ratio"]),
                "accuracy_gap": {"estimate": _clean(r["accuracy_gap"]), "ci_low": _clean(r["accuracy_gap_ci_low"]),
                                 "ci_high": _clean(r["accuracy_gap_ci_high"])},
                "in_group_benefit": _clean(r["in_group_benefit"]), "evidence": r["evidence"]}
                for _, r in d.iterrows()}
        sig = st[st["significant"] & (st["phone"] != "*")]
        counts = v.groupby("group")["verdict"].agg(lambda s: s.value_counts().to_dict()).to_dict()
        return {"layers": layers, "verdict_counts": counts,
                "significant_shifts": [{k: _clean(r[k]) if k == "effect" else str(r[k])
                                        for k in ("layer", "space", "group", "phone", "effect")}
                                       for _, r in sig.iterrows()],
                "settings": self.provenance.get("settings", {}),
                "n_problems": len(self.table_map.get("problems", []))}

    def save(self, directory: str | Path) -> Path:
        """Write ``<name>.parquet`` per table and ``typology.json`` (provenance and summary)."""
        out = Path(directory)
        return save_tables(out, self.table_map, fmt="typology",
                           meta={"provenance": self.provenance, "summary": self.summary()})

    @classmethod
    def load(cls, directory: str | Path) -> TypologyResults:
        """Read what :meth:`save` wrote."""
        tables, meta = load_tables(directory, fmt="typology")
        return cls(table_map=tables, provenance=meta["provenance"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.table_map.items())
        return f"TypologyResults({sizes})"


def load(directory: str | Path) -> TypologyResults:
    """Read a directory written by :meth:`TypologyResults.save`."""
    return TypologyResults.load(directory)


# ----------------------------------------------------------------------------------------------------------------
# input handling


@dataclass
class _Design:
    rows: np.ndarray  # kept token rows (ascending)
    spk_idx: np.ndarray  # per kept row
    phone_idx: np.ndarray
    speakers: np.ndarray  # [S]
    phones: list[str]  # [P]
    labels: np.ndarray  # [S] group index
    group_names: list[str]
    train_rows: np.ndarray  # kept rows of training speakers (for LDA), or all kept rows
    fitted_on: str
    problems: list[dict[str, Any]]


def _design(source: EmbeddingSource, groups: pd.Series, *, reference: str | None, exclude_phones: Sequence[str],
            min_speakers: int) -> _Design:
    if not isinstance(groups, pd.Series):
        raise TypeError(f"groups must be a pandas Series indexed by speaker, got {type(groups).__name__}")
    tok = source.tokens
    for col in ("speaker", "phone"):
        if col not in tok.columns:
            raise ValueError(f"source.tokens has no {col!r} column (columns: {list(tok.columns)})")
    if groups.index.has_duplicates:
        dup = groups.index[groups.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"groups: speaker ids must be unique; duplicated: {dup}")
    problems: list[dict[str, Any]] = []
    spk = tok["speaker"].astype(str).to_numpy()
    phone = tok["phone"].astype(str).to_numpy()
    g = groups.copy()
    g.index = g.index.astype(str)
    missing_label = g[g.isna()].index
    for s in missing_label:
        problems.append({"speaker": s, "reason": "group label is missing"})
    g = g.dropna().astype(str)
    token_speakers = pd.unique(spk)
    not_grouped = sorted(set(token_speakers) - set(g.index))
    for s in not_grouped:
        problems.append({"speaker": s, "reason": "speaker has tokens but no group in `groups`; not analysed"})
    no_tokens = sorted(set(g.index) - set(token_speakers))
    for s in no_tokens:
        problems.append({"speaker": s, "group": g[s], "reason": "speaker is in `groups` but has no tokens"})
    g = g[g.index.isin(token_speakers)]
    sizes = g.value_counts()
    small = sizes[sizes < min_speakers]
    for grp, n in small.items():
        problems.append({"group": grp, "reason": f"group has {n} speakers with tokens < min_speakers={min_speakers}; "
                                                 "excluded from inference"})
    g = g[~g.isin(small.index)]
    names = sorted(g.unique().tolist())
    if len(names) < 2:
        raise ValueError(f"need at least 2 groups with >= min_speakers={min_speakers} speakers; got {names} "
                         f"(group sizes: {sizes.to_dict()})")
    if reference is not None and reference not in names:
        raise ValueError(f"reference group {reference!r} is not among the analysed groups {names}"
                         + (f" (excluded: fewer than {min_speakers} speakers)" if reference in small.index else ""))
    # pandas' hash-based isin: numpy's isin on a million strings sorts them (seconds)
    excl = pd.Series(phone).isin(set(exclude_phones)).to_numpy()
    for p in sorted(set(phone[excl])):
        problems.append({"phone": p, "reason": f"phone in exclude_phones: {(phone == p).sum()} tokens not analysed"})
    keep = pd.Series(spk).isin(set(g.index)).to_numpy() & ~excl
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ValueError("no tokens left after removing excluded phones and ungrouped speakers")
    speakers = np.array(sorted(g.index))
    phones = sorted(set(phone[rows]))
    spk_idx = pd.Index(speakers).get_indexer(spk[rows]).astype(np.int64)
    phone_idx = pd.Index(phones).get_indexer(phone[rows]).astype(np.int64)
    labels = np.array([names.index(g[s]) for s in speakers], dtype=np.int64)
    fitted_on = "all speakers (no 'split' column with 'train' rows)"
    train_rows = rows
    if "split" in tok.columns:
        is_train = tok["split"].astype(str).to_numpy()[rows] == "train"
        if len(np.unique(phone_idx[is_train])) >= 2:
            train_rows, fitted_on = rows[is_train], "train split"
    # phones too rare to be estimated in some group: reported, not dropped (their rows carry NaN)
    has = np.zeros((len(speakers), len(phones)), bool)
    has[spk_idx, phone_idx] = True
    for gi, gname in enumerate(names):
        n = has[labels == gi].sum(0)
        for pi in np.flatnonzero(n < 2):
            problems.append({"group": gname, "phone": phones[pi],
                             "reason": f"{n[pi]} speaker(s) with this phone (< 2): shift and between-speaker "
                                       "variance undefined; phone left out of the '*' averages"})
    return _Design(rows=rows, spk_idx=spk_idx, phone_idx=phone_idx, speakers=speakers, phones=phones, labels=labels,
                   group_names=names, train_rows=train_rows, fitted_on=fitted_on, problems=problems)


def _accuracy_inputs(probe_results: Any, speaker_accuracy: pd.DataFrame | None,
                     in_group_benefit: pd.DataFrame | None) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    if probe_results is not None:
        t = probe_results.tables()
        speaker_accuracy = t.get("speaker_accuracy") if speaker_accuracy is None else speaker_accuracy
        in_group_benefit = t.get("in_group_benefit") if in_group_benefit is None else in_group_benefit
    if speaker_accuracy is not None:
        miss = {"layer", "speaker", "accuracy"} - set(speaker_accuracy.columns)
        if miss:
            raise ValueError(f"speaker_accuracy is missing columns {sorted(miss)}")
        speaker_accuracy = speaker_accuracy.assign(layer=speaker_accuracy["layer"].astype(str),
                                                   speaker=speaker_accuracy["speaker"].astype(str))
    if in_group_benefit is not None:
        miss = {"layer", "group", "delta", "q_value"} - set(in_group_benefit.columns)
        if miss:
            raise ValueError(f"in_group_benefit is missing columns {sorted(miss)}")
        in_group_benefit = in_group_benefit.assign(layer=in_group_benefit["layer"].astype(str),
                                                   group=in_group_benefit["group"].astype(str))
    return speaker_accuracy, in_group_benefit


def ncm_speaker_accuracy(st: SpaceStats, token_cells: np.ndarray, token_proj: np.ndarray) -> np.ndarray:
    """Fallback per-speaker accuracy: leave-speaker-out nearest-class-mean classifier in the given space.

    Class means are the unweighted means of the *other* speakers' phone means (all groups pooled), so the
    speaker's own tokens never define the classes it is scored against. Returns ``[S]`` accuracy (NaN when a
    speaker has no token).
    """
    S, P, _ = st.mean.shape
    has = st.has
    tot = st.mean.sum(0)  # [P, k]
    n = has.sum(0)  # [P]
    spk = token_cells // P
    ph = token_cells % P
    order = np.argsort(spk, kind="stable")
    bounds = np.searchsorted(spk[order], np.arange(S + 1))
    acc = np.full(S, np.nan)
    for s in range(S):
        rows = order[bounds[s]:bounds[s + 1]]
        if len(rows) == 0:
            continue
        loo_n = n - has[s]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (tot - st.mean[s]) / loo_n[:, None]  # [P, k]
        x = token_proj[rows].astype(np.float64)
        d = np.einsum("pk,pk->p", means, means)[None, :] - 2 * x @ means.T
        d[:, loo_n <= 0] = np.inf
        acc[s] = float(np.mean(d.argmin(1) == ph[rows]))
    return acc


# ----------------------------------------------------------------------------------------------------------------


def analyze(
    source: EmbeddingSource,
    groups: pd.Series,
    *,
    reference: str | None = None,
    layers: Sequence[str] | None = None,
    spaces: Sequence[str] = ("raw", "lda"),
    speaker_accuracy: pd.DataFrame | None = None,
    in_group_benefit: pd.DataFrame | None = None,
    probe_results: Any = None,
    n_perm: int = 999,
    n_boot: int = 500,
    fdr_alpha: float = 0.05,
    level: float = 0.95,
    exclude_phones: Sequence[str] = ("sil",),
    min_speakers: int = 5,
    seed: int = 0,
    progress: bool = True,
    lda_max_tokens: int = 50_000,
    lda_shrinkage: float = 0.1,
    chunk_rows: int = 32_768,
) -> TypologyResults:
    """Random (variance) vs systematic (shift) error typology of phone embeddings, per group, phone and layer.

    Parameters
    ----------
    source:
        Any :class:`~phonefair.store.base.EmbeddingSource`; read one layer at a time, in chunks.
    groups:
        Speaker → group label. Speakers without a group, groups smaller than ``min_speakers`` and excluded phones
        are reported in the ``problems`` table.
    reference:
        Group the shifts are measured against; ``None`` → the median-group consensus (see ``docs/typology.md``).
    spaces:
        ``"raw"`` (embedding space) and/or ``"lda"`` (whitened shrinkage LDA fitted on training speakers).
    speaker_accuracy, in_group_benefit, probe_results:
        Probe results (tables or the probes stage's result object). Without per-speaker accuracies a documented
        fallback is used: leave-speaker-out nearest-class-mean accuracy in the LDA space.
    n_perm, n_boot:
        Speaker permutations per test and speaker-bootstrap replicates per CI.
    """
    for sp_name in spaces:
        if sp_name not in SPACES:
            raise ValueError(f"unknown space {sp_name!r}; choose from {SPACES}")
    if not spaces:
        raise ValueError("spaces must name at least one of 'raw', 'lda'")
    if n_perm < 1 or n_boot < 1:
        raise ValueError(f"n_perm and n_boot must be >= 1 (got {n_perm}, {n_boot})")
    if not 0 < fdr_alpha < 1 or not 0 < level < 1:
        raise ValueError(f"fdr_alpha and level must be in (0, 1) (got {fdr_alpha}, {level})")
    if min_speakers < 2:
        raise ValueError(f"min_speakers must be >= 2 (shifts need two speakers per group), got {min_speakers}")
    layer_list = list(source.layers) if layers is None else [str(x) for x in layers]
    unknown = [x for x in layer_list if x not in source.layers]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; the source has {list(source.layers)}")
    spk_acc_in, igb = _accuracy_inputs(probe_results, speaker_accuracy, in_group_benefit)
    des = _design(source, groups, reference=reference, exclude_phones=exclude_phones, min_speakers=min_speakers)
    G, P, S = len(des.group_names), len(des.phones), len(des.speakers)
    ref_idx = None if reference is None else des.group_names.index(reference)
    need_lda = "lda" in spaces or spk_acc_in is None
    vspace = "lda" if "lda" in spaces else spaces[0]

    rows_dec, rows_test, rows_pair, rows_spk, rows_vt = [], [], [], [], []
    problems: list[dict[str, Any]] = list(des.problems)
    acc_frames: list[pd.DataFrame] = []
    expo_frames: list[pd.DataFrame] = []
    lda_info: dict[str, Any] = {}
    it: Any = layer_list
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(layer_list, desc="typology", unit="layer")
    for li, layer in enumerate(it):
        lseed = seed + 1009 * li
        samp = sample_rows(des.train_rows, lda_max_tokens, lseed)
        pos = np.searchsorted(des.rows, samp)
        Xs = np.asarray(source.read(layer, samp), dtype=np.float32)
        fin = np.isfinite(Xs).all(1)
        if not fin.all():
            Xs, samp, pos = Xs[fin], samp[fin], pos[fin]
        centre = phone_centres(Xs, des.phone_idx[pos], P)
        projections: dict[str, np.ndarray | None] = {}
        if "raw" in spaces:
            projections["raw"] = None
        if need_lda:
            W, ev = fit_lda(Xs - centre[des.phone_idx[pos]].astype(np.float32), des.phone_idx[pos], P,
                            shrinkage=lda_shrinkage)
            projections["lda"] = W
            lda_info[layer] = {"n_components": int(W.shape[1]), "n_tokens": len(samp), "fitted_on": des.fitted_on,
                               "top_eigenvalues": [float(x) for x in ev[:5]]}
        del Xs
        ls: LayerStats = accumulate_layer(source, layer, des.rows, des.spk_idx, des.phone_idx, S, P, centre=centre,
                                          projections=projections, chunk_rows=chunk_rows,
                                          keep_tokens="lda" if spk_acc_in is None else None)
        if ls.nonfinite_rows is not None and len(ls.nonfinite_rows):
            bad = ls.nonfinite_rows
            problems.append({"layer": layer, "reason": f"{len(bad)} token rows hold NaN/inf and were not analysed "
                                                       f"(first rows: {bad[:10].tolist()})"})
        onehot = (des.labels[None, :] == np.arange(G)[:, None]).astype(np.float64)
        if spk_acc_in is None:
            acc = ncm_speaker_accuracy(ls.spaces["lda"], ls.token_cells, ls.token_proj)  # type: ignore[arg-type]
            acc_frames.append(pd.DataFrame({"layer": layer, "speaker": des.speakers,
                                            "group": [des.group_names[i] for i in des.labels], "accuracy": acc}))
        ls.token_proj = None
        for space in spaces:
            st = ls.spaces[space]
            r: SpaceResult = analyze_space(st, des.labels, G, ref=ref_idx, n_perm=n_perm, n_boot=n_boot, seed=lseed,
                                           level=level)
            _rows_for_space(rows_dec, rows_test, rows_pair, rows_vt, layer, space, r, des, ref_idx)
            disp = speaker_dispersion(st, onehot[None], phone_scale(st))[0]
            n_tok = st.count.sum(1)
            for i, s in enumerate(des.speakers):
                rows_spk.append({"layer": layer, "space": space, "speaker": s, "group": des.group_names[des.labels[i]],
                                 "variance": disp[i], "n_tokens": int(n_tok[i])})
            if space == vspace:
                shift_pos = np.where(np.isnan(r.shift), 0.0, np.maximum(r.shift, 0.0))  # [G, P]
                cnt = st.count.astype(float)
                with np.errstate(invalid="ignore", divide="ignore"):
                    expo = (cnt * shift_pos[des.labels]).sum(1) / cnt.sum(1)
                expo_frames.append(pd.DataFrame({"layer": layer, "speaker": des.speakers, "exposure": expo}))
        del ls

    prov = {"stage": "phonefair.analysis.analyze", "seed": seed,
            "settings": {"reference": reference, "consensus": "median group" if reference is None else None,
                         "layers": layer_list, "spaces": list(spaces), "n_perm": n_perm, "n_boot": n_boot,
                         "fdr_alpha": fdr_alpha, "level": level, "exclude_phones": list(exclude_phones),
                         "min_speakers": min_speakers, "lda_max_tokens": lda_max_tokens,
                         "lda_shrinkage": lda_shrinkage, "verdict_space": vspace,
                         "accuracy_source": "given" if spk_acc_in is not None else
                         "fallback: leave-speaker-out nearest-class-mean in LDA space"},
            "groups": des.group_names, "n_speakers": S, "n_phones": P, "n_tokens": int(len(des.rows)),
            "lda": lda_info, "source": dict(getattr(source, "provenance", {}) or {})}

    dec = pd.DataFrame(rows_dec)
    tests = pd.DataFrame(rows_test)
    vt = pd.DataFrame(rows_vt)
    for frame, fam in ((tests, ["space", "omnibus"]), (vt, ["space"])):
        frame["q_value"] = np.nan
        for _, sub in frame.groupby(fam):
            q, _rej = benjamini_hochberg(sub["p_value"].to_numpy(), fdr_alpha)
            frame.loc[sub.index, "q_value"] = q
        frame["significant"] = (frame["q_value"] <= fdr_alpha).fillna(False).astype(bool)
    tests = tests.drop(columns="omnibus")
    spk_var = pd.DataFrame(rows_spk)
    spk_acc = pd.concat(acc_frames, ignore_index=True) if spk_acc_in is None else spk_acc_in
    if "group" not in spk_acc.columns:
        spk_acc = spk_acc.assign(group=spk_acc["speaker"].map(dict(zip(des.speakers,
                                                                      [des.group_names[i] for i in des.labels]))))

    va_rows, verdict_rows, gap_rows = [], [], []
    for layer in layer_list:
        acc_l = spk_acc[spk_acc["layer"] == layer][["speaker", "group", "accuracy"]]
        acc_l = acc_l.assign(group=acc_l["group"].astype(str))
        for space in spaces:
            sv = spk_var[(spk_var["layer"] == layer) & (spk_var["space"] == space)]
            va = variance_accuracy(sv[["speaker", "group", "variance"]], acc_l, n_boot=n_boot, seed=seed, level=level)
            va_rows.append({"layer": layer, "space": space, **va})
        gaps = accuracy_gaps(acc_l, des.group_names, reference, n_boot=n_boot, seed=seed, level=level)
        sv = spk_var[(spk_var["layer"] == layer) & (spk_var["space"] == vspace)]
        ex = expo_frames[layer_list.index(layer)]
        joint = sv[["speaker", "group", "variance"]].merge(acc_l[["speaker", "accuracy"]], on="speaker").merge(
            ex[["speaker", "exposure"]], on="speaker")
        ga = gap_attribution(joint, des.group_names, reference)
        gap_rows.append(ga.assign(layer=layer))
        for g in des.group_names:
            tm = tests[(tests["layer"] == layer) & (tests["space"] == vspace) & (tests["group"] == g)
                       & (tests["phone"] == "*")]
            t = tm.iloc[0] if len(tm) else pd.Series({"effect": np.nan, "q_value": np.nan, "significant": False})
            v = vt[(vt["layer"] == layer) & (vt["space"] == vspace) & (vt["group"] == g)].iloc[0]
            gp = gaps[gaps["group"] == g].iloc[0]
            ib_delta, ib_q = np.nan, np.nan
            if igb is not None:
                m = igb[(igb["layer"] == layer) & (igb["group"] == g)]
                if len(m):
                    ib_delta, ib_q = float(m["delta"].iloc[0]), float(m["q_value"].iloc[0])
            is_ref = reference is not None and g == reference
            sys_test = bool(t["significant"]) and t["effect"] > 0
            igb_sig = bool(ib_q <= fdr_alpha and ib_delta > 0)
            rnd = bool(v["significant"]) and v["variance_ratio"] > 1
            verdict_rows.append({
                "layer": layer, "group": g,
                "verdict": "no detectable disadvantage" if is_ref else decide(sys_test=sys_test, igb_sig=igb_sig,
                                                                               rnd_test=rnd),
                "accuracy_gap": gp["accuracy_gap"], "accuracy_gap_ci_low": gp["ci_low"],
                "accuracy_gap_ci_high": gp["ci_high"], "shift_sq": t["effect"], "variance_ratio": v["variance_ratio"],
                "in_group_benefit": ib_delta,
                "evidence": evidence_text(shift_sq=t["effect"], q_shift=t["q_value"], ratio=v["variance_ratio"],
                                          q_var=v["q_value"], igb=ib_delta, igb_q=ib_q, gap=gp["accuracy_gap"],
                                          gap_lo=gp["ci_low"], gap_hi=gp["ci_high"], alpha=fdr_alpha,
                                          is_reference=is_ref)})

    tables = {
        "decomposition": dec, "shift_tests": tests, "pairwise_shift": pd.DataFrame(rows_pair),
        "speaker_variance": spk_var, "variance_accuracy": pd.DataFrame(va_rows),
        "verdict": pd.DataFrame(verdict_rows), "variance_tests": vt,
        "gap_attribution": pd.concat(gap_rows, ignore_index=True)[
            ["layer", "group", "accuracy_gap", "explained_by_variance", "explained_by_shift", "residual", "r2",
             "beta_variance", "beta_shift", "n_speakers"]],
        "problems": pd.DataFrame(problems, columns=["layer", "space", "group", "phone", "speaker", "reason"]),
    }
    for name, df in tables.items():
        df.attrs = {"provenance": {**prov, "table": name}}
    return TypologyResults(table_map=tables, provenance=prov)


def _rows_for_space(dec: list[dict[str, Any]], tests: list[dict[str, Any]], pair: list[dict[str, Any]],
                    vt: list[dict[str, Any]], layer: str, space: str, r: SpaceResult, des: _Design,
                    ref_idx: int | None) -> None:
    D = r.dim
    names = des.group_names
    for gi, g in enumerate(names):
        n_spk = int((des.labels == gi).sum())
        for pi, p in enumerate([*des.phones, "*"]):
            if p == "*":
                sh, lo, hi = r.shift_star[gi], r.shift_star_ci[0][gi], r.shift_star_ci[1][gi]
                with np.errstate(invalid="ignore"):
                    bv = np.nanmean(r.between[gi][r.common]) if r.common.any() else np.nan
                    wv = np.nanmean(r.within[gi][r.common]) if r.common.any() else np.nan
                ns, nt, pv = n_spk, int(np.nansum(r.tokens[gi])), r.p_star[gi]
            else:
                sh, lo, hi = r.shift[gi, pi], r.shift_ci[0][gi, pi], r.shift_ci[1][gi, pi]
                bv, wv = r.between[gi, pi], r.within[gi, pi]
                ns, nt, pv = int(r.N[gi, pi]), int(r.tokens[gi, pi]), r.p[gi, pi]
            shp = 0.0 if np.isnan(sh) else max(sh, 0.0)
            rand = D * (max(bv, 0.0) + wv) if not np.isnan(bv) and not np.isnan(wv) else np.nan
            tot = shp + rand
            dec.append({"layer": layer, "space": space, "group": g, "phone": p, "shift_sq": sh, "shift_ci_low": lo,
                        "shift_ci_high": hi, "between_speaker_var": bv, "within_speaker_var": wv,
                        "share_systematic": shp / tot if tot > 0 else np.nan,
                        "share_random": rand / tot if tot > 0 else np.nan, "n_speakers": ns, "n_tokens": nt})
            if gi != ref_idx:
                tests.append({"layer": layer, "space": space, "group": g, "phone": p, "effect": sh, "p_value": pv,
                              "omnibus": p == "*"})
        vt.append({"layer": layer, "space": space, "group": g, "variance_ratio": r.ratio[gi],
                   "ci_low": r.ratio_ci[0][gi], "ci_high": r.ratio_ci[1][gi],
                   "p_value": np.nan if gi == ref_idx else r.ratio_p[gi]})
    for pi, p in enumerate([*des.phones, "*"]):
        M = r.D_star if p == "*" else r.D[:, :, pi]
        for a, ga in enumerate(names):
            for b, gb in enumerate(names):
                pair.append({"layer": layer, "space": space, "phone": p, "group_a": ga, "group_b": gb,
                             "dist_sq": M[a, b]})


__all__ = ["TypologyResults", "analyze", "load", "ncm_speaker_accuracy"]
