"""The report: every section from a real audit's tables, self-contained, escaped, figures that agree with their
tables, LaTeX that compiles in principle, caveats, before/after inside the main report, and a headless-Chromium
render (when Chromium is installed)."""

from __future__ import annotations

import base64
import html as html_lib
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phonefair.audit import Audit
from phonefair.layers import relative_depth
from phonefair.report import SECTIONS, write_report
from phonefair.report import figures as F
from phonefair.report.caveats import automatic_caveats
from phonefair.report.latex import escape_latex, latex_table
from phonefair.store.base import InMemoryEmbeddings
from phonefair.synth.simulate import PRESETS, simulate

HOSTILE = "<b>A</b>"
DOLLAR = "$10k-$20k"
FAST = {"probes": {"l2_grid": [0.01], "threads": 1}, "analysis": {"n_perm": 199, "n_boot": 50}}


@pytest.fixture(scope="module")
def audit() -> Audit:
    """Group C is served worse (random error). Two encoders of different depth on the same tokens, an acoustic-
    baseline-like encoder with one non-hierarchical feature set, and the group-identity lens; group labels that
    HTML, LaTeX and matplotlib would otherwise interpret."""
    sc = PRESETS["variance"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=8)
    sim = simulate(sc, seed=2, dim=8, layers=("0", "1", "2"))
    tok = sim.embeddings.tokens
    rng = np.random.default_rng(0)
    X = {layer: sim.embeddings.read(layer) for layer in ("0", "1", "2")}
    deeper = InMemoryEmbeddings(tok, {str(i): X[str(min(i // 2, 2))] + rng.normal(0, 0.2, X["0"].shape)
                                      for i in range(5)})
    base = InMemoryEmbeddings(tok, {"mfcc": X["0"] + rng.normal(0, 1.0, X["0"].shape)})
    groups = sim.groups.replace({"A": HOSTILE, "B": DOLLAR})
    a = Audit({"enc-a": sim.embeddings, "enc-b": deeper, "acoustic": base}, groups, baseline="acoustic",
              lenses={"n_perm": 9, "n_boot": 50, "attribution": False, "removal": False,
                      "speaker_identity": False}, **FAST)
    a.run()
    for enc in ("enc-a", "enc-b"):
        a.identity(enc)
    return a


@pytest.fixture(scope="module")
def rendered(audit: Audit, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = audit.report(out, title="Test <report>", caveats=["a caveat"])
    # a figure whose layout collapses when saved at a second resolution (PNG, then PDF) is drawn wrong in the PDF
    assert not [w for w in caught if "constrained_layout" in str(w.message)], [str(w.message) for w in caught]
    return path, path.read_text()


# ---------------------------------------------------------------------------------------------- the page
def test_sections_present_in_order(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    expected = [a for a, _ in SECTIONS if a != "comparison"]  # no before/after tables in this audit
    positions = [html.find(f'id="{a}"') for a in expected]
    assert all(p >= 0 for p in positions), dict(zip(expected, positions, strict=True))
    assert positions == sorted(positions)
    assert 'id="comparison"' not in html
    assert "a caveat" in html and "served worse: random" in html


def test_headline_answers_who_where_why(audit: Audit, rendered: tuple[Path, str]) -> None:
    _, html = rendered
    head = html[html.index('id="headline"'):html.index('id="howto"')]
    summary = audit.summary()
    for enc in ("enc-a", "enc-b"):
        v = next(x for x in summary["encoders"][enc]["verdicts"] if x["group"] == "C")
        assert v["served_worse"]
        # the quotable sentence, then its numbers: gap with interval in pp, layers, mechanism share, pairwise
        assert html_lib.escape(v["sentence"], quote=True) in head
        gap = f"{100 * v['gap']:+.1f}".replace("-", "\u2212")
        assert gap in head
        assert summary["encoders"][enc]["versus"]["C"], "pairwise numbers behind 'served worse than'"
    # every group not served worse shows its minimum detectable gap
    assert "MDE" in head and "majority class" in head
    # the acoustic baseline's reading is beside the verdict
    assert "vs acoustic baseline" in head


def test_not_served_worse_is_never_styled_as_disadvantaged(audit: Audit, rendered: tuple[Path, str]) -> None:
    _, html = rendered
    head = html[html.index('id="headline"'):html.index('id="howto"')]
    badges = re.findall(r"<li><span class=\"badge (\w+)\">(.*?)</span>", head)
    verdicts = audit.verdicts()
    assert len(badges) == len(verdicts)
    for cls, text in badges:
        assert (cls == "worse") == text.startswith("served worse"), (cls, text)
    worse_rows = head.count("<tr class=\"worse\">")
    assert worse_rows == int(verdicts["served_worse"].sum())


def test_self_contained_and_escaped(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html) and "<script" not in html
    assert "https://" not in html and "http://" not in html
    assert "Content-Security-Policy" in html  # the browser may load nothing from outside
    assert HOSTILE not in html and "&lt;b&gt;A&lt;/b&gt;" in html
    assert "Test &lt;report&gt;" in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 8
    assert all(base64.b64decode(x)[:8] == b"\x89PNG\r\n\x1a\n" for x in images)


def test_howto_box_defines_vocabulary_units_and_layers(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    box = html[html.index('id="howto"'):html.index('id="data"')]
    for verdict in ("not served worse", "served worse: systematic", "served worse: random",
                    "served worse: systematic and random", "served worse: unexplained", "representational"):
        assert verdict in box
    for word in ("percentage points", "squared embedding units", "negative", "family-wise",
                 "false discovery rate", "majority-class", "hidden state 0", "relative depth", "amplified"):
        assert word in box, word


def test_figures_saved_as_png_svg_pdf_one_column_wide(rendered: tuple[Path, str]) -> None:
    path, _ = rendered
    figs = path.parent / "figures"
    stems = {p.stem for p in figs.glob("*.png")}
    assert {"accuracy_by_layer", "gap_by_layer", "mechanism_shares", "amplification_by_layer",
            "identity_by_layer", "in_group_benefit_by_layer", "variance_vs_accuracy"} <= stems
    for stem in stems:
        assert (figs / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        svg = (figs / f"{stem}.svg").read_text()
        width_pt = float(re.search(r'<svg[^>]*width="([\d.]+)pt"', svg).group(1))
        assert width_pt <= 3.3 * 72 + 1, (stem, width_pt)  # one paper column


def test_latex_tables_are_well_formed(rendered: tuple[Path, str], audit: Audit) -> None:
    path, _ = rendered
    tables = path.parent / "tables"
    for name in ("verdict", "group_accuracy_headline"):
        tex = (tables / f"{name}.tex").read_text()
        assert (tables / f"{name}.csv").is_file() and (tables / f"{name}.parquet").is_file()
        _check_booktabs(tex)
        assert r"\textless{}b\textgreater{}A\textless{}/b\textgreater{}" in tex  # HTML label escaped
        assert r"\$10k-\$20k" in tex and "$10k" not in tex.replace(r"\$10k", "")
    gah = pd.read_parquet(tables / "group_accuracy_headline.parquet")
    ga = audit.tables()["group_accuracy"]
    for r in gah.itertuples():
        ref = ga[(ga["encoder"] == r.encoder) & (ga["layer"] == r.layer) & (ga["group"] == r.group)]
        assert ref["accuracy"].iloc[0] == pytest.approx(r.accuracy)


def _check_booktabs(tex: str) -> None:
    assert tex.count(r"\begin{table}") == tex.count(r"\end{table}") == 1
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(rule) == 1, rule
    unescaped = re.sub(r"\\[{}$&%#_]", "", tex)
    assert unescaped.count("{") == unescaped.count("}")
    n_cols = len(re.search(r"\\begin\{tabular\}\{([lrc]+)\}", tex).group(1))
    body = tex[tex.index(r"\toprule") + 8:tex.index(r"\bottomrule")].replace(r"\midrule", "")
    for line in filter(None, (x.strip() for x in body.split("\n"))):
        assert line.endswith(r"\\"), line
        assert len(re.findall(r"(?<!\\)&", line)) == n_cols - 1, line
        assert "$" not in re.sub(r"\\\$|\$-\$", "", line), line  # only escaped dollars and the minus sign


def test_escape_latex_and_table() -> None:
    assert escape_latex("50% of a_b & {c} #1 ~ ^ \\") == \
        r"50\% of a\_b \& \{c\} \#1 \textasciitilde{} \textasciicircum{} \textbackslash{}"
    assert escape_latex("\u22121.5") == "$-$1.5"
    _check_booktabs(latex_table(["a", "b&c"], [["x_1", "2"], ["$", "3"]], caption="c%", label="t:x",
                                numeric=[False, True]))
    with pytest.raises(ValueError):
        latex_table(["a", "b"], [["only one"]], caption="", label="x")


# ---------------------------------------------------------------------------------------------- figures = tables
def test_shares_figure_agrees_with_its_table(audit: Audit, rendered: tuple[Path, str]) -> None:
    """Issue 14: the old figure showed 87 % systematic where the table said 0.174. Read the plotted values back from
    the artists and compare them, row by row, with the shares table and with the table printed under the figure."""
    shares = audit.tables()["shares"]
    assert len(shares) >= 2  # group C, raw and LDA space, per encoder
    fig = F.mechanism_shares(shares)
    rows = F.shares_rows(shares)

    def plotted(gid: str, coord: str = "x") -> tuple[np.ndarray, list[object]]:
        """Values of the artists ``gid`` in figure order (panel by panel), with their axes."""
        lines = [ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid() == gid]
        data = [ln.get_xdata() if coord == "x" else ln.get_ydata() for ln in lines]
        return np.concatenate(data), [ln.axes for ln in lines for _ in range(len(ln.get_xdata()))]

    share, share_axes = plotted("share_systematic")
    np.testing.assert_allclose(share, 100 * rows["share_systematic"], rtol=1e-12)
    np.testing.assert_allclose(plotted("systematic_excess")[0], rows["systematic_excess"], rtol=1e-12)
    np.testing.assert_allclose(plotted("random_excess")[0], rows["random_excess"], rtol=1e-12)
    # each point sits on the row named like the table row: read the y tick label at the point's height
    ys = plotted("share_systematic", "y")[0]
    names = [next(t.get_text() for t in ax.get_yticklabels() if np.isclose(t.get_position()[1], y))
             for ax, y in zip(share_axes, ys, strict=True)]
    assert names == rows["label"].tolist()
    # one pair of panels per (encoder, group), titled with both; the distance axis is never shared across encoders
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert titles == list(dict.fromkeys(rows["block"]))
    ex_axes = [ln.axes for ln in (ln for ax in fig.axes for ln in ax.get_lines()) if ln.get_gid() == "random_excess"]
    blocks = list(dict.fromkeys(zip(rows["encoder"], rows["block"])))
    for (enc_a, _), ax_a in zip(blocks, ex_axes, strict=True):
        for (enc_b, _), ax_b in zip(blocks, ex_axes, strict=True):
            assert (ax_a is ax_b or ax_a.get_shared_x_axes().joined(ax_a, ax_b)) == (enc_a == enc_b)
    # same row, same height: each row's three numbers are one row of the table
    np.testing.assert_allclose(plotted("systematic_excess", "y")[0] - plotted("random_excess", "y")[0], 0.32,
                               atol=1e-9)
    # the table printed under the figure holds the same numbers as the figure (same order)
    _, html = rendered
    why = html[html.index('id="why"'):html.index('id="baseline"')]
    printed = re.findall(r"<td class=\"n\">([^<]*)</td><td class=\"n\">([^<]*)</td><td class=\"n\">([^<]*) "
                         r"\[[^<]*\]</td></tr>", why)
    shares_printed = [float(x[2].replace("\u2212", "-")) for x in printed][:len(rows)]
    np.testing.assert_allclose(shares_printed, np.round(100 * rows["share_systematic"], 1), atol=0.051)


def test_layer_curves_overlay_encoders_on_relative_depth(audit: Audit) -> None:
    ga = audit.tables()["group_accuracy"]
    fig = F.accuracy_by_layer(ga, chance=0.1, baseline="acoustic", baseline_layer="mfcc")
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines() if ln.get_gid()}
    a = lines["enc-a|C|accuracy"]
    b = lines["enc-b|C|accuracy"]
    assert a.axes is b.axes  # overlaid in the group's panel
    assert a.get_color() == b.get_color() and a.get_linestyle() != b.get_linestyle()  # colour = group
    np.testing.assert_allclose(a.get_xdata(), [relative_depth(x, ["0", "1", "2"]) for x in ("0", "1", "2")])
    np.testing.assert_allclose(b.get_xdata(), np.linspace(0, 1, 5))
    d = ga[(ga["encoder"] == "enc-b") & (ga["group"] == "C")].sort_values("layer")
    np.testing.assert_allclose(b.get_ydata(), 100 * d["accuracy"])
    assert "enc-a|C|accuracy" in lines and any(ln.get_gid() == "acoustic|C|accuracy"
                                                for ax in fig.axes for ln in ax.get_children()
                                                if hasattr(ln, "get_gid"))
    colours = {ln.get_gid().split("|")[1]: ln.get_color() for ln in lines.values() if ln.get_gid().count("|") == 2}
    assert len(set(colours.values())) == 3  # one colour per group, the same in every encoder


def test_dollar_signs_in_labels_are_drawn_literally(audit: Audit, rendered: tuple[Path, str]) -> None:
    """Issue 15 row 7: a group label with "$" was read as matplotlib mathtext: "$10k-$20k" drawn as "10k−20k",
    and "a $_$ b" killed the report stage with "error: _"."""
    import matplotlib.text

    assert DOLLAR in rendered[1]
    ga = audit.tables()["group_accuracy"].replace({DOLLAR: "a $_$ b", HOSTILE: DOLLAR})
    fig = F.accuracy_by_layer(ga[ga["encoder"] == "enc-a"])
    F.figure_to_base64(fig)  # drawn (tick labels are made at draw time)
    texts = [t for t in fig.findobj(matplotlib.text.Text) if "$" in t.get_text()]
    assert {t.get_text() for t in texts} >= {DOLLAR, "a $_$ b"}
    assert not any(t.get_parse_math() for t in texts)


def test_missing_tables_say_not_computed(tmp_path: Path) -> None:
    html = write_report(tmp_path, {}, {}, {}).read_text()
    assert "not computed" in html and 'id="headline"' in html and 'id="howto"' in html


# ---------------------------------------------------------------------------------------------- caveats
def test_automatic_caveats() -> None:
    summary = {"corpus": {"synthetic": True}, "encoder_models": {"t": "tiny:wav2vec2", "w": "facebook/wavlm"},
               "encoders": {"t": {"design": {"speakers_per_group": {"x": 3, "y": 9}},
                                  "verdicts": [{"group": "y", "served_worse": False, "mde": 0.12}]}}}
    per = pd.DataFrame({"variant": ["ctc", "ctc"], "group": ["x", "y"], "per": [2.6, 0.4]})
    align = pd.DataFrame({"metric": ["confidence"], "group": ["x"], "estimate": [-3.0], "ci_low": [-3.5],
                          "ci_high": [-2.5]})
    texts = [c.text for c in automatic_caveats({**summary, "alignment_warnings": ["aligner differs"]},
                                               {"finetune_per": per, "alignment_by_group": align}, {})]
    joined = " | ".join(texts)
    assert "Synthetic speech" in joined
    assert "t (tiny:wav2vec2)" in joined and "facebook/wavlm" not in joined
    assert "x (3)" in joined and "y (9)" not in joined
    assert "PER 2.60 = 260 %" in joined and "0.40" not in joined
    assert "12.0 pp" in joined  # low power: not detected is not absent
    assert "forced aligner" in joined and "aligner differs" in joined
    assert automatic_caveats({"encoders": {}}, {}, {}) == []


# ---------------------------------------------------------------------------------------------- before/after
def test_before_after_inside_the_main_report(audit: Audit, tmp_path: Path) -> None:
    from phonefair.audit.compare import compare_audits

    changes = compare_audits(audit, "enc-a", ["enc-b"])
    tables = {**audit.tables(), **changes,
              "finetune_per": pd.DataFrame({"variant": ["ctc"] * 3, "group": [HOSTILE, DOLLAR, "C"],
                                            "per": [2.6, 0.5, 0.7], "ci_low": [2.0, 0.4, 0.6],
                                            "ci_high": [3.0, 0.6, 0.8], "n_speakers": [3, 3, 3]})}
    path = write_report(tmp_path, tables, audit.summary(), {}, figure_formats=("png",))
    html = path.read_text()
    cmp_ = html[html.index('id="comparison"'):html.index('id="exports"')]
    assert "enc-b" in cmp_ and "Δ gap (pp)" in cmp_ and "Verdict transitions" in cmp_
    assert "Δ shift² raw" in cmp_ and "Δ in-group benefit" in cmp_  # the "why" of the change
    assert "change_gap_by_layer" in cmp_ and "&gt; 100 %" in cmp_
    assert "PER 2.60 = 260 %" in html[:html.index('id="howto"')]  # caveat on the first screen
    assert not list(tmp_path.rglob("comparison.html"))
    # PNG-only figure files (the demo's setting): the page says so, and how to get the vector copies
    assert {p.suffix for p in (tmp_path / "figures").iterdir()} == {".png"}
    exports = html[html.index('id="exports"'):]
    assert "as 200-dpi PNG under" in exports and "[output] figures" in exports and "Figures in figures/ (PNG)" in html
    ch = pd.read_parquet(tmp_path / "tables" / "change_headline.parquet")
    ca = changes["change_accuracy"]
    layer = audit.summary()["encoders"]["enc-a"]["headline_layer"]
    ref = ca[(ca["layer"] == layer)].set_index("group")["change"]
    np.testing.assert_allclose(ch.set_index("group").loc[ref.index, "change_accuracy"], ref)
    _check_booktabs((tmp_path / "tables" / "change_headline.tex").read_text())
    assert not (tmp_path / "figures" / "accuracy_by_layer.pdf").exists()  # only the formats asked for


# ---------------------------------------------------------------------------------------------- Chromium
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed")
def test_renders_in_headless_chromium(rendered: tuple[Path, str], tmp_path: Path) -> None:
    """The page as a browser sees it: no console message (the page has no script, so any message is an error,
    e.g. a blocked external load), every section in the DOM, a screenshot and a PDF print."""
    path, _ = rendered
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    url = path.resolve().as_uri()
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    for anchor, _ in SECTIONS:
        if anchor != "comparison":
            assert f'id="{anchor}"' in dom.stdout, anchor
    shot, pdf = tmp_path / "first.png", tmp_path / "report.pdf"
    subprocess.run([*flags, "--window-size=1280,900", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    subprocess.run([*flags, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", url], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:5] == b"%PDF-"
    assert pdf.stat().st_size > 50_000  # figures and tables made it into the print


# ---------------------------------------------------------------------------------------------- alignment
def test_alignment_quality_of_phonefair_aligner_reaches_the_data_section(tmp_path: Path) -> None:
    """A corpus aligned by ``phonefair align`` holds alignment_quality.parquet: the run adds the aligner's quality per
    group and its warnings; the report shows them in the data section and as caveats."""
    from phonefair.pipeline.workflows import alignment_quality

    rng = np.random.default_rng(0)
    speakers = [f"{g}{i}" for g in "xy" for i in range(6)]
    quality = pd.DataFrame([{"speaker": s, "phone": p, "confidence": rng.normal(-2.0 if s[0] == "x" else -4.0, 0.2)}
                            for s in speakers for p in ("aa", "t", "s") for _ in range(5)])
    utterances = pd.DataFrame({"speaker": speakers, "status": "aligned"})
    for name, df in (("alignment_quality", quality), ("alignment_utterances", utterances),
                     ("alignment_problems", pd.DataFrame({"kind": pd.Series(dtype=str)}))):
        df.to_parquet(tmp_path / f"{name}.parquet")
    groups = pd.Series({s: s[0] for s in speakers})
    tables, warnings = alignment_quality(tmp_path, groups, seed=0, alpha=0.05, level=0.95)
    assert set(tables) == {"alignment_by_group", "alignment_tests"}
    assert warnings and "alignment confidence differs" in warnings[0]
    assert alignment_quality(tmp_path / "elsewhere", groups, seed=0, alpha=0.05, level=0.95) == ({}, [])
    html = write_report(tmp_path / "out", tables, {"alignment_warnings": warnings}, {}).read_text()
    data = html[html.index('id="data"'):]
    assert "Alignment quality per group" in data and "groups differ" in data
    assert "forced aligner" in html[:html.index('id="howto"')]
