"""The headline tables for papers: each as LaTeX (booktabs) next to its CSV and Parquet under ``tables/``.

* ``verdict.tex`` (+ ``verdict.csv`` / ``.parquet``, the full verdict table): per encoder and group, the verdict,
  the gap with its interval, the groups it is served worse than, where (layers, phones), why (mechanism and
  systematic share), the minimum detectable gap, and the acoustic-baseline reading;
* ``group_accuracy_headline.{tex,csv,parquet}``: every group's accuracy and gap at each encoder's headline layer;
* ``change_headline.{tex,csv,parquet}`` (before/after runs): per variant and group, accuracy and gap before and
  after with the paired changes, and the verdicts;
* ``finetune_per.tex`` (fine-tuning runs): phone error rate per variant and group.

The CSV / Parquet hold the numbers as fractions (accuracy 0.93, gap 0.021) with their interval columns; the LaTeX
shows them as in the report (93.0 %, +2.1 pp).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.io import write_table
from phonefair.report.fmt import MISSING, est_ci, finite, num
from phonefair.report.latex import latex_table

__all__ = ["change_headline", "export_headline_tables", "group_accuracy_headline", "verdict_rows"]


def _write_tex(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def verdict_rows(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per (encoder, group) from the headline summary, with the pairwise "served worse than" text."""
    rows = []
    for enc, s in (summary.get("encoders") or {}).items():
        for v in s.get("verdicts") or []:
            vs = (s.get("versus") or {}).get(str(v["group"])) or []
            rows.append({"encoder": enc, **v,
                         "versus": "; ".join(f"{r['other']}: {est_ci(r['difference'], r['ci_low'], r['ci_high'], sign=True)}"
                                             for r in vs)})
    return rows


def group_accuracy_headline(group_accuracy: pd.DataFrame | None, headline: Mapping[str, str]) -> pd.DataFrame:
    """``group_accuracy`` rows at each encoder's headline layer."""
    if group_accuracy is None or group_accuracy.empty:
        return pd.DataFrame()
    ga = group_accuracy
    if "encoder" not in ga.columns:
        ga = ga.assign(encoder=next(iter(headline), ""))
    parts = [ga[(ga["encoder"].astype(str) == enc) & (ga["layer"].astype(str) == str(layer))]
             for enc, layer in headline.items()]
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame()
    cols = ["encoder", "layer", "group", "n_speakers", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "gap",
            "gap_ci_low", "gap_ci_high", "mde"]
    out = pd.concat(parts, ignore_index=True)
    return out[[c for c in cols if c in out.columns]]


def change_headline(tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any], headline: Mapping[str, str]
                    ) -> pd.DataFrame:
    """Per variant and group at the original's headline layer: accuracy before/after, Δ accuracy and Δ gap with
    paired intervals, verdict before/after."""
    ca, cg = tables.get("change_accuracy"), tables.get("change_gap")
    if ca is None or ca.empty:
        return pd.DataFrame()
    before = str((ca.attrs.get("provenance") or {}).get("before") or "")
    afters = set(ca["after"].astype(str))
    if not before:
        before = next((x for x in headline if x not in afters), "")
    layer = headline.get(before)
    if layer is None:
        return pd.DataFrame()
    d = ca[ca["layer"].astype(str) == str(layer)].rename(columns={"change": "change_accuracy",
                                                                   "ci_low": "change_accuracy_ci_low",
                                                                   "ci_high": "change_accuracy_ci_high"})
    if cg is not None and len(cg):
        g = cg[cg["layer"].astype(str) == str(layer)].rename(columns={"change": "change_gap",
                                                                       "ci_low": "change_gap_ci_low",
                                                                       "ci_high": "change_gap_ci_high"})
        d = d.merge(g[["after", "group", "change_gap", "change_gap_ci_low", "change_gap_ci_high"]],
                    on=["after", "group"], how="left")
    verdict = {(enc, str(v["group"])): v.get("verdict") for enc, s in (summary.get("encoders") or {}).items()
               for v in s.get("verdicts") or []}
    d = d.assign(before=before, verdict_before=[verdict.get((before, str(g))) for g in d["group"]],
                 verdict_after=[verdict.get((str(a), str(g))) for a, g in zip(d["after"], d["group"], strict=True)])
    cols = ["before", "after", "layer", "group", "accuracy_before", "accuracy_after", "change_accuracy",
            "change_accuracy_ci_low", "change_accuracy_ci_high", "change_gap", "change_gap_ci_low",
            "change_gap_ci_high", "verdict_before", "verdict_after", "n_speakers"]
    return d[[c for c in cols if c in d.columns]].reset_index(drop=True)


