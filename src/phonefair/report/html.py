"""The self-contained HTML report: one file, inline CSS, figures embedded as base64 PNG, no scripts.

Every section is rendered only when its table is present and says "not computed" otherwise, so a partial run
still gives a readable report. All text taken from data is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd

from phonefair.report import figures as F

__all__ = ["write_report", "DEMO_BANNER"]

DEMO_BANNER = "Synthetic speech + random tiny encoder: shows the machinery, not a finding."
MAX_ROWS = 60  # longer tables are truncated in the page; the full table is in tables/*.csv

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:0 auto;padding:1em 1.5em;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-bottom:.3em}
.banner{background:#fff3cd;border:1px solid #e0c36a;padding:.7em 1em;border-radius:6px;font-weight:600}
.muted{color:#777}.na{color:#999;font-style:italic}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ddd;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.4em 0}
nav a{margin-right:.9em;font-size:.9em}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em;max-height:30em}
.headline li{margin:.2em 0}
"""

# (anchor, title) in page order
SECTIONS: list[tuple[str, str]] = [
    ("headline", "Headline"),
    ("data", "Data summary"),
    ("verdict", "Verdicts: served worse? where? why?"),
    ("accuracy", "Accuracy and gap per group and layer"),
    ("mechanism", "Why: shift and spread of the groups served worse"),
    ("benefit", "In-group benefit and transfer"),
    ("variance", "Speaker variance vs accuracy"),
    ("decomposition", "Bias / variance decomposition"),
    ("comparison", "Before / after"),
    ("provenance", "Provenance"),
]
COMPARISON_TABLES = ("change_accuracy", "change_gap", "change_variance", "change_shift", "change_benefit",
                     "verdict_transitions")


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _na(what: str) -> str:
    return f'<p class="na">not computed ({_e(what)} table absent)</p>'


def _table_html(df: pd.DataFrame, *, name: str = "", max_rows: int = MAX_ROWS) -> str:
    note = ""
    if len(df) > max_rows:
        note = (f'<p class="muted">showing {max_rows} of {len(df)} rows; the full table is '
                f"tables/{_e(name)}.csv</p>")
        df = df.head(max_rows)
    body = df.to_html(index=False, escape=True, na_rep="–", border=0,
                      float_format=lambda v: f"{v:.3g}" if abs(v) < 1e-2 and v != 0 else f"{v:.3f}")
    return body + note


def _per_encoder(df: pd.DataFrame | None) -> Iterator[tuple[str | None, pd.DataFrame]]:
    if df is None:
        return
    if "encoder" in df.columns:
        for name, d in df.groupby("encoder", sort=False):
            yield str(name), d.drop(columns="encoder")
    else:
        yield None, df


def _encoder_names(tables: Mapping[str, pd.DataFrame]) -> list[str | None]:
    for t in tables.values():
        if isinstance(t, pd.DataFrame) and "encoder" in t.columns and not t.empty:
            return list(dict.fromkeys(str(x) for x in t["encoder"]))
    return [None]


def _sub(tables: Mapping[str, pd.DataFrame], name: str, encoder: str | None) -> pd.DataFrame | None:
    t = tables.get(name)
    if t is None or not isinstance(t, pd.DataFrame) or t.empty:
        return None
    if encoder is not None and "encoder" in t.columns:
        t = t[t["encoder"].astype(str) == encoder].drop(columns="encoder")
        return t if not t.empty else None
    return t


