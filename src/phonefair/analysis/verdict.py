"""The verdict per group: *served worse?* first, then *why?* — one vocabulary, defined once.

=========================================  =====================================================================
verdict                                    meaning
=========================================  =====================================================================
``not served worse``                       no other group is significantly more accurate on this group's speakers
                                           at any layer (family-wise ``alpha``); the minimum detectable gap says
                                           how large a gap could have gone unnoticed
``served worse: systematic``               served worse, and its phone embeddings are shifted against the groups it
                                           is served worse than (shift test significant; spread test not)
``served worse: random``                   served worse, and its phone embeddings are more scattered (spread test
                                           significant; shift test not)
``served worse: systematic and random``    both tests significant; ``share_systematic`` says which dominates
``served worse: unexplained``              served worse, but neither a shift nor a larger spread is detected
=========================================  =====================================================================

A shift or spread of a group that is *not* served worse costs no measured accuracy: it is reported in the
``representational`` column (e.g. "shifted (no detected accuracy cost)"), never as a disadvantage.

**Which side of a gap is the odd one** (each group against the others, no reference): accuracy says that ``g`` is less
accurate than ``h``, not which of them departs from the norm. When ``h`` departs from the consensus of the groups
(its phone embeddings are shifted, or less scattered, against the median group: the typology's family-wise tests at
the layers of the gap) and ``g`` does not (neither shifted nor more scattered), the gap is read as *``h`` served
better*, and ``g`` is not called served worse on account of ``h``. Example: one group's phones drift apart (a shift
in random directions separates its phone clusters), the probe serves it *better* and the others slightly worse; the
others are not blamed, the drifting group is reported as a representational difference that is served better. With
a stated reference, gaps are read against the reference as asked (the reference's own departure is warned about). The in-group benefit (a
probe trained only on the group beats the size-matched pooled probe on it) is reported beside the verdict as
behavioural corroboration of a shift; it does not decide the label, because its small-sample test is weaker than
the embedding-level permutation tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["VERDICTS", "attribute", "verdict_table", "headline_layer", "sentence"]

VERDICTS = ("not served worse", "served worse: systematic", "served worse: random",
            "served worse: systematic and random", "served worse: unexplained")


def headline_layer(speaker_accuracy: pd.DataFrame, metric: str = "standardized_accuracy") -> str | None:
    """The layer with the highest mean speaker accuracy (chosen without group labels, so tests there stay exact)."""
    if speaker_accuracy is None or speaker_accuracy.empty:
        return None
    m = speaker_accuracy.assign(layer=speaker_accuracy["layer"].astype(str)).groupby("layer", sort=False)[metric].mean()
    return str(m.idxmax()) if m.notna().any() else None


def _departs(typology: Any, group: str, layers: list[str], *, worse: bool) -> bool:
    """Does ``group`` depart from the consensus at any of ``layers`` (family-wise significant, any space)?
    ``worse``: shifted or *more* scattered; otherwise shifted or *less* scattered."""
    st, vt = typology["shift_tests"], typology["variance_tests"]
    lay = st["layer"].astype(str).isin(layers)
    if bool((st[lay & (st["group"] == group) & (st["phone"] == "*")]["significant"]).any()):
        return True
    v = vt[vt["layer"].astype(str).isin(layers) & (vt["group"] == group)]
    col = "significant" if worse else "significant_less"
    return bool(v[col].any()) if col in v else False


def attribute(served: Any, typology: Any, *, reference: str | None) -> pd.DataFrame:
    """The final served-worse decisions: ``served.decisions`` with the pairs read as "the other group is served
    better" removed (module docstring); adds ``served_better`` (groups found to be the better-served odd one)."""
    dec = served.decisions.copy()
    dec["served_better_than"] = ""
    if reference is not None or typology is None or len(dec) < 3:
        return dec
    pw = served.pairwise
    sig = pw[pw["significant"]]
    better: dict[str, list[str]] = {}
    for i, d in dec.iterrows():
        g = str(d["group"])
        keep, layers_kept = [], []
        for h in [x.strip() for x in str(d["worse_than"]).split(",") if x.strip()]:
            lay = sig[(sig["group"] == g) & (sig["other"] == h)]["layer"].astype(str).tolist()
            if _departs(typology, h, lay, worse=False) and not _departs(typology, g, lay, worse=True):
                better.setdefault(h, []).append(g)
                continue
            keep.append(h)
            layers_kept += lay
        from phonefair.layers import layer_order

        layers_kept = layer_order(set(layers_kept))
        dec.at[i, "worse_than"] = ", ".join(keep)
        dec.at[i, "layers"] = ", ".join(layers_kept)
        dec.at[i, "served_worse"] = bool(keep)
        if not keep:
            dec.at[i, "peak_layer"] = None
        elif d["peak_layer"] not in layers_kept:
            dec.at[i, "peak_layer"] = layers_kept[-1]
    dec["served_better_than"] = [", ".join(sorted(better.get(str(g), []))) for g in dec["group"]]
    return dec


