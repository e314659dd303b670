"""The self-contained HTML report: one file, inline CSS, figures embedded as PNG, no scripts, no external URL.

The first screen answers *who is served worse, where, and why* per encoder (the verdict sentence, then its numbers);
then a "How to read this report" box defines every verdict and quantity; then the evidence, section by section.
Every section is rendered only when its tables are present. All text taken from data is HTML-escaped. The page
prints to PDF without cut-off tables (print CSS), and the headline tables are also written as LaTeX / CSV / Parquet
under ``tables/``, every figure as PNG / SVG / PDF under ``figures/`` (docs/report.md).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.layers import describe_layer, layer_order
from phonefair.report import figures as F
from phonefair.report.caveats import Caveat, automatic_caveats
from phonefair.report.fmt import (
    MISSING,
    df_table,
    e,
    est_ci,
    finite,
    html_table,
    num,
    pct,
    pp,
    pval,
    swatch,
)
from phonefair.report.howto import howto_section
from phonefair.report.style import FIGURE_FORMATS, group_colors
from phonefair.report.tables import export_headline_tables

__all__ = ["COMPARISON_TABLES", "DEMO_BANNER", "SECTIONS", "write_report"]

DEMO_BANNER = "Synthetic speech + random tiny encoder: shows the machinery, not a finding."

# (anchor, title) in page order
SECTIONS: list[tuple[str, str]] = [
    ("headline", "Who is served worse, where, and why"),
    ("howto", "How to read this report"),
    ("data", "Data"),
    ("accuracy", "Served worse? Accuracy and gap across layers"),
    ("where", "Where: the phones that carry the gap"),
    ("why", "Why: systematic (shift) or random (spread)"),
    ("baseline", "Made by the encoder or inherited from the signal? (acoustic baseline)"),
    ("lenses", "Identity lenses: where group and speaker identity live"),
    ("transfer", "In-group benefit and transfer between groups"),
    ("variance", "Speaker variance and accuracy"),
    ("comparison", "Before / after fine-tuning"),
    ("exports", "Tables and figures for papers"),
    ("provenance", "Provenance"),
]
_PX_PER_IN = 150  # screen size of a figure inch: a 3.3-in column figure is shown 495 px wide
_NAV = {"headline": "Headline", "howto": "How to read", "data": "Data", "accuracy": "Served worse?",
        "where": "Where?", "why": "Why?", "baseline": "Acoustic baseline", "lenses": "Identity lenses",
        "transfer": "Transfer", "variance": "Variance", "comparison": "Before / after", "exports": "For papers",
        "provenance": "Provenance"}
COMPARISON_TABLES = ("change_accuracy", "change_gap", "change_variance", "change_shift", "change_benefit",
                     "verdict_transitions")

_CSS = """
:root{--worse:#b42318;--worse-bg:#fde8e6;--ok:#2f6b2f;--ok-bg:#e9f4e9;--repr:#1d4f91;--repr-bg:#e6eefa;
--warn-bg:#fff4d6;--warn-bd:#e0b44a;--note-bg:#eef2f6;--note-bd:#9fb1c4;--line:#d9d9d9}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;max-width:1200px;
margin:0 auto;padding:.8em 1.4em 2em;color:#1d1d1d;line-height:1.45;font-size:15px}
h1{font-size:1.45em;margin:.2em 0 .1em}h2{font-size:1.22em;border-bottom:2px solid #ddd;padding-bottom:.15em;
margin:1.6em 0 .5em}h3{font-size:1.04em;margin:1em 0 .3em}
p{margin:.35em 0}.muted{color:#666}.small{font-size:.86em}.na{color:#888;font-style:italic}
nav{font-size:.8em;line-height:1.7;margin:.2em 0 .6em;color:#555}nav a{margin-right:.8em;color:#2456a6;
text-decoration:none;white-space:nowrap}
.caveat{border-left:4px solid;padding:.2em .7em;margin:.2em 0;border-radius:3px;font-size:.86em;line-height:1.35}
.caveat.warning{background:var(--warn-bg);border-color:var(--warn-bd)}
.caveat.note{background:var(--note-bg);border-color:var(--note-bd)}
.caveat b{margin-right:.3em}
.card{border:1px solid var(--line);border-radius:6px;padding:.5em .9em .7em;margin:.7em 0}
.card h3{margin:.1em 0 .1em}.card .meta{font-size:.86em;color:#555}
.card.baseline{background:#fafafa}
ul.sentences{list-style:none;padding:0;margin:.4em 0}ul.sentences li{margin:.3em 0;padding-left:.2em}
.quote{font-size:.97em}
.badge{display:inline-block;font-size:.78em;font-weight:600;padding:.05em .45em;border-radius:9px;
margin-right:.35em;white-space:nowrap;border:1px solid transparent}
.badge.worse{background:var(--worse-bg);color:var(--worse);border-color:#f0b4ad}
.badge.ok{background:var(--ok-bg);color:var(--ok);border-color:#b9dab9}
.badge.repr{background:var(--repr-bg);color:var(--repr);border-color:#b3c8ea}
.badge.ref{background:#f1f1f1;color:#444;border-color:#ccc}
.sw{display:inline-block;width:.75em;height:.75em;border-radius:2px;margin-right:.3em;vertical-align:-.05em}
table{border-collapse:collapse;font-size:.84em;margin:.45em 0;max-width:100%}
.scroll{overflow-x:auto;max-width:100%}
th,td{border-bottom:1px solid #e3e3e3;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f5f7;font-weight:600;border-bottom:1px solid #bbb}
td.n,th.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
tr.worse td:first-child{box-shadow:inset 3px 0 0 var(--worse)}
tr.first td{border-top:1px solid #aaa}
table.kv td:first-child{color:#555}
table.glance td{text-align:center}table.glance td:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:.8em 1.4em;align-items:flex-start}
figure{margin:.4em 0;max-width:100%}figure img{width:100%;height:auto;display:block}
figcaption{font-size:.82em;color:#444;margin-top:.2em}
.box{background:#f7f8fa;border:1px solid #dde1e6;border-radius:6px;padding:.4em 1em .7em}
.box dt{font-weight:600;margin-top:.45em}.box dd{margin:.1em 0 .1em 1.2em}
.box table{background:#fff}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.76em;max-height:32em}
code{font-size:.92em}
footer{margin-top:2em;font-size:.8em;color:#666}
@page{size:A4;margin:12mm 11mm}
@media print{
 body{max-width:none;padding:0;font-size:9pt;line-height:1.3}
 nav{display:none}
 h2{break-after:avoid;margin-top:1.1em}h3{break-after:avoid}
 .scroll{overflow:visible}
 table{font-size:7pt;width:auto;max-width:100%;table-layout:auto}
 table.wide{font-size:6pt}
 th,td{white-space:normal !important;overflow-wrap:break-word;word-break:normal;padding:1px 3px}
 table.wide td{overflow-wrap:anywhere}
 td.n,th.n{white-space:nowrap !important}
 thead{display:table-header-group}
 tr,figure,.caveat,ul.sentences li{break-inside:avoid}
 figure{max-width:48%}
 pre{white-space:pre-wrap;overflow-wrap:anywhere;max-height:none;overflow:visible;font-size:6pt}
 pre.prov{column-count:2;column-gap:1.2em}
 .keep{break-inside:avoid}
 a{color:inherit;text-decoration:none}
 *{-webkit-print-color-adjust:exact;print-color-adjust:exact}
}
"""


# ---------------------------------------------------------------------------------------------- context
@dataclass
class _Ctx:
    out: Path
    tables: Mapping[str, pd.DataFrame]
    summary: Mapping[str, Any]
    provenance: Mapping[str, Any]
    encoders: list[str]
    baseline: str | None
    colors: dict[str, str]
    headline: dict[str, str]
    chance: dict[str, float]
    level: float
    alpha: float
    fdr_alpha: float
    saved: list[Path] = field(default_factory=list)
    n_fig: int = 0
    formats: tuple[str, ...] = FIGURE_FORMATS

    @property
    def audited(self) -> list[str]:
        return [x for x in self.encoders if x != self.baseline]

    def t(self, name: str, encoder: str | None = None) -> pd.DataFrame | None:
        """Table ``name`` (rows of ``encoder`` only when given); ``None`` when absent or empty."""
        df = self.tables.get(name)
        if df is None or not isinstance(df, pd.DataFrame) or df.empty:
            return None
        if encoder is not None and "encoder" in df.columns:
            df = df[df["encoder"].astype(str) == encoder]
            return df if len(df) else None
        return df

    def at_headline(self, name: str, encoders: list[str] | None = None) -> Iterator[tuple[str, str, pd.DataFrame]]:
        """``(encoder, headline layer, rows of table name at that layer)`` for every encoder that has both."""
        for enc in self.encoders if encoders is None else encoders:
            d = self.t(name, enc)
            layer = self.headline.get(enc)
            if d is not None and layer is not None:
                yield enc, layer, d[d["layer"].astype(str) == layer]

    def figure(self, fig: Any, stem: str, caption: str, alt: str) -> str:
        """Embed ``fig`` with a numbered caption and save it under figures/ in every format of ``formats``."""
        if fig is None:
            return ""
        paths = F.save_figure(fig, self.out / "figures", stem, formats=self.formats)
        self.saved += paths
        data = base64.b64encode(paths[0].read_bytes()).decode("ascii")  # the saved PNG, not a second rendering
        self.n_fig += 1
        width = round(float(fig.get_size_inches()[0]) * _PX_PER_IN)  # every figure at the same text size
        return (f'<figure style="width:{width}px"><img alt="{e(alt)}" src="data:image/png;base64,{data}">'
                f"<figcaption><b>Figure {self.n_fig}.</b> {caption} <span class='muted'>(figures/{e(stem)}."
                f"{' / .'.join(reversed(self.formats))})</span></figcaption></figure>")

    def group_cell(self, g: Any) -> str:
        return swatch(self.colors.get(str(g))) + e(g)


def _context(out: Path, tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
             provenance: Mapping[str, Any]) -> _Ctx:
    encs_s = list((summary.get("encoders") or {}).keys())
    encs_t: list[str] = []
    for t in tables.values():
        if isinstance(t, pd.DataFrame) and "encoder" in t.columns and len(t):
            encs_t += [str(x) for x in t["encoder"].unique()]
    encoders = list(dict.fromkeys([*encs_s, *encs_t]))
    baseline = summary.get("baseline")
    if baseline is None:
        models = summary.get("encoder_models") or {}
        baseline = next((n for n, m in models.items() if str(m).startswith("acoustic")), None)
    if baseline is not None and baseline not in encoders:
        baseline = None
    groups: set[str] = set()
    for s in (summary.get("encoders") or {}).values():
        groups |= {str(g) for g in s.get("groups") or []}
    for name in ("group_accuracy", "verdict", "speaker_accuracy"):
        t = tables.get(name)
        if isinstance(t, pd.DataFrame) and "group" in t.columns:
            groups |= set(t["group"].dropna().astype(str))
    headline = {n: str(s["headline_layer"]) for n, s in (summary.get("encoders") or {}).items()
                if s.get("headline_layer") is not None}
    ga = tables.get("group_accuracy")
    if isinstance(ga, pd.DataFrame) and len(ga):  # tables without a summary: the most accurate layer
        for enc in encoders:
            if enc not in headline:
                d = ga[ga["encoder"].astype(str) == enc] if "encoder" in ga.columns else ga
                if len(d):
                    headline[enc] = str(d.groupby(d["layer"].astype(str))["accuracy"].mean().idxmax())
    chance = {n: float(s["chance_accuracy"]) for n, s in (summary.get("encoders") or {}).items()
              if s.get("chance_accuracy") is not None}
    cfg = (provenance.get("config") or {}) if isinstance(provenance.get("config"), Mapping) else {}
    an = cfg.get("analysis") or {}
    fam = next((s.get("family") or {} for s in (summary.get("encoders") or {}).values()), {})
    return _Ctx(out=out, tables=tables, summary=summary, provenance=provenance, encoders=encoders, baseline=baseline,
                colors=group_colors(groups), headline=headline, chance=chance,
                level=float(an.get("level", 0.95)), alpha=float(fam.get("alpha", an.get("alpha", 0.05))),
                fdr_alpha=float(an.get("fdr_alpha", 0.05)))


# ---------------------------------------------------------------------------------------------- headline
def _badge(v: Mapping[str, Any]) -> str:
    verdict = str(v.get("verdict") or MISSING)
    if v.get("served_worse"):
        return f'<span class="badge worse">{e(verdict)}</span>'
    out = f'<span class="badge ok">{e(verdict)}</span>'
    if v.get("representational"):
        out += f'<span class="badge repr">representational: {e(v["representational"])}</span>'
    if v.get("is_reference"):
        out += '<span class="badge ref">reference</span>'
    return out


def _versus(s: Mapping[str, Any], v: Mapping[str, Any]) -> str:
    rows = (s.get("versus") or {}).get(str(v["group"])) or []
    return "; ".join(f"{e(r['other'])}: {est_ci(r['difference'], r['ci_low'], r['ci_high'], sign=True)}"
                     for r in rows) or MISSING


def _share(v: Mapping[str, Any]) -> str:
    if not v.get("served_worse"):
        return f'<span class="repr">{e(v["representational"])}</span>' if v.get("representational") else MISSING
    mech = v.get("mechanism") or "unexplained"
    if mech == "unexplained" or not finite(v.get("share_systematic")):
        return e(mech)
    return f"{e(mech)}: {est_ci(v['share_systematic'], v['share_ci_low'], v['share_ci_high'])} %"


def _baseline_cell(v: Mapping[str, Any]) -> str:
    r = v.get("baseline_reading")
    if not r:
        return MISSING
    return f"{e(r)} ({est_ci(v.get('amplification'), v.get('amplification_ci_low'), v.get('amplification_ci_high'), sign=True)} pp)"


def _layer_meta(layer: str | None) -> str:
    return "" if layer is None else f"{e(layer)} <span class='muted'>({e(describe_layer(layer))})</span>"


def _card(c: _Ctx, enc: str, s: Mapping[str, Any]) -> str:
    models = c.summary.get("encoder_models") or {}
    is_base = enc == c.baseline
    design = s.get("design") or {}
    fam = s.get("family") or {}
    meta = [f"headline layer {_layer_meta(s.get('headline_layer'))}"]
    if s.get("overall_accuracy") is not None:
        meta.append(f"accuracy there {pct(s['overall_accuracy'])} % (majority class {pct(s.get('chance_accuracy'))} %)")
    if design:
        spg = design.get("speakers_per_group") or {}
        meta.append(f"{design.get('n_speakers', MISSING)} speakers in {len(spg)} groups "
                    f"({', '.join(f'{e(g)} {n}' for g, n in spg.items())})")
    if fam.get("family_size"):
        meta.append(f"served-worse tests: family-wise α = {fam.get('alpha')} over {len(fam.get('family', []))} group "
                    f"pairs × layers ({fam['family_size']} tests)")
    ref = s.get("reference")
    meta.append(f"gaps against {'the reference ' + e(ref) if ref else 'the mean of the other groups'}")
    sentences = "".join(f"<li>{_badge(v)}<span class='quote'>{e(v.get('sentence') or '')}</span></li>"
                        for v in s.get("verdicts") or [])
    header = ["group", "verdict", "layer", "accuracy (%)", "gap to others (pp) [95% CI]",
              "served worse than (pp) [95% CI]", "where: layers", "where: phones",
              "why: mechanism, systematic share [95% CI]", "MDE (pp)"]
    has_base = any(v.get("baseline_reading") for v in s.get("verdicts") or [])
    if has_base:
        header.append("vs acoustic baseline (amplification)")
    rows, rcls = [], []
    ga = c.t("group_accuracy", enc)
    for v in s.get("verdicts") or []:
        acc = est_ci(v.get("accuracy"), *_acc_ci(ga, v))
        row = [c.group_cell(v["group"]), e(v.get("verdict") or MISSING), e(v.get("layer") or MISSING), acc,
               est_ci(v.get("gap"), v.get("gap_ci_low"), v.get("gap_ci_high"), sign=True),
               _versus(s, v), e(v.get("layers") or MISSING), e(v.get("phones") or MISSING), _share(v),
               num(v.get("mde"), 1, scale=100.0)]
        if has_base:
            row.append(_baseline_cell(v))
        rows.append(row)
        rcls.append("worse" if v.get("served_worse") else "")
    numeric = [False, False, False, True, True, False, False, False, False, True] + ([False] if has_base else [])
    tips = {"gap to others (pp) [95% CI]": "A_ref − A_g at that layer; reference or the mean of the other groups; "
            "positive = served worse",
            "served worse than (pp) [95% CI]": "accuracy of each group this one is significantly worse than, minus "
            "its own (pairwise, at that layer)",
            "MDE (pp)": "minimum detectable gap: 80 % power at the family-wise level (groups not served worse)"}
    title = (f"{e(enc)} <span class='muted small'>{e(models.get(enc, ''))}</span>"
             + (" <span class='badge ref'>acoustic baseline: a reference point, not an audited encoder</span>"
                if is_base else ""))
    return (f"<div class='card{' baseline' if is_base else ''}' id='card-{e(enc)}'><h3>{title}</h3>"
            f"<p class='meta'>{' · '.join(meta)}</p><ul class='sentences'>{sentences}</ul>"
            f"<div class='scroll'>{html_table(header, rows, numeric=numeric, titles=tips, row_cls=rcls)}</div></div>")


def _acc_ci(ga: pd.DataFrame | None, v: Mapping[str, Any]) -> tuple[Any, Any]:
    if ga is None or v.get("layer") is None:
        return None, None
    r = ga[(ga["group"].astype(str) == str(v["group"])) & (ga["layer"].astype(str) == str(v["layer"]))]
    return (r["accuracy_ci_low"].iloc[0], r["accuracy_ci_high"].iloc[0]) if len(r) else (None, None)


def _glance(c: _Ctx) -> str:
    """Groups × encoders: verdict and gap at a glance (only with several encoders)."""
    encs = c.summary.get("encoders") or {}
    if len(encs) < 2:
        return ""
    groups = sorted({str(v["group"]) for s in encs.values() for v in s.get("verdicts") or []})
    header = ["group", *[f"{n}{' (baseline)' if n == c.baseline else ''}" for n in encs]]
    rows = []
    for g in groups:
        row = [c.group_cell(g)]
        for s in encs.values():
            v = next((x for x in s.get("verdicts") or [] if str(x["group"]) == g), None)
            if v is None:
                row.append(MISSING)
                continue
            if v.get("served_worse"):
                vs = (s.get("versus") or {}).get(g) or []
                top = max(vs, key=lambda r: r["difference"] if finite(r["difference"]) else -1.0, default=None)
                what = (f"{pp(top['difference'])} pp vs {e(top['other'])}" if top else
                        f"gap {pp(v.get('gap'))} pp") + f" @ {e(v.get('layer'))}"
                cell = (f"<span class='badge worse'>served worse</span><br><span class='small'>"
                        f"{e(v.get('mechanism') or 'unexplained')}<br>{what}</span>")
            else:
                extra = "<br>representational difference" if v.get("representational") else ""
                mde = f"<br>MDE {num(v.get('mde'), 1, scale=100.0)} pp" if finite(v.get("mde")) else ""
                cell = (f"<span class='badge {'repr' if extra else 'ok'}'>not served worse</span>"
                        f"<span class='small'>{extra}{mde}</span>")
            row.append(cell)
        rows.append(row)
    return ("<h3>At a glance</h3><div class='scroll'>"
            + html_table(header, rows, cls="data glance") + "</div>")


def _headline(c: _Ctx, caveats: list[Caveat]) -> str:
    out = [f"<div class='caveat {cv.level}'><b>{'Caveat' if cv.level == 'warning' else 'Note'}:</b>{e(cv.text)}</div>"
           for cv in caveats]
    encs = c.summary.get("encoders") or {}
    if not encs:
        return "".join(out) + '<p class="na">not computed (no analysis yet)</p>'
    out.append("<p class='small muted'>Each group's verdict in one sentence you can quote, then its numbers. Accuracy in "
               "%, gaps in percentage points (pp; positive = served worse), 95 % intervals over speakers. Definitions: "
               "<a href='#howto'>How to read this report</a>.</p>")
    out.append(_glance(c))
    order = [n for n in encs if n != c.baseline] + [n for n in encs if n == c.baseline]
    out += [_card(c, n, encs[n]) for n in order]
    warns = list(c.summary.get("warnings") or [])
    if warns:
        out.append("<h3>Warnings from the analysis</h3><ul class='small'>"
                   + "".join(f"<li>{e(w)}</li>" for w in warns) + "</ul>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------- data
def _data(c: _Ctx) -> str:
    parts = []
    corpus = c.summary.get("corpus") or {}
    if corpus:
        rows = [[e(k), e(v)] for k, v in corpus.items()]
        parts.append("<h3>Corpus</h3>" + html_table(["", "value"], rows, cls="kv"))
    encs = c.summary.get("encoders") or {}
    design = {n: (s.get("design") or {}) for n, s in encs.items()}
    if design:
        groups = sorted({g for d in design.values() for g in (d.get("speakers_per_group") or {})})
        first = next(iter(design.values()))
        same = all((d.get("speakers_per_group") or {}) == (first.get("speakers_per_group") or {})
                   for d in design.values())
        cols = [next(iter(design))] if same else list(design)
        rows = [[c.group_cell(g)] + [e((design[n].get("speakers_per_group") or {}).get(g, MISSING)) for n in cols]
                for g in groups]
        header = ["group", "speakers"] if same else ["group", *[f"speakers ({n})" for n in cols]]
        parts.append("<h3>Speakers per group (the unit of every interval and test)</h3>"
                     + html_table(header, rows, numeric=[False] + [True] * len(cols))
                     + f"<p class='small muted'>{e(first.get('n_tokens', MISSING))} phone tokens, "
                       f"{e(first.get('n_phones', MISSING))} phone classes, {e(first.get('folds', MISSING))} "
                       f"cross-fitting folds × {e(first.get('repeats', MISSING))} repeat(s).</p>")
    gs = c.t("group_summary")
    if gs is not None:
        parts.append("<h3>Group assignment</h3><div class='scroll'>" + df_table(gs, name="group_summary") + "</div>")
    parts.append(_alignment(c))
    ex = c.t("excluded")
    if ex is not None:
        parts.append(f"<h3>Excluded speakers / groups ({len(ex)})</h3><div class='scroll'>"
                     + df_table(ex, name="excluded") + "</div>")
    elif "excluded" in c.tables:
        parts.append("<p class='muted'>No speakers or groups were excluded.</p>")
    pr = c.t("problems")
    if pr is not None:
        parts.append(f"<h3>Data problems ({len(pr)})</h3><p class='small muted'>Found by the loader and the "
                     "validator; severity error = item excluded, warning = kept, info = documented behaviour of a "
                     "phone map. All rows in tables/problems.csv.</p><div class='scroll'>"
                     + df_table(pr, name="problems", max_rows=30, cls="data wide") + "</div>")
    ap = c.t("analysis_problems")
    if ap is not None:
        parts.append(f"<h3>Analysis exclusions ({len(ap)})</h3><div class='scroll'>"
                     + df_table(ap, name="analysis_problems", max_rows=15, cls="data wide") + "</div>")
    ip = c.t("identity_problems")
    if ip is not None:
        keys = [k for k in ("encoder", "lens", "reason") if k in ip.columns]
        agg = ip.groupby(keys, sort=False).agg(items=("item", lambda x: ", ".join(map(str, list(x)[:4]))
                                                      + (f", … ({len(x)} in all)" if len(x) > 4 else "")))
        parts.append(f"<h3>Identity-lens skips ({len(ip)})</h3><div class='scroll'>"
                     + df_table(agg.reset_index(), name="identity_problems", max_rows=15, cls="data wide")
                     + "</div>")
    return "".join(parts) or '<p class="na">not computed (no data summary)</p>'


def _alignment(c: _Ctx) -> str:
    by = c.t("alignment_by_group")
    if by is None:
        return ""
    rows = []
    for r in by.to_dict("records"):
        digits = 3 if r["metric"] == "failure_rate" else 2
        rows.append([e(r["metric"]), c.group_cell(r["group"]),
                     est_ci(r["estimate"], r["ci_low"], r["ci_high"], digits, scale=1.0),
                     e(r.get("n_speakers", MISSING)), e(r.get("n_utterances", MISSING))])
    out = ("<h3>Alignment quality per group (phonefair's own aligner)</h3><p class='small muted'>Per speaker: mean "
           "confidence of its aligned phones (backend units: nats per frame for pocketsphinx, posterior for CTC; "
           "higher = better), the same after removing each phone's corpus mean (phone-adjusted), and the share of "
           "utterances that failed. Group = mean over its speakers, 95 % speaker-bootstrap interval.</p>"
           + html_table(["metric", "group", "estimate [95% CI]", "speakers", "utterances"], rows,
                        numeric=[False, False, True, True, True]))
    tests = c.t("alignment_tests")
    if tests is not None:
        trows = [[e(r["metric"]), pval(r["p_value"]), pval(r["q_value"]), "yes" if r["significant"] else "no"]
                 for r in tests.to_dict("records")]
        out += ("<p class='small'>Do groups differ? Speaker-level permutation test of the between-group sum of "
                "squares, Benjamini–Hochberg over the three metrics:</p>"
                + html_table(["metric", "p", "q", "groups differ"], trows, numeric=[False, True, True, False]))
    for w in c.summary.get("alignment_warnings") or []:
        out += f"<div class='caveat warning'><b>Alignment:</b>{e(w)}</div>"
    return out


# ---------------------------------------------------------------------------------------------- served worse
def _accuracy(c: _Ctx) -> str:
    ga = c.t("group_accuracy")
    if ga is None:
        return '<p class="na">not computed (group_accuracy table absent)</p>'
    base_layer = c.headline.get(c.baseline) if c.baseline else None
    mark = {k: v for k, v in c.headline.items() if k != c.baseline}
    n_aud = len([x for x in c.audited if "encoder" not in ga.columns or x in set(ga["encoder"].astype(str))])
    layout = ("one panel, every group in its colour" if n_aud <= 1 else
              "one panel per group; encoders by line style, overlaid on relative depth")
    figs = [
        c.figure(F.accuracy_by_layer(ga, chance=c.chance or None, baseline=c.baseline, baseline_layer=base_layer,
                                     colors=c.colors, mark_layers=mark), "accuracy_by_layer",
                 f"Phone accuracy (%; standardised, cross-fitted, mean over the group's speakers) per layer with 95 % "
                 f"t intervals ({layout}). Dotted: majority-class accuracy. "
                 + ("Square at the left: the acoustic baseline's most accurate feature set. " if c.baseline else "")
                 + "Rings: each encoder's headline (most accurate) layer.", "accuracy by layer"),
        c.figure(F.gap_by_layer(ga, baseline=c.baseline, baseline_layer=base_layer, colors=c.colors,
                                mark_layers=mark), "gap_by_layer",
                 "Gap to the others (pp): A_ref − A_g, positive = served worse, with 95 % Welch intervals. A band "
                 "that excludes 0 is not yet a verdict: verdicts control the family-wise error over all pairs and "
                 "layers (first screen).", "gap by layer")]
    rows = []
    for enc, layer, d in c.at_headline("group_accuracy"):
        for r in d.to_dict("records"):
            rows.append([e(enc), e(layer), c.group_cell(r["group"]), e(r.get("n_speakers", MISSING)),
                         est_ci(r["accuracy"], r["accuracy_ci_low"], r["accuracy_ci_high"]),
                         est_ci(r["gap"], r["gap_ci_low"], r["gap_ci_high"], sign=True),
                         num(r.get("mde"), 1, scale=100.0)])
    table = html_table(["encoder", "layer", "group", "speakers", "accuracy (%) [95% CI]", "gap (pp) [95% CI]",
                        "MDE (pp)"], rows, numeric=[False, False, False, True, True, True, True])
    out = (f"<div class='figs'>{''.join(figs)}</div><h3>At each encoder's headline layer</h3>"
           f"<div class='scroll'>{table}</div><p class='small muted'>Every layer: tables/group_accuracy.csv. LaTeX: "
           "tables/group_accuracy_headline.tex.</p>")
    return out + _pairwise(c)


def _pairwise(c: _Ctx) -> str:
    pw = c.t("pairwise_accuracy")
    if pw is None:
        return ""
    rows = []
    for enc, layer, d in c.at_headline("pairwise_accuracy"):
        d = d[d["difference"] >= 0]
        for r in d.sort_values("difference", ascending=False).to_dict("records"):
            rows.append([e(enc), e(layer), c.group_cell(r["group"]), c.group_cell(r["other"]),
                         est_ci(r["difference"], r["ci_low"], r["ci_high"], sign=True), pval(r["p_adjusted"]),
                         "<b>yes</b>" if r["significant"] else "no"])
    if not rows:
        return ""
    return ("<h3>Pairs of groups at the headline layer</h3><p class='small muted'>Difference = accuracy of the other "
            "group − accuracy of the group (pp): how much better the other group is served. p: step-down max-T "
            "permutation p-value, adjusted over every pair and layer (family-wise).</p><div class='scroll'>"
            + html_table(["encoder", "layer", "group", "other group", "difference (pp) [95% CI]", "adjusted p",
                          "significant"], rows, numeric=[False, False, False, False, True, True, False])
            + "</div>")


def _where(c: _Ctx) -> str:
    pg = c.t("phone_gaps")
    if pg is None:
        return "<p class='muted'>No group is served worse at any layer: there is no gap to locate.</p>"
    fig = c.figure(F.phone_gaps_figure(pg, colors=c.colors), "phone_gaps",
                   "Per-phone gap (pp) of each group served worse against the groups it is served worse than, at its "
                   "peak layer, with 95 % Welch intervals over speakers; its 10 largest. Filled: significant after "
                   f"Benjamini–Hochberg across the group's phones (FDR {c.fdr_alpha}). Descriptive: a map of where the "
                   "deficit sits, not a second verdict.", "per-phone gaps")
    rows = []
    enc_order = {x: i for i, x in enumerate(c.encoders)}
    ordered = pg.assign(_e=pg["encoder"].astype(str).map(enc_order) if "encoder" in pg.columns else 0).sort_values(
        ["_e", "group", "gap"], ascending=[True, True, False])
    for r in ordered.to_dict("records"):
        if not r.get("significant"):
            continue
        rows.append([e(r.get("encoder", "")), c.group_cell(r["group"]), e(r["layer"]), e(r["phone"]),
                     pct(r["accuracy"]), pct(r["accuracy_others"]),
                     est_ci(r["gap"], r["ci_low"], r["ci_high"], sign=True), pval(r["q_value"])])
    table = ("<h3>Phones with a significant gap</h3><div class='scroll'>"
             + html_table(["encoder", "group", "layer", "phone", "accuracy (%)", "others (%)", "gap (pp) [95% CI]",
                           "q"], rows[:60], numeric=[False, False, False, False, True, True, True, True])
             + "</div>") if rows else "<p class='muted'>No phone's gap is significant after FDR control.</p>"
    return f"<div class='figs'>{fig}</div>{table}<p class='small muted'>All phones: tables/phone_gaps.csv.</p>"


# ---------------------------------------------------------------------------------------------- why
def _why(c: _Ctx) -> str:
    parts = []
    mech = c.t("mechanism")
    if mech is None:
        parts.append("<p class='muted'>No group is served worse: there is no disadvantage to explain.</p>")
    else:
        rows = [[e(r.get("encoder", "")), c.group_cell(r["group"]), e(r["compared_with"]), e(r["peak_layer"]),
                 pval(r["p_adj_systematic"]) + (" <b>✓</b>" if r["systematic_significant"] else ""),
                 e(r["systematic_evidence"] or MISSING),
                 pval(r["p_adj_random"]) + (" <b>✓</b>" if r["random_significant"] else ""),
                 e(r["random_evidence"] or MISSING)] for r in mech.to_dict("records")]
        parts.append("<h3>Mechanism tests (family-wise)</h3><p class='small muted'>Systematic: are the group's phone "
                     "means shifted against the groups it is served worse than? Random: are its speakers' phone "
                     "embeddings more scattered? Each: permutation p-value combined over its layers and the raw and "
                     "discriminant (LDA) spaces by the min-p rule, Holm-adjusted over every mechanism claim of an "
                     "encoder (each group's systematic and random); ✓ = significant at "
                     f"α = {c.alpha}. Evidence: the layer and space that carried it.</p><div class='scroll'>"
                     + html_table(["encoder", "group", "compared with", "peak layer", "p systematic (adj.)",
                                   "systematic evidence", "p random (adj.)", "random evidence"], rows,
                                  numeric=[False, False, False, False, True, False, True, False]) + "</div>")
    sh = c.t("shares")
    if sh is not None:
        fig = c.figure(F.mechanism_shares(sh, colors=c.colors), "mechanism_shares",
                       "How much of the extra distance of a served-worse group's tokens is systematic. Left: "
                       "systematic share sys⁺ / (sys⁺ + rand⁺) in % (row labels in the group's colour). Right: the two parts in "
                       "the same unit, squared distance summed over embedding dimensions: systematic excess (filled "
                       "circle, squared shift of the phone means) and random excess (open square, extra expected "
                       "squared distance of a token from its own group's phone mean). 95 % speaker-bootstrap "
                       "intervals. Unbiased estimates can be below zero when the true value is near zero; the share "
                       "counts a negative part as 0. Rows = the numbers of the table below.", "systematic share")
        rows = [[e(r["row"]), est_ci(r["systematic_excess"], r["systematic_excess_ci_low"],
                                      r["systematic_excess_ci_high"], 3, scale=1.0),
                 est_ci(r["random_excess"], r["random_excess_ci_low"], r["random_excess_ci_high"], 3, scale=1.0),
                 est_ci(r["share_systematic"], r["share_systematic_ci_low"], r["share_systematic_ci_high"])]
                for r in F.shares_rows(sh).to_dict("records")]  # the figure's rows, in its order
        parts.append(f"<div class='keep'><h3>Systematic vs random share</h3><div class='figs'>{fig}</div></div>"
                     "<div class='scroll'>"
                     + html_table(["encoder · group @ layer (space)", "systematic excess [95% CI]",
                                   "random excess [95% CI]", "systematic share (%) [95% CI]"], rows,
                                  numeric=[False, True, True, True]) + "</div>")
    parts.append(_representational(c))
    parts.append(_decomposition(c))
    return "".join(parts)


def _representational(c: _Ctx) -> str:
    rows = []
    for enc, s in (c.summary.get("encoders") or {}).items():
        for v in s.get("verdicts") or []:
            if v.get("representational"):
                rows.append([e(enc), c.group_cell(v["group"]), e(v.get("layer")), e(v["representational"]),
                             est_ci(v.get("gap"), v.get("gap_ci_low"), v.get("gap_ci_high"), sign=True)])
    if not rows:
        return ""
    return ("<h3>Representational differences (no accuracy cost)</h3><p class='small muted'>Groups not served worse "
            "whose embeddings are nonetheless shifted or more variable at the headline layer (descriptive tests, "
            "Holm-adjusted). The phone probe is not less accurate on them: a difference in representation, not a "
            "disadvantage.</p>" + html_table(["encoder", "group", "layer", "difference", "gap (pp) [95% CI]"], rows,
                                            numeric=[False, False, False, False, True]))


def _decomposition(c: _Ctx) -> str:
    dec = c.t("decomposition")
    if dec is None:
        return ""
    rows = []
    for enc, layer, d in c.at_headline("decomposition"):
        d = d[d["phone"].astype(str) == "*"]
        for r in d.to_dict("records"):
            rows.append([e(enc), e(layer), e(r["space"]), c.group_cell(r["group"]),
                         est_ci(r["shift_sq"], r["shift_ci_low"], r["shift_ci_high"], 3, scale=1.0),
                         num(r["random_sq"], 3), num(r["excess_random_sq"], 3, sign=True)])
    if not rows:
        return ""
    return ("<h3>Descriptive decomposition of every group at the headline layer</h3><p class='small muted'>All "
            "in squared distance summed over dimensions (phone average): shift² = squared distance of the group's "
            "phone means from the others' (U-statistic, unbiased, can be negative); random = expected squared "
            "distance of a token from its group's phone mean (D × (between- + within-speaker variance)); excess "
            "random = the same minus the other groups' median (or the reference's). For every group, whether or not it "
            "is served worse (its systematic share is in the table above only for groups served worse); every layer "
            "and phone: tables/decomposition.csv.</p>"
            "<div class='scroll'>" + html_table(["encoder", "layer", "space", "group", "shift² [95% CI]", "random",
                                                  "excess random"], rows,
                                                 numeric=[False, False, False, False, True, True, True])
            + "</div>")


# ---------------------------------------------------------------------------------------------- baseline, lenses
def _baseline(c: _Ctx) -> str | None:
    amp = c.t("amplification")
    if amp is None:
        return None
    head = amp[amp["is_baseline_layer"].astype(bool)] if "is_baseline_layer" in amp.columns else amp
    blayer = str(head["baseline_layer"].iloc[0]) if len(head) else ""
    fig = c.figure(F.layer_curves(head, est="amplification", lo="ci_low", hi="ci_high", zero_line=True,
                                  ylabel=f"amplification (pp) vs {blayer}", colors=c.colors,
                                  mark_layers={k: v for k, v in c.headline.items() if k != c.baseline}),
                   "amplification_by_layer",
                   f"Amplification = the encoder's gap − the acoustic baseline's ({e(blayer)}) gap, in pp, per layer, "
                   "with paired 95 % Welch intervals over the same speakers. Above 0: the encoder makes the group's "
                   "gap larger than it is in the signal.", "amplification by layer")
    rows = []
    for enc, layer, d in c.at_headline("amplification", c.audited):
        if "is_baseline_layer" in d.columns:
            d = d[d["is_baseline_layer"].astype(bool)]
        for r in d.to_dict("records"):
            rows.append([e(enc), e(layer), c.group_cell(r["group"]),
                         est_ci(r["baseline_gap"], r["baseline_gap_ci_low"], r["baseline_gap_ci_high"], sign=True),
                         est_ci(r["encoder_gap"], r["encoder_gap_ci_low"], r["encoder_gap_ci_high"], sign=True),
                         est_ci(r["amplification"], r["ci_low"], r["ci_high"], sign=True), e(r["reading"])])
    table = html_table(["encoder", "layer", "group", f"baseline gap (pp), {blayer}", "encoder gap (pp)",
                        "amplification (pp)", "reading"], rows,
                       numeric=[False, False, False, True, True, True, False])
    return (f"<div class='figs'>{fig}</div><h3>At each encoder's headline layer</h3><div class='scroll'>{table}</div>"
            "<p class='small muted'>Readings: amplified / inherited / reduced (the signal has a gap, the encoder makes "
            "it larger / passes it on / makes it smaller), created (no gap in the signal, one in the encoder), "
            "unclear, absent (see How to read). Intervals per cell, not adjusted over layers; the headline layer is "
            "chosen by accuracy, not by gap.</p>")


def _lenses(c: _Ctx) -> str | None:
    gi, si = c.t("group_identity"), c.t("speaker_identity")
    if gi is None and si is None:
        return None
    ga = c.t("group_accuracy")
    if ga is not None and c.baseline is not None and "encoder" in ga.columns:
        ga = ga[ga["encoder"].astype(str) != c.baseline]
    fig = c.figure(F.identity_by_layer(gi, si, ga, colors=c.colors), "identity_by_layer",
                   "Identity lenses per layer, encoders by line style on relative depth: balanced accuracy (%) of a "
                   "probe that predicts the speaker's group from a phone token, accuracy (%) of a closed-set speaker "
                   "probe, each with its 95 % interval and chance level (dotted), and each group's gap (pp). Does the "
                   "layer that encodes the group most also serve it worst?", "identity lenses")
    rows = []
    if gi is not None:
        pooled = gi[gi["phone"].astype(str) == "*"]
        for enc in c.audited:
            d = pooled[pooled["encoder"].astype(str) == enc] if "encoder" in pooled.columns else pooled
            if d.empty:
                continue
            r = d.loc[d["balanced_accuracy"].astype(float).idxmax()]
            rows.append([e(enc), e(r["layer"]), est_ci(r["balanced_accuracy"], r["ci_low"], r["ci_high"]),
                         pct(r["chance"]), pval(r["q_value"])])
    table = ("<h3>Where the group is most decodable</h3>" + html_table(
        ["encoder", "layer", "group identity, balanced accuracy (%) [95% CI]", "chance (%)", "q (BH over layers)"],
        rows, numeric=[False, False, True, True, True])) if rows else ""
    if si is not None and si[si["group"].astype(str) == "*"].empty:
        table += "<p class='small muted'>Speaker identity: not computed (speakers need ≥ 2 recordings).</p>"
    return f"<div class='figs'>{fig}</div>{table}"


# ---------------------------------------------------------------------------------------------- transfer
def _transfer(c: _Ctx) -> str:
    pa = c.t("probe_accuracy")
    ib = c.t("in_group_benefit")
    if pa is None and ib is None:
        return '<p class="na">not computed (probe_accuracy / in_group_benefit tables absent)</p>'
    figs = []
    for enc in c.audited:
        layer = c.headline.get(enc)
        d = c.t("probe_accuracy", enc)
        if d is None or d["train_kind"].astype(str).nunique() < 2:
            continue
        figs.append(c.figure(F.transfer_matrix(d, layer, title=enc), f"{_safe(enc)}-transfer_matrix",
                             f"{e(enc)}: accuracy (%) of probes trained on different speakers (rows) on each test "
                             f"group (columns) at the headline layer {e(layer)}. 'all speakers': the probe of the "
                             "verdicts; the others are size-matched (same number of training tokens), so rows compare "
                             "training populations, not training-set sizes. Every layer: tables/transfer.csv.",
                             "train x test accuracy"))
    if ib is not None:
        audited_ib = ib[~ib["encoder"].astype(str).isin([c.baseline])] if "encoder" in ib.columns else ib
        figs.append(c.figure(F.layer_curves(audited_ib, est="delta", lo="ci_low", hi="ci_high", zero_line=True,
                                            ylabel="in-group benefit (pp)", colors=c.colors),
                             "in_group_benefit_by_layer",
                             "In-group benefit per layer (pp): accuracy on a group of a size-matched probe trained on "
                             "that group only, minus a size-matched probe trained on everyone, with 95 % corrected "
                             "resampled-t intervals. Above 0: the group's phones are best read by its own probe — "
                             "behavioural evidence of a shift.", "in-group benefit"))
    rows = []
    for enc, layer, d in c.at_headline("in_group_benefit", c.audited):
        for r in d.to_dict("records"):
            rows.append([e(enc), e(layer), c.group_cell(r["group"]), pct(r["acc_in_group"]), pct(r["acc_pooled"]),
                         est_ci(r["delta"], r["ci_low"], r["ci_high"], sign=True), pval(r["q_value"])])
    table = html_table(["encoder", "layer", "group", "own-group probe (%)", "pooled probe (%)",
                        "in-group benefit (pp) [95% CI]", "q (BH)"], rows,
                       numeric=[False, False, False, True, True, True, True]) if rows else ""
    return f"<div class='figs'>{''.join(figs)}</div>{table}"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# ---------------------------------------------------------------------------------------------- variance
def _variance(c: _Ctx) -> str:
    sv, sa, va = c.t("speaker_variance"), c.t("speaker_accuracy"), c.t("variance_accuracy")
    if va is None and sv is None:
        return '<p class="na">not computed (speaker_variance table absent)</p>'
    layers = {k: v for k, v in c.headline.items() if k in c.audited or k == c.baseline}
    fig = c.figure(F.variance_vs_accuracy(sv, sa, layers, colors=c.colors, variance_accuracy=va),
                   "variance_vs_accuracy",
                   "Each speaker's normalised phone variance (raw space; how scattered its tokens are around its own "
                   "phone means, relative to the phone's typical spread) against its accuracy (%), at each encoder's "
                   "headline layer, with Spearman's ρ and its 95 % speaker-bootstrap interval.",
                   "variance vs accuracy")
    rows = []
    if va is not None:
        for enc, layer, d in c.at_headline("variance_accuracy"):
            for r in d.to_dict("records"):
                rows.append([e(enc), e(layer), e(r["space"]), est_ci(r["rho"], r["ci_low"], r["ci_high"], 2,
                                                                      scale=1.0),
                             num(r["rank_agreement"], 2, sign=True), e(r["n_speakers"])])
    table = html_table(["encoder", "layer", "space", "Spearman ρ [95% CI]", "rank agreement (Kendall τ)",
                        "speakers"], rows, numeric=[False, False, False, True, True, True]) if rows else ""
    return (f"<div class='figs'>{fig}</div>{table}<p class='small muted'>ρ &lt; 0: noisier speakers are less "
            "accurate. Rank agreement: Kendall's τ between the ranking of groups by mean variance and by mean error "
            "(1 − accuracy); +1 = the noisiest group is also the least accurate, −1 = the reverse; with few groups "
            "it takes few values (3 groups: ±1, ±1/3).</p>")


# ---------------------------------------------------------------------------------------------- before / after
def _comparison(c: _Ctx) -> str | None:
    if not any(c.t(n) is not None for n in COMPARISON_TABLES):
        return None
    ca, cg = c.t("change_accuracy"), c.t("change_gap")
    anyt = next(c.t(n) for n in COMPARISON_TABLES if c.t(n) is not None)
    prov = anyt.attrs.get("provenance", {}) or {}
    afters = list(dict.fromkeys(str(x) for x in anyt["after"])) if "after" in anyt.columns else []
    before = str(prov.get("before") or next((x for x in c.encoders if x not in afters), ""))
    layer = c.headline.get(before)
    if layer is None and ca is not None:
        layer = layer_order(ca["layer"])[-1]
    names = ", ".join(f"<b>{e(a)}</b>" for a in afters)
    intro = (f"<p>Original encoder <b>{e(before)}</b> against {len(afters)} variant(s): {names}; the same speakers "
             f"and folds, so every change pairs speaker by speaker. At the original's headline layer "
             f"<b>{e(layer)}</b>; every layer in tables/change_*.csv.</p>")
    parts = [intro]
    parts.append(_side_by_side(c, before, afters, layer))
    parts.append(_mechanism_changes(c, afters, layer))
    if cg is not None:
        parts.append("<div class='figs'>" + c.figure(
            F.layer_curves(cg, est="change", lo="ci_low", hi="ci_high", encoder_col="after", zero_line=True,
                           ylabel="change in gap (pp)", colors=c.colors), "change_gap_by_layer",
            f"Change in each group's gap (pp; variant − {e(before)}) per layer, variants by line style, with paired "
            "95 % Welch intervals over speakers. Below 0: the variant narrows the group's gap.",
            "change in gap") + (c.figure(
                F.layer_curves(ca, est="change", lo="ci_low", hi="ci_high", encoder_col="after", zero_line=True,
                               ylabel="change in accuracy (pp)", colors=c.colors), "change_accuracy_by_layer",
                f"Change in each group's accuracy (pp; variant − {e(before)}) per layer with paired 95 % t "
                "intervals.", "change in accuracy") if ca is not None else "") + "</div>")
    vt = c.t("verdict_transitions")
    if vt is not None:
        rows = [[e(r["after"]), c.group_cell(r["group"]), e(r["verdict_before"]), "→", e(r["verdict_after"]),
                 "<b>changed</b>" if r["changed"] else "same"] for r in vt.to_dict("records")]
        parts.append("<h3>Verdict transitions</h3>" + html_table(
            ["variant", "group", f"verdict ({before})", "", "verdict (variant)", ""], rows))
    per = c.t("finetune_per")
    if per is not None:
        rows = [[e(r.get("variant", "")), c.group_cell(r["group"]),
                 est_ci(r["per"], r.get("ci_low"), r.get("ci_high"))
                 + (" <span class='badge worse'>&gt; 100 %</span>" if finite(r["per"]) and r["per"] > 1 else ""),
                 e(r.get("n_speakers", MISSING))] for r in per.to_dict("records")]
        parts.append("<h3>Phone error rate of the fine-tuned variants (held-out speakers)</h3><p class='small "
                     "muted'>PER = (substitutions + deletions + insertions) / reference phones, in %; above 100 % "
                     "the model makes more edits than there are phones.</p>"
                     + html_table(["variant", "group", "PER (%) [95% CI]", "speakers"], rows,
                                  numeric=[False, False, True, True]))
    return "".join(parts)


def _side_by_side(c: _Ctx, before: str, afters: list[str], layer: str | None) -> str:
    """Rows = groups; the original and every variant side by side: accuracy, gap, verdict; changes with CIs."""
    ga, ca, cg = c.t("group_accuracy"), c.t("change_accuracy"), c.t("change_gap")
    if ga is None or layer is None:
        return ""
    verdicts = {n: {str(v["group"]): v for v in s.get("verdicts") or []}
                for n, s in (c.summary.get("encoders") or {}).items()}

    def ga_row(enc: str, g: str) -> dict[str, Any]:
        d = ga[(ga["encoder"].astype(str) == enc) & (ga["layer"].astype(str) == layer)
               & (ga["group"].astype(str) == g)] if "encoder" in ga.columns else ga.iloc[0:0]
        return d.iloc[0].to_dict() if len(d) else {}

    def ch(t: pd.DataFrame | None, a: str, g: str) -> str:
        if t is None:
            return MISSING
        d = t[(t["after"].astype(str) == a) & (t["layer"].astype(str) == layer) & (t["group"].astype(str) == g)]
        return est_ci(d["change"].iloc[0], d["ci_low"].iloc[0], d["ci_high"].iloc[0], sign=True) if len(d) \
            else MISSING

    groups = sorted({str(g) for g in ga["group"]})
    header = ["group", "encoder", "accuracy (%)", "Δ accuracy (pp) [95% CI]", "gap (pp)", "Δ gap (pp) [95% CI]",
              "verdict"]
    rows, rcls = [], []
    for g in groups:
        vb = (verdicts.get(before, {}).get(g) or {}).get("verdict")
        b = ga_row(before, g)
        rows.append([c.group_cell(g), f"<b>{e(before)}</b> (original)", pct(b.get("accuracy")), MISSING,
                     pp(b.get("gap")), MISSING, e(vb or MISSING)])
        rcls.append("first")
        for a in afters:
            r = ga_row(a, g)
            va = (verdicts.get(a, {}).get(g) or {}).get("verdict")
            vcell = e(va or MISSING) if va == vb else f"<b>{e(vb or MISSING)} → {e(va or MISSING)}</b>"
            rows.append(["", e(a), pct(r.get("accuracy")), ch(ca, a, g), pp(r.get("gap")), ch(cg, a, g), vcell])
            rcls.append("")
    return ("<h3>The original and every variant side by side</h3><p class='small muted'>Δ = variant − original on "
            "the same speakers, with paired 95 % intervals (Δ gap below 0: the variant narrows the group's gap). "
            "LaTeX: tables/change_headline.tex.</p><div class='scroll'>"
            + html_table(header, rows, numeric=[False, False, True, True, True, True, False], row_cls=rcls)
            + "</div>")


def _mechanism_changes(c: _Ctx, afters: list[str], layer: str | None) -> str:
    """The 'why' of before/after: changes in shift, spread and in-group benefit with CIs, at the headline layer."""
    rows = []
    cs, cv, cb = c.t("change_shift"), c.t("change_variance"), c.t("change_benefit")
    groups = sorted({str(g) for t in (cs, cv, cb) if t is not None for g in t["group"]})
    def pick(t: pd.DataFrame | None, a: str, g: str, space: str | None = None) -> str:
        """``change [ci]`` of variant ``a`` and group ``g`` at the layer (and space), "–" when absent."""
        if t is None:
            return MISSING
        d = t[(t["after"].astype(str) == a) & (t["group"].astype(str) == g) & (t["layer"].astype(str) == str(layer))]
        if space is not None and "space" in d.columns:
            d = d[d["space"].astype(str) == space]
        if d.empty:
            return MISSING
        r = d.iloc[0]
        digits, scale = (1, 100.0) if t is cb else (3, 1.0)
        return est_ci(r["change"], r["ci_low"], r["ci_high"], digits, scale=scale, sign=True)

    for a in afters:
        for g in groups:
            cells = [e(a), c.group_cell(g), pick(cs, a, g, "raw"), pick(cs, a, g, "lda"), pick(cv, a, g, "raw"),
                     pick(cb, a, g)]
            rows.append(cells)
    if not rows:
        return ""
    return ("<h3>Why did it change? Shift, spread and in-group benefit</h3><p class='small muted'>Variant − original "
            "at the headline layer. Shift² (squared distance of the group's phone means from the others', summed "
            "over dimensions; raw and discriminant space) and in-group benefit: difference of two estimates with a "
            "conservative interval (errors taken as independent). Normalised variance: paired per speaker. Below 0: "
            "less shift / less spread / less own-group advantage after.</p><div class='scroll'>"
            + html_table(["variant", "group", "Δ shift² raw [95% CI]", "Δ shift² LDA [95% CI]",
                          "Δ normalised variance [95% CI]", "Δ in-group benefit (pp) [95% CI]"], rows,
                         numeric=[False, False, True, True, True, True]) + "</div>")


# ---------------------------------------------------------------------------------------------- assembly
def _exports(c: _Ctx, written: list[Path]) -> str:
    tex = [p for p in written if p.suffix == ".tex"]
    items = "".join(f"<li><code>{e(p.relative_to(c.out))}</code> (+ .csv, .parquet)</li>" for p in tex)
    figs = sorted({p.stem for p in c.saved})
    return ("<p>Headline tables in LaTeX (booktabs: <code>\\usepackage{booktabs}</code>), each next to its CSV and "
            "Parquet:</p><ul>" + items + f"</ul><p>Figures, sized for one paper column (3.3 in), as "
            f"{_format_words(c.formats)} under <code>figures/</code>: "
            + ", ".join(f"<code>{e(s)}</code>" for s in figs) + "."
            + ("" if "pdf" in c.formats else " Vector copies (PDF, SVG) for a paper: <code>[output] figures = "
               "[\"png\", \"svg\", \"pdf\"]</code>.")
            + "</p><p class='small muted'>To archive this page "
            "as PDF: print it from a browser (every table wraps to the page width; the provenance is printed in "
            "full), or <code>chromium --headless --print-to-pdf=report.pdf report.html</code>.</p>")


def write_report(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
                 provenance: Mapping[str, Any], *, title: str | None = None, caveats: list[str] | None = None,
                 figure_formats: Sequence[str] = FIGURE_FORMATS) -> Path:
    """Write ``out_dir/report.html`` (self-contained), its figures under ``out_dir/figures`` (PNG, SVG, PDF) and
    the headline tables under ``out_dir/tables`` (LaTeX, CSV, Parquet).

    ``tables``: the audit's tables (``verdict``, ``group_accuracy``, ``shares``, …; several encoders' rows carry an
    ``encoder`` column), plus ``group_summary`` / ``excluded`` / ``problems`` / ``alignment_by_group`` for the data
    section, the ``change_*`` tables and ``verdict_transitions`` of a before/after comparison and
    ``finetune_per``. ``summary``: the headline (:func:`phonefair.report.summary.headline`, plus the pipeline's
    ``corpus`` and ``encoder_models``). ``caveats``: shown above the headline, before the automatic ones.
    ``figure_formats``: the files written per figure (PNG always: it is the one embedded).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    c = _context(out, tables, summary, provenance)
    c.formats = tuple(dict.fromkeys(["png", *figure_formats]))
    title = title or "phonefair report"
    cav = [Caveat("note", str(x)) for x in caveats or []] + automatic_caveats(summary, tables, provenance)
    written = export_headline_tables(out / "tables", tables, summary, baseline=c.baseline, headline=c.headline)
    body: dict[str, str | None] = {
        "headline": _headline(c, cav), "howto": howto_section(c.summary, c.tables, c.encoders, c.baseline, c.level,
                                                              c.alpha, c.fdr_alpha),
        "data": _data(c), "accuracy": _accuracy(c), "where": _where(c), "why": _why(c),
        "baseline": _baseline(c), "lenses": _lenses(c), "transfer": _transfer(c), "variance": _variance(c),
        "comparison": _comparison(c)}
    body["exports"] = _exports(c, written)
    body["provenance"] = "<pre class='prov'>" + e(json.dumps(provenance, indent=2, default=str)) + "</pre>" \
        if provenance \
        else '<p class="na">not recorded (no provenance given)</p>'
    shown = [(a, t) for a, t in SECTIONS if body.get(a) is not None]
    nav = "<nav>" + " ".join(f'<a href="#{a}">{e(_NAV.get(a, t))}</a>' for a, t in shown) + "</nav>"
    sections = "".join(f'<section id="{a}">{_keep_heading(f"<h2>{e(t)}</h2>", str(body[a]))}</section>'
                       for a, t in shown)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            # self-contained by construction: the browser may load nothing but inline styles and data: images
            f"<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; "
            f"style-src 'unsafe-inline'\"><title>{e(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{e(title)}</h1>{nav}</header>{sections}"
            f"<footer>Generated by phonefair {e(_version())}. Figures in figures/ "
            f"({', '.join(f.upper() for f in reversed(c.formats))}); tables in tables/ "
            f"(Parquet, CSV; headline tables also LaTeX).</footer></body></html>")
    path = out / "report.html"
    from phonefair.io import temp_path

    tmp = temp_path(path)
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path


_FORMAT_WORDS = {"pdf": "PDF (vector, TrueType fonts)", "svg": "SVG", "png": "200-dpi PNG"}


def _format_words(formats: Sequence[str]) -> str:
    """'PDF (vector, TrueType fonts), SVG and 200-dpi PNG' for the formats written, vector formats first."""
    words = [_FORMAT_WORDS[f] for f in ("pdf", "svg", "png") if f in formats]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _keep_heading(heading: str, body: str) -> str:
    """Print the heading on the same page as the figures that open its section: Chromium does not honour
    ``break-after: avoid`` on headings, so heading and first figure row go in one unbreakable block."""
    start = "<div class='figs'>"
    if not body.startswith(start) or (end := body.find("</div>")) < 0:  # figure rows hold no nested div
        return heading + body
    end += len("</div>")
    return f"<div class='keep'>{heading}{body[:end]}</div>{body[end:]}"


def _version() -> str:
    try:
        from phonefair import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover - always importable in an installed package
        return ""