class _Figures:
    """Embeds figures in the page and saves them as PNG + SVG under out_dir/figures."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = out_dir / "figures"
        self.saved: list[Path] = []

    def img(self, fig: Any, stem: str, alt: str) -> str:
        if fig is None:
            return ""
        try:
            self.saved += F.save_figure(fig, self.dir, stem)
            data = F.figure_to_base64(fig)
        finally:
            plt.close(fig)
        return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _stem(encoder: str | None, name: str) -> str:
    return f"{encoder}-{name}" if encoder else name


def _heading(encoder: str | None, n_enc: int) -> str:
    return f"<h3>encoder: {_e(encoder)}</h3>" if encoder is not None and n_enc > 1 else ""


def _small_multiple_layers(order: list[str], best: str | None, k: int = 4) -> list[str]:
    if len(order) <= k:
        return order
    idx = {round(i * (len(order) - 1) / (k - 1)) for i in range(k)}
    picked = [order[i] for i in sorted(idx)]
    if best is not None and best not in picked:
        picked[len(picked) // 2] = best
    return [x for x in order if x in picked]


def _headline(summary: Mapping[str, Any], caveats: list[str]) -> str:
    encs = summary.get("encoders") or {}
    out = []
    for c in caveats:
        out.append(f'<p class="banner">{_e(c)}</p>')
    if not encs:
        return "".join(out) + '<p class="na">not computed (no analysis yet)</p>'
    for name, s in encs.items():
        acc = s.get("overall_accuracy")
        head = f"headline layer <b>{_e(s.get('headline_layer'))}</b>"
        if acc is not None:
            head += f", accuracy {100 * acc:.1f} %"
        items = [f"<li>{_e(v.get('sentence'))}</li>" for v in s.get("verdicts", [])]
        out.append(f"<h3>{_e(name)}</h3><p>{head}</p><ul class='headline'>{''.join(items)}</ul>")
    for w in summary.get("warnings", []):
        out.append(f'<p class="muted">warning: {_e(w)}</p>')
    return "".join(out)


def _data_section(tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any]) -> str:
    parts = []
    corpus = summary.get("corpus") or {}
    if corpus:
        parts.append("<p>" + ", ".join(f"{_e(k)}: <b>{_e(v)}</b>" for k, v in corpus.items()) + "</p>")
    gs = tables.get("group_summary")
    parts.append(_table_html(gs, name="group_summary") if gs is not None and not gs.empty
                 else _na("group_summary"))
    ex = tables.get("excluded")
    if ex is not None and not ex.empty:
        parts.append("<h3>Excluded speakers / groups</h3>" + _table_html(ex, name="excluded"))
    elif ex is not None:
        parts.append('<p class="muted">No speakers or groups were excluded.</p>')
    pr = tables.get("problems")
    if pr is not None and not pr.empty:
        parts.append(f"<h3>Data problems ({len(pr)})</h3>"
                     '<p class="muted">Found by the loader and the validator; severity error = item excluded, '
                     "warning = kept, info = documented behaviour of a phone map. All rows in tables/problems.csv."
                     "</p>" + _table_html(pr, name="problems", max_rows=30))
    ap = tables.get("analysis_problems")
    if ap is not None and not ap.empty:
        parts.append(f"<h3>Analysis exclusions ({len(ap)})</h3>"
                     '<p class="muted">Phones or speakers the typology could not analyse, and why '
                     "(tables/analysis_problems.csv).</p>" + _table_html(ap, name="analysis_problems", max_rows=30))
    return "".join(parts)


def write_report(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
                 provenance: Mapping[str, Any], *, title: str | None = None,
                 caveats: list[str] | None = None) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and the figures under ``out_dir/figures``.

    ``tables``: the audit's tables (``verdict``, ``group_accuracy``, ``in_group_benefit``, ``decomposition``, …,
    plus ``group_summary`` / ``excluded`` / ``problems`` for the data section); tables of several encoders carry an
    ``encoder`` column. ``caveats`` are shown above the headline.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    title = title or "phonefair report"
    caveats = list(caveats or [])
    if (summary.get("corpus") or {}).get("synthetic"):
        caveats.append(DEMO_BANNER)
    encs = _encoder_names(tables)
    n_enc = len(encs)
    body: dict[str, str] = {"headline": _headline(summary, caveats), "data": _data_section(tables, summary)}
    verd, acc, mech, ben, var, dec = ([] for _ in range(6))
    for enc in encs:
        h = _heading(enc, n_enc)
        v = _sub(tables, "verdict", enc)
        verd.append(h + (_table_html(v, name="verdict") if v is not None else _na("verdict")))
        ga = _sub(tables, "group_accuracy", enc)
        fig = F.accuracy_by_layer(ga)
        acc.append(h + (figs.img(fig, _stem(enc, "accuracy_by_layer"), "accuracy and gap by layer")
                        + _table_html(ga, name="group_accuracy") if fig is not None else _na("group_accuracy")))
        m = _sub(tables, "mechanism", enc)
        sh = _sub(tables, "shares", enc)
        ps = _sub(tables, "phone_shift", enc)
        mech.append(h + (_table_html(m, name="mechanism") if m is not None else
                         '<p class="muted">No group is served worse: no mechanism to explain.</p>')
                    + (_table_html(sh, name="shares") if sh is not None else "")
                    + (_table_html(ps.sort_values("p_value").head(20), name="phone_shift") if ps is not None
                       else ""))
        ib = _sub(tables, "in_group_benefit", enc)
        tr = _sub(tables, "transfer", enc)
        ben.append(h + (_table_html(ib, name="in_group_benefit") if ib is not None else _na("in_group_benefit"))
                   + (_table_html(tr, name="transfer") if tr is not None else ""))
        va = _sub(tables, "variance_accuracy", enc)
        var.append(h + (_table_html(va, name="variance_accuracy") if va is not None else _na("variance_accuracy")))
        d = _sub(tables, "decomposition", enc)
        dstar = d[d["phone"].astype(str) == "*"] if d is not None else None
        dec.append(h + (_table_html(dstar, name="decomposition") if dstar is not None else _na("decomposition")))
    body.update(verdict="".join(verd), accuracy="".join(acc), mechanism="".join(mech), benefit="".join(ben),
                variance="".join(var), decomposition="".join(dec))
    if changes := [(name, tables[name]) for name in COMPARISON_TABLES if name in tables]:
        body["comparison"] = "".join(f"<h3>{_e(name.replace('_', ' '))}</h3>" + _table_html(df, name=name)
                                     for name, df in changes)
    body["provenance"] = "<pre>" + _e(json.dumps(provenance, indent=2, default=str)) + "</pre>"
    shown = [(a, t) for a, t in SECTIONS if a in body]
    nav = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in shown) + "</nav>"
    sections = "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{body[a]}</section>' for a, t in shown)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{nav}{sections}"
            f"<p class='muted'>Generated by phonefair. Figures are also in figures/ (PNG, SVG); tables in tables/ "
            f"(Parquet, CSV).</p></body></html>")
    path = out / "report.html"
    from phonefair.io import temp_path

    tmp = temp_path(path)
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
