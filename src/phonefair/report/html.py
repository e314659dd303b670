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
    ("accuracy", "Layerwise accuracy per group"),
    ("heatmaps", "Training population × test group"),
    ("benefit", "In-group benefit"),
    ("variance", "Speaker variance vs accuracy"),
    ("decomposition", "Bias / variance decomposition"),
    ("phones", "Most shifted phones"),
    ("verdict", "Typology verdict"),
    ("comparison", "Before / after"),
    ("provenance", "Provenance"),
]
COMPARISON_TABLES = ("change_accuracy", "change_gap", "change_benefit", "change_variance")


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


def _headline(summary: Mapping[str, Any]) -> str:
    encs = summary.get("encoders") or {}
    if not encs:
        return '<p class="na">not computed (no summary)</p>'
    out = []
    for name, s in encs.items():
        items = []
        if s.get("best_layer") is not None:
            items.append(f"headline layer <b>{_e(s['best_layer'])}</b> (highest overall accuracy"
                         + (f" {s['overall_accuracy']:.3f}" if s.get("overall_accuracy") is not None else "")
                         + ")")
        if s.get("worst_group") is not None:
            gap = s.get("gap")
            gap_txt = (f"; gap to best group {_e(s.get('best_group'))}: {gap:.3f} "
                       f"[{s.get('gap_ci_low', float('nan')):.3f}, {s.get('gap_ci_high', float('nan')):.3f}]"
                       if gap is not None else "")
            items.append(f"worst group <b>{_e(s['worst_group'])}</b>{gap_txt}")
        for b in s.get("in_group_benefit", []):
            items.append(f"in-group benefit {_e(b['group'])}: {b['delta']:+.3f} [{b['ci_low']:+.3f}, "
                         f"{b['ci_high']:+.3f}]" + (" (significant)" if b.get("significant") else ""))
        for v in s.get("verdicts", []):
            items.append(f"{_e(v['group'])}: <b>{_e(v['verdict'])}</b>"
                         + (f" — {_e(v['evidence'])}" if v.get("evidence") else ""))
        lis = "".join(f"<li>{i}</li>" for i in items) or '<li class="na">no headline numbers</li>'
        out.append(f"<h3>{_e(name)}</h3><ul class='headline'>{lis}</ul>")
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


def _shifted_phones(dec: pd.DataFrame | None, phone_acc: pd.DataFrame | None, layer: str | None,
                    k: int = 5) -> str:
    if dec is None or layer is None:
        return _na("decomposition")
    d = dec.assign(layer=dec["layer"].astype(str))
    d = d[(d["layer"] == layer) & (d["phone"].astype(str) != "*")]
    if "space" in d:
        space = "raw" if (d["space"] == "raw").any() else str(d["space"].iloc[0]) if len(d) else "raw"
        d = d[d["space"] == space]
    if d.empty:
        return _na("per-phone decomposition")
    top = (d.sort_values("shift_sq", ascending=False).groupby("group", sort=True).head(k)
           .sort_values(["group", "shift_sq"], ascending=[True, False]))
    cols = [c for c in ["group", "phone", "shift_sq", "shift_ci_low", "shift_ci_high", "share_systematic",
                        "n_speakers", "n_tokens"] if c in top.columns]
    top = top[cols]
    if phone_acc is not None:
        p = phone_acc.assign(layer=phone_acc["layer"].astype(str))
        p = p[p["layer"] == layer][[c for c in ["group", "phone", "accuracy", "top_confusion"] if c in p]]
        top = top.merge(p, on=["group", "phone"], how="left")
    return (f'<p class="muted">Top {k} phones per group by squared shift from the reference at layer '
            f"{_e(layer)}; accuracy and most frequent confusion from the pooled probe.</p>"
            + _table_html(top, name="decomposition"))


