"""The before/after audit: how fine-tuning changed per-group accuracy, the group gap, in-group benefit and
embedding variance.

Both audits must cover the same speakers (the same corpus, split and layers, only the encoder differs), so the
per-speaker tables (``speaker_accuracy``, ``speaker_variance``) can be *paired by speaker*: one bootstrap replicate
draws speakers with replacement within each group and recomputes both the before and the after statistic on the
same draw. The CI of the difference then reflects only how differently the *same* speakers fare, which is far tighter
(and more honest) than comparing two independent intervals.

The in-group benefit Δ_g comes out of the probes as one estimate with a CI per layer × group; its per-speaker
contributions are not in the result tables, so its change cannot be paired. Its CI here is a normal approximation
treating the two estimates as independent (standard error from each CI's width). Because both audits use the same
test speakers the two estimates are positively correlated, so this interval is *conservative* (too wide).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.stats import benjamini_hochberg, bootstrap_pvalue, cluster_bootstrap_weights, percentile_ci

__all__ = ["compare_audits", "render_comparison_html", "write_comparison_report"]

_Z975 = 1.959963984540054


def _layer_key(name: str) -> tuple[int, int, str]:
    if name == "cnn":
        return (0, 0, name)
    if name.isdigit():
        return (1, int(name), name)
    head = name.split("_")[0]
    return (2, int(head) if head.isdigit() else 0, name)


def _single_encoder(df: pd.DataFrame, table: str, side: str) -> pd.DataFrame:
    if "encoder" in df.columns:
        enc = df["encoder"].dropna().unique()
        if len(enc) > 1:
            raise ValueError(f"{side}[{table!r}] holds several encoders {list(enc)}; pass one encoder's tables")
        df = df.drop(columns="encoder")
    return df


def _need(df: pd.DataFrame, cols: list[str], table: str, side: str) -> None:
    if missing := [c for c in cols if c not in df.columns]:
        raise ValueError(f"{side}[{table!r}] lacks column(s) {missing}; has {list(df.columns)}")


def _pair(before: pd.DataFrame, after: pd.DataFrame, keys: list[str], value_cols: list[str],
          table: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Inner join by ``keys`` (+ speaker); reports unpaired speakers and refuses group disagreements."""
    b = before[keys + ["speaker", "group"] + value_cols].copy()
    a = after[keys + ["speaker", "group"] + value_cols].copy()
    for d in (a, b):
        d["speaker"] = d["speaker"].astype(str)
        d["group"] = d["group"].astype(str)
        for k in keys:
            d[k] = d[k].astype(str)
    m = b.merge(a, on=keys + ["speaker"], how="outer", suffixes=("_before", "_after"), indicator=True)
    only_b = sorted(m.loc[m["_merge"] == "left_only", "speaker"].unique().tolist())
    only_a = sorted(m.loc[m["_merge"] == "right_only", "speaker"].unique().tolist())
    m = m[m["_merge"] == "both"].drop(columns="_merge")
    if m.empty:
        raise ValueError(f"{table}: the before and after audits share no (layer, speaker) rows; the comparison "
                         "needs both audits on the same speakers and layers")
    clash = m[m["group_before"] != m["group_after"]]
    if not clash.empty:
        r = clash.iloc[0]
        raise ValueError(f"{table}: speaker {r['speaker']!r} is in group {r['group_before']!r} before and "
                         f"{r['group_after']!r} after; both audits must use the same grouping")
    m = m.rename(columns={"group_before": "group"}).drop(columns="group_after")
    info = {"unpaired_speakers_before_only": only_b, "unpaired_speakers_after_only": only_a,
            "n_paired_speakers": int(m["speaker"].nunique())}
    return m, info


def _group_masks(groups: np.ndarray) -> dict[str, np.ndarray]:
    masks = {str(g): (groups == g).astype(float) for g in sorted(pd.unique(groups))}
    masks["all"] = np.ones(len(groups))
    return masks