def export_headline_tables(directory: Path, tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any], *,
                           baseline: str | None, headline: Mapping[str, str]) -> list[Path]:
    """Write every headline table that has rows (module docstring); returns the paths written."""
    written: list[Path] = []
    rows = verdict_rows(summary)
    if rows:
        vt = tables.get("verdict")
        if vt is not None and len(vt):
            written += write_table(vt, directory / "verdict")
        has_base = any(r.get("baseline_reading") for r in rows)
        header = ["encoder", "group", "verdict", "layer", "gap (pp) [95% CI]", "served worse than (pp)",
                  "layers", "phones", "systematic share (%) [95% CI]", "MDE (pp)"]
        if has_base:
            header.append("acoustic baseline")
        body = []
        for r in rows:
            share = est_ci(r.get("share_systematic"), r.get("share_ci_low"), r.get("share_ci_high")) \
                if r.get("served_worse") and finite(r.get("share_systematic")) else (
                    r.get("mechanism") or r.get("representational") or MISSING)
            line = [r["encoder"] + (" (baseline)" if r["encoder"] == baseline else ""), r["group"], r["verdict"],
                    r.get("layer") or MISSING,
                    est_ci(r.get("gap"), r.get("gap_ci_low"), r.get("gap_ci_high"), sign=True),
                    r.get("versus") or MISSING, r.get("layers") or MISSING, r.get("phones") or MISSING, share,
                    num(r.get("mde"), 1, scale=100.0)]
            if has_base:
                line.append(r.get("baseline_reading") or MISSING)
            body.append(line)
        numeric = [False, False, False, False, True, False, False, False, True, True] + ([False] if has_base else [])
        written.append(_write_tex(directory / "verdict.tex", latex_table(
            header, body, numeric=numeric, label="tab:phonefair-verdict",
            caption="Served worse? Per encoder and speaker group: verdict, accuracy gap to the other groups (pp, "
                    "positive = served worse) at the verdict layer, the groups it is significantly worse than, the "
                    "layers and phones that carry it, the systematic share of its extra error, and the minimum "
                    "detectable gap (80 % power) when nothing is detected.",
            notes="Verdicts control the family-wise error rate over all group pairs and layers; 95 % intervals "
                  "over speakers.")))
    gah = group_accuracy_headline(tables.get("group_accuracy"), headline)
    if len(gah):
        written += write_table(gah, directory / "group_accuracy_headline")
        body = [[str(r["encoder"]), str(r["layer"]), str(r["group"]), str(r.get("n_speakers", MISSING)),
                 est_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"]),
                 est_ci(r["gap"], r["gap_ci_low"], r["gap_ci_high"], sign=True), num(r.get("mde"), 1, scale=100.0)]
                for r in gah.to_dict("records")]
        written.append(_write_tex(directory / "group_accuracy_headline.tex", latex_table(
            ["encoder", "layer", "group", "speakers", "accuracy (%) [95% CI]", "gap (pp) [95% CI]", "MDE (pp)"],
            body, numeric=[False, False, False, True, True, True, True], label="tab:phonefair-group-accuracy",
            caption="Phone accuracy per speaker group at each encoder's most accurate layer (standardised, "
                    "cross-fitted, mean over speakers) and the gap to the other groups (pp, positive = served "
                    "worse), with 95 % intervals over speakers.")))
    ch = change_headline(tables, summary, headline)
    if len(ch):
        written += write_table(ch, directory / "change_headline")
        body = [[str(r["after"]), str(r["group"]), num(r["accuracy_before"], 1, scale=100.0),
                 num(r["accuracy_after"], 1, scale=100.0),
                 est_ci(r["change_accuracy"], r["change_accuracy_ci_low"], r["change_accuracy_ci_high"], sign=True),
                 est_ci(r.get("change_gap"), r.get("change_gap_ci_low"), r.get("change_gap_ci_high"), sign=True),
                 f"{r.get('verdict_before') or MISSING} -> {r.get('verdict_after') or MISSING}"]
                for r in ch.to_dict("records")]
        before = str(ch["before"].iloc[0])
        written.append(_write_tex(directory / "change_headline.tex", latex_table(
            ["variant", "group", f"accuracy {before} (%)", "accuracy variant (%)", "change (pp) [95% CI]",
             "change in gap (pp) [95% CI]", "verdict"], body,
            numeric=[False, False, True, True, True, True, False], label="tab:phonefair-change",
            caption=f"Before/after: each variant against {before} at layer {ch['layer'].iloc[0]}, on the same "
                    "speakers; changes with paired 95 % intervals over speakers.")))
    per = tables.get("finetune_per")
    if per is not None and len(per) and "per" in per.columns:
        written += write_table(per, directory / "finetune_per")
        body = [[str(r.get("variant", "")), str(r["group"]),
                 est_ci(r["per"], r.get("ci_low"), r.get("ci_high")) + (" (>100 %)" if r["per"] > 1 else ""),
                 str(r.get("n_speakers", MISSING))] for r in per.to_dict("records")]
        written.append(_write_tex(directory / "finetune_per.tex", latex_table(
            ["variant", "group", "PER (%) [95% CI]", "speakers"], body, numeric=[False, False, True, True],
            label="tab:phonefair-per", caption="Phone error rate of the fine-tuned variants per group on held-out "
                                               "speakers (edits / reference phones).")))
    return written