def verdict_table(served: Any, typology: Any = None, in_group_benefit: pd.DataFrame | None = None, *,
                  headline: str | None, alpha: float, phone_gaps: pd.DataFrame | None = None,
                  amplification: pd.DataFrame | None = None, decisions: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per group: verdict, where, why, with the numbers a reader quotes (see the module docstring)."""
    dec = (decisions if decisions is not None else attribute(served, typology,
                                                              reference=served.info.get("reference"))
           ).set_index("group")
    gaps = served.gaps.assign(layer=served.gaps["layer"].astype(str))
    mech = pd.DataFrame() if typology is None else typology["mechanism"].set_index("group") \
        if len(typology["mechanism"]) else pd.DataFrame()
    shares = pd.DataFrame() if typology is None else typology["shares"]
    pw = served.pairwise
    rows = []
    for g, d in dec.iterrows():
        layer = d["peak_layer"] if d["served_worse"] else headline
        gp = gaps[(gaps["group"] == g) & (gaps["layer"] == str(layer))]
        gr = gp.iloc[0] if len(gp) else pd.Series(dtype=float)
        worse = pw[(pw["group"] == g) & (pw["t"] > 0)]
        vs = pw[(pw["group"] == g) & pw["significant"] & (pw["layer"].astype(str) == str(layer))
                & pw["other"].isin([x.strip() for x in str(d["worse_than"]).split(",") if x.strip()])]
        vs = vs.sort_values("difference", ascending=False)
        row: dict[str, Any] = {
            "group": g, "served_worse": bool(d["served_worse"]), "verdict": "not served worse", "mechanism": None,
            "worse_than": d["worse_than"] or None, "better_than": d["better_than"] or None,
            "layers": d["layers"] or None, "layer": layer, "phones": None,
            "accuracy": gr.get("accuracy", np.nan), "gap": gr.get("gap", np.nan),
            "gap_ci_low": gr.get("gap_ci_low", np.nan), "gap_ci_high": gr.get("gap_ci_high", np.nan),
            "mde": np.nan if d["served_worse"] else gr.get("mde", np.nan),
            # the largest significant pairwise difference at that layer: what "served worse than X" rests on
            "versus": str(vs["other"].iloc[0]) if len(vs) else None,
            "versus_gap": float(vs["difference"].iloc[0]) if len(vs) else np.nan,
            "versus_ci_low": float(vs["ci_low"].iloc[0]) if len(vs) else np.nan,
            "versus_ci_high": float(vs["ci_high"].iloc[0]) if len(vs) else np.nan,
            "p_served_worse": float(worse["p_adjusted"].min()) if len(worse) else 1.0,
            "p_systematic": np.nan, "p_random": np.nan, "evidence": None,
            "share_systematic": np.nan, "share_ci_low": np.nan, "share_ci_high": np.nan,
            "in_group_benefit": np.nan, "igb_ci_low": np.nan, "igb_ci_high": np.nan,
            "representational": None, "baseline_reading": None, "reference": served.info.get("reference"), "amplification": np.nan,
            "amplification_ci_low": np.nan, "amplification_ci_high": np.nan, "is_reference": bool(d["is_reference"])}
        if d["served_worse"] and g in mech.index:
            m = mech.loc[g]
            sys_, rnd = bool(m["systematic_significant"]), bool(m["random_significant"])
            kind = "systematic and random" if sys_ and rnd else "systematic" if sys_ else "random" if rnd \
                else "unexplained"
            row.update(verdict=f"served worse: {kind}", mechanism=kind, p_systematic=m["p_adj_systematic"],
                       p_random=m["p_adj_random"],
                       evidence="; ".join(x for x in (
                           f"shift carried by {m['systematic_evidence']}" if sys_ else None,
                           f"spread carried by {m['random_evidence']}" if rnd else None) if x))
            sh = shares[(shares["group"] == g) & (shares["space"] == "lda")] if len(shares) else shares
            if len(sh) == 0 and len(shares):
                sh = shares[shares["group"] == g]
            if len(sh):
                r = sh.iloc[0]
                row.update(share_systematic=r["share_systematic"], share_ci_low=r["share_systematic_ci_low"],
                           share_ci_high=r["share_systematic_ci_high"])
        elif d["served_worse"]:
            row.update(verdict="served worse: unexplained", mechanism="unexplained")
        if phone_gaps is not None and len(phone_gaps) and d["served_worse"]:
            pg = phone_gaps[(phone_gaps["group"] == g) & phone_gaps["significant"]].sort_values("gap",
                                                                                                ascending=False)
            row["phones"] = ", ".join(pg["phone"].astype(str).head(5)) or None
        if in_group_benefit is not None and len(in_group_benefit) and layer is not None:
            ib = in_group_benefit[(in_group_benefit["group"] == g)
                                  & (in_group_benefit["layer"].astype(str) == str(layer))]
            if len(ib):
                row.update(in_group_benefit=ib["delta"].iloc[0], igb_ci_low=ib["ci_low"].iloc[0],
                           igb_ci_high=ib["ci_high"].iloc[0])
        if amplification is not None and len(amplification) and layer is not None:
            am = amplification[(amplification["group"] == g) & (amplification["layer"].astype(str) == str(layer))]
            head = am[am["is_baseline_layer"]] if "is_baseline_layer" in am else am
            if len(head):  # against the headline (most accurate) baseline feature set
                r = head.iloc[0]
                row.update(baseline_reading=r["reading"], amplification=r["amplification"],
                           amplification_ci_low=r["ci_low"], amplification_ci_high=r["ci_high"])
        if not d["served_worse"] and typology is not None and headline is not None:
            row["representational"] = _representational(typology, g, headline)
            if d.get("served_better_than"):
                row["representational"] = f"served better than {d['served_better_than']}" + (
                    f"; {row['representational']}" if row["representational"] else "")
        rows.append(row)
    out = pd.DataFrame(rows)
    out["sentence"] = [sentence(r) for r in out.to_dict("records")]
    return out


def _representational(typology: Any, group: str, layer: str) -> str | None:
    """A shift / spread of a group that is not served worse (descriptive FDR-controlled tests at the headline
    layer), worded so that it never reads as a disadvantage."""
    st = typology["shift_tests"]
    vt = typology["variance_tests"]
    parts = []
    s = st[(st["group"] == group) & (st["phone"] == "*") & (st["layer"].astype(str) == layer) & st["significant"]]
    if len(s):
        parts.append("shifted")
    v = vt[(vt["group"] == group) & (vt["layer"].astype(str) == layer) & vt["significant"]
           & (vt["variance_ratio"] > 1)]
    if len(v):
        parts.append("more variable")
    return f"{' and '.join(parts)} (no detected accuracy cost)" if parts else None


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def sentence(r: dict[str, Any]) -> str:
    """One sentence a reader can quote: served worse? (gap with CI) where? why?"""
    g = r["group"]
    if not r["served_worse"]:
        if r.get("is_reference") and r.get("better_than") is None and np.isnan(r.get("gap", np.nan) or np.nan):
            base = f"{g} (reference) is not served worse than any other group"
        else:
            base = f"{g} is not served worse than any other group"
        if np.isfinite(r.get("mde", np.nan)):
            base += f" (at layer {r['layer']}, a gap of {_pct(r['mde'])} points would have been detected with 80 % power)"
        return base + "."
    ref = "the reference" if r.get("reference") else "the other groups"
    consensus = (f"{_pct(r['gap'])} points below {ref} [95% CI {_pct(r['gap_ci_low'])}, {_pct(r['gap_ci_high'])}]"
                 if np.isfinite(r.get("gap", np.nan)) else "")
    pair = (f"{_pct(r['versus_gap'])} points below {r['versus']} [95% CI {_pct(r['versus_ci_low'])}, "
            f"{_pct(r['versus_ci_high'])}]" if np.isfinite(r.get("versus_gap", np.nan)) else "")
    # lead with the gap to the others when it is itself clearly positive, else with the pairwise difference
    if consensus and r.get("gap_ci_low", np.nan) > 0:
        gap = consensus + (f" (up to {pair})" if pair and r.get("versus_gap", 0) > r["gap"] + 1e-12
                           and str(r.get("worse_than", "")).count(",") else "")
    else:
        side = ""
        if consensus:  # beside the pairwise difference: the gap to the others, said with its sign in words
            word = "below" if r["gap"] >= 0 else "above"
            side = (f"{_pct(abs(r['gap']))} points {word} {ref} on average [gap {_pct(r['gap_ci_low'])}, "
                    f"{_pct(r['gap_ci_high'])}]")
        gap = pair + (f" ({side})" if side else "") if pair else consensus
    why = {"systematic": "its phone embeddings are shifted (systematic error)",
           "random": "its phone embeddings are more scattered (random error)",
           "systematic and random": "its phone embeddings are both shifted and more scattered",
           "unexplained": "neither a shift nor a larger spread of its embeddings was detected"}.get(
        r.get("mechanism") or "unexplained", "")
    share = ""
    if np.isfinite(r.get("share_systematic", np.nan)) and r.get("mechanism") in ("systematic", "random",
                                                                                "systematic and random"):
        # the share is measured at the peak layer; the mechanism tests combine every layer where the group is
        # served worse, so "both" can come with a one-sided share: then the share is stated with its layer
        mech = r.get("mechanism")
        if r.get("share_ci_low", np.nan) >= 0.995 and mech == "systematic":
            share = "; no excess spread (systematic share 100 %)"
        elif r.get("share_ci_high", np.nan) <= 0.005 and mech == "random":
            share = "; no shift beyond chance (systematic share 0 %)"
        elif mech == "systematic and random" and (r.get("share_ci_low", np.nan) >= 0.995
                                                  or r.get("share_ci_high", np.nan) <= 0.005):
            elsewhere = "the extra spread" if r["share_ci_low"] >= 0.995 else "the shift"
            share = (f"; at layer {r['layer']} the excess distance is {_pct(r['share_systematic'])} % systematic "
                     f"[{_pct(r['share_ci_low'])}, {_pct(r['share_ci_high'])}] ({elsewhere} is at other layers)")
        else:
            share = (f"; systematic share {_pct(r['share_systematic'])} % "
                     f"[{_pct(r['share_ci_low'])}, {_pct(r['share_ci_high'])}]")
    where = f"; most on phones {r['phones']}" if isinstance(r.get("phones"), str) and r["phones"] else ""
    base = {"amplified": "; the encoder amplifies a gap already in the acoustic signal",
            "inherited": "; the gap is inherited from the acoustic signal",
            "reduced": "; the encoder reduces a gap that is in the acoustic signal",
            "created": "; the acoustic signal shows no gap: the encoder creates it"}.get(r.get("baseline_reading") or "",
                                                                                        "")
    return (f"{g} is served worse than {r['worse_than']}: {gap} at layer {r['layer']}; significant at layers "
            f"{r['layers']}{where}: {why}{share}{base}.")