def _finish(rows: list[dict[str, Any]], cols: list[str], prov: dict[str, Any]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out["q_value"], out["significant"] = benjamini_hochberg(out["p_value"].to_numpy(), 0.05)
        out["significant"] = out["significant"].astype(bool)
    else:
        out["q_value"], out["significant"] = pd.Series(dtype=float), pd.Series(dtype=bool)
    out.attrs["provenance"] = prov
    return out


def _change_accuracy(b: pd.DataFrame, a: pd.DataFrame, n_boot: int, seed: int,
                     level: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    for side, d in (("before", b), ("after", a)):
        _need(d, ["layer", "speaker", "group", "accuracy", "n_tokens"], "speaker_accuracy", side)
    m, info = _pair(b, a, ["layer"], ["accuracy", "n_tokens"], "speaker_accuracy")
    acc_rows: list[dict[str, Any]] = []
    gap_rows: list[dict[str, Any]] = []
    for layer in sorted(m["layer"].unique(), key=_layer_key):
        d = m[m["layer"] == layer].sort_values("speaker").reset_index(drop=True)
        spk, w = cluster_bootstrap_weights(d["speaker"].to_numpy(), n_boot, seed=seed, strata=d["group"].to_numpy())
        if len(spk) != len(d):
            raise ValueError(f"speaker_accuracy: layer {layer!r} has several rows for one speaker; expected one "
                             "row per (layer, speaker)")
        g = d["group"].to_numpy()
        side_stats: dict[str, dict[str, tuple[float, np.ndarray]]] = {}
        for side in ("before", "after"):
            n = d[f"n_tokens_{side}"].to_numpy(float)
            c = d[f"accuracy_{side}"].to_numpy(float) * n  # correct tokens: accuracy is token-weighted per group
            side_stats[side] = {}
            for name, mk in _group_masks(g).items():
                point = float((c * mk).sum() / (n * mk).sum())
                with np.errstate(invalid="ignore", divide="ignore"):
                    reps = (w @ (c * mk)) / (w @ (n * mk))
                side_stats[side][name] = (point, reps)
        for name in side_stats["before"]:
            pb, rb = side_stats["before"][name]
            pa, ra = side_stats["after"][name]
            lo, hi = percentile_ci(ra - rb, level)
            acc_rows.append({"layer": layer, "group": name, "before": pb, "after": pa, "diff": pa - pb,
                             "ci_low": float(lo), "ci_high": float(hi),
                             "p_value": float(bootstrap_pvalue(ra - rb)),
                             "n_speakers": int(len(d) if name == "all" else (g == name).sum())})
        groups = [k for k in side_stats["before"] if k != "all"]
        if len(groups) >= 2:
            gap = {}
            for side in ("before", "after"):
                pts = np.array([side_stats[side][k][0] for k in groups])
                reps = np.column_stack([side_stats[side][k][1] for k in groups])
                gap[side] = (float(pts.max() - pts.min()), reps.max(1) - reps.min(1), groups[int(pts.argmin())])
            dd = gap["after"][1] - gap["before"][1]
            lo, hi = percentile_ci(dd, level)
            gap_rows.append({"layer": layer, "before": gap["before"][0], "after": gap["after"][0],
                             "diff": gap["after"][0] - gap["before"][0], "ci_low": float(lo), "ci_high": float(hi),
                             "p_value": float(bootstrap_pvalue(dd)), "worst_group_before": gap["before"][2],
                             "worst_group_after": gap["after"][2]})
    prov = {"source": "speaker_accuracy", "statistic": "token-weighted group accuracy (after - before)",
            "ci": "paired speaker-clustered percentile bootstrap (speakers resampled within group)",
            "n_boot": n_boot, "seed": seed, "level": level, **info}
    acc = _finish(acc_rows, ["layer", "group", "before", "after", "diff", "ci_low", "ci_high", "p_value",
                             "n_speakers"], prov)
    gap = _finish(gap_rows, ["layer", "before", "after", "diff", "ci_low", "ci_high", "p_value",
                             "worst_group_before", "worst_group_after"],
                  {**prov, "statistic": "gap = best - worst group accuracy (after - before); groups re-ranked "
                                        "in every replicate"})
    return acc, gap


def _change_variance(b: pd.DataFrame, a: pd.DataFrame, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    for side, d in (("before", b), ("after", a)):
        _need(d, ["layer", "speaker", "group", "variance"], "speaker_variance", side)
    if "space" not in b.columns:
        b, a = b.assign(space="raw"), a.assign(space="raw")
    m, info = _pair(b, a, ["layer", "space"], ["variance"], "speaker_variance")
    rows: list[dict[str, Any]] = []
    for (layer, space), d in sorted(m.groupby(["layer", "space"]), key=lambda kv: (_layer_key(kv[0][0]), kv[0][1])):
        d = d.sort_values("speaker").reset_index(drop=True)
        _, w = cluster_bootstrap_weights(d["speaker"].to_numpy(), n_boot, seed=seed, strata=d["group"].to_numpy())
        g = d["group"].to_numpy()
        vb = d["variance_before"].to_numpy(float)
        va = d["variance_after"].to_numpy(float)
        for name, mk in _group_masks(g).items():
            # group variance = mean over its speakers of the speaker's embedding variance (a speaker-level mean)
            with np.errstate(invalid="ignore", divide="ignore"):
                rb = (w @ (vb * mk)) / (w @ mk)
                ra = (w @ (va * mk)) / (w @ mk)
            pb, pa = float((vb * mk).sum() / mk.sum()), float((va * mk).sum() / mk.sum())
            lo, hi = percentile_ci(ra - rb, level)
            rows.append({"layer": layer, "space": space, "group": name, "before": pb, "after": pa, "diff": pa - pb,
                         "ratio": pa / pb if pb else float("nan"), "ci_low": float(lo), "ci_high": float(hi),
                         "p_value": float(bootstrap_pvalue(ra - rb)), "n_speakers": int(mk.sum())})
    prov = {"source": "speaker_variance", "statistic": "mean speaker variance per group (after - before)",
            "ci": "paired speaker-clustered percentile bootstrap (speakers resampled within group)",
            "note": "variances of different encoders live in different embedding spaces; compare 'ratio' or the "
                    "'lda' space rather than raw differences when the scales differ",
            "n_boot": n_boot, "seed": seed, "level": level, **info}
    return _finish(rows, ["layer", "space", "group", "before", "after", "diff", "ratio", "ci_low", "ci_high",
                          "p_value", "n_speakers"], prov)


def _se_from_ci(lo: pd.Series, hi: pd.Series, level: float) -> pd.Series:
    from scipy.stats import norm

    return (hi - lo) / (2 * float(norm.ppf(0.5 + level / 2)))


def _change_unpaired(b: pd.DataFrame, a: pd.DataFrame, keys: list[str], est: str, lo: str, hi: str, table: str,
                     level: float) -> pd.DataFrame:
    """Difference of two estimates with CIs, treating them as independent (no per-speaker data to pair)."""
    from scipy.stats import norm

    for side, d in (("before", b), ("after", a)):
        _need(d, keys + [est, lo, hi], table, side)
    b = b[keys + [est, lo, hi]].astype({k: str for k in keys})
    a = a[keys + [est, lo, hi]].astype({k: str for k in keys})
    m = b.merge(a, on=keys, how="inner", suffixes=("_before", "_after"))
    if m.empty:
        raise ValueError(f"{table}: before and after share no rows on {keys}")
    se = np.sqrt(_se_from_ci(m[f"{lo}_before"], m[f"{hi}_before"], level) ** 2
                 + _se_from_ci(m[f"{lo}_after"], m[f"{hi}_after"], level) ** 2)
    out = m[keys].copy()
    out["before"] = m[f"{est}_before"].astype(float)
    out["after"] = m[f"{est}_after"].astype(float)
    out["diff"] = out["after"] - out["before"]
    z = float(norm.ppf(0.5 + level / 2))
    out["ci_low"], out["ci_high"] = out["diff"] - z * se, out["diff"] + z * se
    with np.errstate(invalid="ignore", divide="ignore"):
        out["p_value"] = 2 * norm.sf(np.abs(out["diff"] / se))
    out = out.iloc[sorted(range(len(out)), key=lambda i: _layer_key(str(out["layer"].iloc[i])))].reset_index(drop=True)
    n_b, n_a = len(b), len(a)
    prov = {"source": table, "statistic": f"{est} (after - before)",
            "ci": "normal approximation from each side's CI, assuming independence: NOT paired by speaker "
                  "(per-speaker contributions are not in the result tables); conservative because both audits "
                  "use the same speakers", "level": level,
            "unmatched_rows": {"before": n_b - len(m), "after": n_a - len(m)}}
    return _finish(out.to_dict("records"), list(out.columns), prov)


def compare_audits(before: Mapping[str, pd.DataFrame], after: Mapping[str, pd.DataFrame], *, n_boot: int = 1000,
                   seed: int = 0, level: float = 0.95) -> dict[str, pd.DataFrame]:
    """Change of the audit from ``before`` (original encoder) to ``after`` (fine-tuned), one table per quantity.

    ``before`` / ``after`` map result-table names (``speaker_accuracy``, ``speaker_variance``,
    ``in_group_benefit``, optionally ``group_gap``) to the tables of one encoder each, on the same speakers and
    layers. Returns (for whichever inputs are present in both):

    * ``change_accuracy``: layer, group (incl. ``"all"``), before, after, diff, ci_low, ci_high, p_value,
      n_speakers, q_value, significant — paired, speaker-clustered bootstrap;
    * ``change_gap``: layer, before, after, diff, CI, p, worst groups — paired (from ``speaker_accuracy``), or
      independent-normal from ``group_gap`` when no per-speaker accuracy is given;
    * ``change_variance``: layer, space, group, before, after, diff, ratio, CI, p — paired;
    * ``change_benefit``: layer, group, before, after, diff, CI, p — NOT paired (see the module docstring).

    p-values are two-sided; q-values are Benjamini–Hochberg within each table.
    """
    out: dict[str, pd.DataFrame] = {}
    skipped: list[str] = []

    def both(name: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        if name in before and name in after and before[name] is not None and after[name] is not None:
            return _single_encoder(before[name], name, "before"), _single_encoder(after[name], name, "after")
        if name in before or name in after:
            skipped.append(f"{name}: only in {'before' if name in before else 'after'}")
        return None

    if (t := both("speaker_accuracy")) is not None:
        out["change_accuracy"], out["change_gap"] = _change_accuracy(*t, n_boot, seed, level)
    elif (t := both("group_gap")) is not None:
        out["change_gap"] = _change_unpaired(*t, ["layer"], "gap", "gap_ci_low", "gap_ci_high", "group_gap", level)
    if (t := both("speaker_variance")) is not None:
        out["change_variance"] = _change_variance(*t, n_boot, seed, level)
    if (t := both("in_group_benefit")) is not None:
        out["change_benefit"] = _change_unpaired(*t, ["layer", "group"], "delta", "ci_low", "ci_high",
                                                 "in_group_benefit", level)
    if not out:
        raise ValueError("nothing to compare: before and after need at least one of speaker_accuracy, "
                         f"speaker_variance, in_group_benefit, group_gap (got {sorted(before)} / {sorted(after)})")
    for df in out.values():
        df.attrs["provenance"] = {**df.attrs.get("provenance", {}), "skipped_inputs": skipped,
                                  "before": _prov(before), "after": _prov(after)}
    return out


def _prov(tables: Mapping[str, pd.DataFrame]) -> dict[str, Any]:
    return {k: v.attrs.get("provenance", {}) for k, v in tables.items() if v is not None}


# ---------------------------------------------------------------------------------------------------- report
_TITLES = {"change_accuracy": "Per-group probe accuracy", "change_gap": "Group gap (best − worst accuracy)",
           "change_benefit": "In-group benefit Δ_g", "change_variance": "Per-group speaker embedding variance"}


def _figure(df: pd.DataFrame, title: str) -> str | None:
    from phonefair.report.figures import figure_to_base64, plain_text

    import matplotlib.pyplot as plt

    if df.empty:
        return None
    d = df[df["space"] == df["space"].iloc[0]] if "space" in df.columns else df
    layers = sorted(d["layer"].astype(str).unique(), key=_layer_key)
    x = {lay: i for i, lay in enumerate(layers)}
    with plain_text():  # group labels are data: never mathtext
        fig, ax = plt.subplots(figsize=(7, 3.2))
        series = d.groupby("group") if "group" in d.columns else [("gap", d)]
        for k, (name, s) in enumerate(series):
            xs = np.array([x[str(v)] for v in s["layer"]]) + (k - 1) * 0.08
            ax.errorbar(xs, s["diff"], yerr=[s["diff"] - s["ci_low"], s["ci_high"] - s["diff"]], fmt="o-", ms=3,
                        capsize=2, label=str(name))
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(layers)), layers)
        ax.set_xlabel("layer")
        ax.set_ylabel("after − before")
        ax.set_title(title + (f" ({d['space'].iloc[0]} space)" if "space" in d.columns else ""))
        ax.legend(fontsize=7, ncol=4)
        fig.tight_layout()
    out = figure_to_base64(fig)
    plt.close(fig)
    return out


def render_comparison_html(changes: Mapping[str, pd.DataFrame], *, title: str = "Before / after fine-tuning",
                           before_name: str = "original", after_name: str = "fine-tuned",
                           per_group_per: pd.DataFrame | None = None) -> str:
    """A self-contained HTML page (inline PNG figures, tables, method notes) for :func:`compare_audits` output.

    ``per_group_per`` (e.g. :func:`phonefair.finetune.finetune_variants`'s table) is shown when given.
    """
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse;"
             "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
             ".sig{background:#fde7c8}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>Differences are <b>{html.escape(after_name)}</b> minus "
             f"<b>{html.escape(before_name)}</b>, on the same held-out speakers and layers.</p>"]
    for key, df in changes.items():
        parts.append(f"<h2>{html.escape(_TITLES.get(key, key))}</h2>")
        prov = df.attrs.get("provenance", {})
        if "ci" in prov:
            parts.append(f"<p><i>CI: {html.escape(str(prov['ci']))}.</i></p>")
        img = _figure(df, _TITLES.get(key, key))
        if img:
            parts.append(f"<img alt='{html.escape(key)}' src='data:image/png;base64,{img}'>")
        styled = df.copy()
        sig = styled["significant"].to_numpy() if "significant" in styled.columns else np.zeros(len(styled), bool)
        table = styled.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="–", border=0)
        # mark rows whose change survives FDR control
        body = table.split("<tbody>")
        if len(body) == 2:
            trs = body[1].split("<tr>")
            trs = [trs[0]] + [("<tr class='sig'>" if s else "<tr>") + t for s, t in zip(sig, trs[1:], strict=False)]
            table = body[0] + "<tbody>" + "".join(trs)
        parts.append(table)
    if per_group_per is not None:
        parts.append("<h2>Phone error rate per group (held-out speakers, greedy CTC)</h2>")
        parts.append(per_group_per.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_comparison_report(changes: Mapping[str, pd.DataFrame], path: str | Path, **kwargs: Any) -> Path:
    """Write :func:`render_comparison_html` to ``path`` (and each table as CSV next to it)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_comparison_html(changes, **kwargs), encoding="utf-8")
    for key, df in changes.items():
        df.to_csv(p.with_name(f"{p.stem}_{key}.csv"), index=False)
    return p