def write_report(out_dir: str | os.PathLike[str], tables: Mapping[str, pd.DataFrame], summary: Mapping[str, Any],
                 provenance: Mapping[str, Any], *, title: str = "phonefair report",
                 banner: str | None = None) -> Path:
    """Write ``out_dir/report.html`` (self-contained) and the figures under ``out_dir/figures``.

    ``tables`` follows the result-table contract (``probe_accuracy``, ``group_gap``, ``in_group_benefit``,
    ``speaker_accuracy``, ``phone_accuracy``, ``decomposition``, ``speaker_variance``, ``variance_accuracy``,
    ``verdict``, …, plus ``group_summary`` / ``excluded`` / ``problems`` for the data section); tables of
    several encoders carry an ``encoder`` column. ``banner`` (or ``summary["demo"]``) shows a warning banner.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = _Figures(out)
    if banner is None and summary.get("demo"):
        banner = DEMO_BANNER
    encs = _encoder_names(tables)
    n_enc = len(encs)
    body: dict[str, str] = {}

    body["headline"] = _headline(summary)
    body["data"] = _data_section(tables, summary)

    acc, heat, ben, var, dec, phones, verd = ([] for _ in range(7))
    for enc in encs:
        h = _heading(enc, n_enc)
        pa, gg = _sub(tables, "probe_accuracy", enc), _sub(tables, "group_gap", enc)
        best = F.best_layer(gg, pa)
        fig = F.accuracy_by_layer(pa, gg)
        acc.append(h + (figs.img(fig, _stem(enc, "accuracy_by_layer"), "accuracy by layer")
                        + (_table_html(gg, name="group_gap") if gg is not None else "")
                        if fig is not None else _na("probe_accuracy / group_gap")))
        if pa is not None:
            layers = _small_multiple_layers(F.layer_order(pa["layer"]), best)
            fig = F.train_test_heatmaps(pa, layers)
            tr = _sub(tables, "transfer", enc)
            heat.append(h + (f'<p class="muted">Layers {", ".join(map(_e, layers))} (headline layer '
                             f"{_e(best)}). Rows: training population; columns: test group.</p>"
                             + figs.img(fig, _stem(enc, "train_test_heatmaps"), "train × test heatmaps")
                             if fig is not None else _na("probe_accuracy"))
                        + (("<h4>Transfer at the headline layer</h4>"
                            + _table_html(tr[tr["layer"].astype(str) == str(best)], name="transfer"))
                           if tr is not None else ""))
        else:
            heat.append(h + _na("probe_accuracy"))
        b = _sub(tables, "in_group_benefit", enc)
        fig = F.in_group_benefit(b, best)
        ben.append(h + (figs.img(fig, _stem(enc, "in_group_benefit"), "in-group benefit")
                        + _table_html(b[b["layer"].astype(str) == str(best)], name="in_group_benefit")
                        if fig is not None and b is not None else _na("in_group_benefit")))
        fig = F.variance_vs_accuracy(_sub(tables, "speaker_variance", enc), _sub(tables, "speaker_accuracy", enc),
                                     best, variance_accuracy=_sub(tables, "variance_accuracy", enc))
        va = _sub(tables, "variance_accuracy", enc)
        var.append(h + (figs.img(fig, _stem(enc, "variance_vs_accuracy"), "speaker variance vs accuracy")
                        if fig is not None else _na("speaker_variance / speaker_accuracy"))
                   + (_table_html(va, name="variance_accuracy") if va is not None else ""))
        d = _sub(tables, "decomposition", enc)
        fig = F.decomposition_bars(d, best)
        dstar = d[d["phone"].astype(str) == "*"] if d is not None else None
        dec.append(h + (figs.img(fig, _stem(enc, "decomposition"), "bias/variance decomposition")
                        + _table_html(dstar[dstar["layer"].astype(str) == str(best)], name="decomposition")
                        if fig is not None and dstar is not None else _na("decomposition")))
        phones.append(h + _shifted_phones(d, _sub(tables, "phone_accuracy", enc), best))
        v = _sub(tables, "verdict", enc)
        if v is not None:
            vb = v[v["layer"].astype(str) == str(best)]
            verd.append(h + f'<p class="muted">At the headline layer {_e(best)}; all layers in tables/verdict.csv'
                            "</p>" + _table_html(vb if not vb.empty else v, name="verdict"))
        else:
            verd.append(h + _na("verdict"))
    body.update(accuracy="".join(acc), heatmaps="".join(heat), benefit="".join(ben), variance="".join(var),
                decomposition="".join(dec), phones="".join(phones), verdict="".join(verd))
    if changes := [(name, tables[name]) for name in COMPARISON_TABLES if name in tables]:  # optional section
        body["comparison"] = (
            '<p class="muted">Change after − before (e.g. fine-tuned − original encoder) on the same held-out '
            'speakers and layers, with paired speaker-clustered CIs; figures in comparison.html.</p>'
            + "".join(f"<h3>{_e(name.replace('_', ' '))}</h3>" + _table_html(df, name=name) for name, df in changes))
    body["provenance"] = ("<pre>" + _e(json.dumps(provenance, indent=2, default=str, sort_keys=False))
                          + "</pre>")

    shown = [(a, t) for a, t in SECTIONS if a in body]
    nav = "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in shown) + "</nav>"
    sections = "".join(f'<section id="{a}"><h2>{_e(t)}</h2>{body[a]}</section>' for a, t in shown)
    ban = f'<p class="banner">{_e(banner)}</p>' if banner else ""
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1>{ban}{nav}{sections}"
            f"<p class='muted'>Generated by phonefair {_e(provenance.get('versions', {}).get('phonefair', ''))}."
            f" Figures are also in figures/ (PNG, SVG); tables in tables/ (Parquet, CSV).</p></body></html>")
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
