"""The HTML report renders every section from contract-shaped tables, is self-contained and escapes text."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from phonefair.report import DEMO_BANNER, write_report
from phonefair.report.example import example_tables
from phonefair.report.figures import best_layer, layer_order
from phonefair.report.html import SECTIONS


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    a, b = example_tables(seed=0), example_tables(seed=1)
    tables = {k: pd.concat([a[k].assign(encoder="enc-a"), b[k].assign(encoder="enc-b")], ignore_index=True)
              for k in a}
    tables["group_summary"] = pd.DataFrame({"group": ["a", "b", "c", "<tiny>"], "speakers": [4, 4, 4, 1],
                                            "included": [True, True, True, False],
                                            "reason": ["", "", "", "group '<tiny>' has 1 speaker(s)"]})
    tables["excluded"] = pd.DataFrame({"speaker": ["x1"], "group": ["<tiny>"], "reason": ["too small"]})
    summary = {"demo": True, "encoders": {"enc-a": {"best_layer": "3", "overall_accuracy": 0.8, "best_group": "a",
                                                     "worst_group": "c", "gap": 0.1, "gap_ci_low": 0.05,
                                                     "gap_ci_high": 0.15, "verdicts": [
                                                         {"group": "c", "verdict": "both", "evidence": "<b>x</b>"}]}}}
    prov = {"versions": {"phonefair": "0.1.0"}, "config": {"corpus": {"kind": "synthetic"}}, "seeds": {"run": 0}}
    path = write_report(out, tables, summary, prov, title="Test <report>")
    return path, path.read_text()


def test_all_sections_present_and_computed(rendered: tuple[Path, str]) -> None:
    path, page = rendered
    assert path.name == "report.html"
    for anchor, title in SECTIONS:
        if anchor == "comparison":  # optional: only after 'phonefair compare' (tests/test_workflows.py)
            assert f'<section id="{anchor}">' not in page
            continue
        assert f'<section id="{anchor}">' in page, anchor
    assert "not computed" not in page
    assert DEMO_BANNER in page
    # one heading per encoder in the faceted sections
    assert page.count("<h3>encoder: enc-a</h3>") >= 6 and page.count("<h3>encoder: enc-b</h3>") >= 6


def test_self_contained(rendered: tuple[Path, str]) -> None:
    _, page = rendered
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(imgs) == 10  # 5 figures x 2 encoders
    assert all(s.startswith("data:image/png;base64,") and len(s) > 1000 for s in imgs)


def test_text_is_escaped(rendered: tuple[Path, str]) -> None:
    _, page = rendered
    assert "<title>Test &lt;report&gt;</title>" in page
    assert "example evidence for &lt;a&gt; &amp; co" in page  # verdict table cell
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page  # headline evidence
    assert "&lt;tiny&gt;" in page and "<tiny>" not in page


def test_figures_saved_as_png_and_svg(rendered: tuple[Path, str]) -> None:
    path, _ = rendered
    figs = path.parent / "figures"
    pngs = sorted(p.stem for p in figs.glob("*.png"))
    svgs = sorted(p.stem for p in figs.glob("*.svg"))
    assert pngs == svgs and len(pngs) == 10
    assert "enc-a-accuracy_by_layer" in pngs and "enc-b-train_test_heatmaps" in pngs


def test_dollar_signs_in_labels_are_drawn_literally(tmp_path: Path) -> None:
    """Issue 15 row 7: a group label with "$" was read as matplotlib mathtext: "$10k-$20k" drawn as "10k−20k",
    and "a $_$ b" killed the report stage with "error: _"."""
    import matplotlib.text

    from phonefair.report import figures as F

    names = {"a": "$10k-$20k", "b": "a $_$ b"}
    tables = example_tables(seed=0)
    for t in tables.values():
        for col in ("group", "test_group", "train_group", "best_group", "worst_group"):
            if col in t.columns:
                t[col] = t[col].map(lambda v: names.get(v, v) if isinstance(v, str) else v)
    # the figures that draw group labels (legend, tick labels); the report used to die while drawing them
    keep = ("probe_accuracy", "group_gap", "in_group_benefit")
    path = write_report(tmp_path, {k: tables[k] for k in keep}, {}, {}, title="dollars")
    assert "$10k-$20k" in path.read_text()
    for fig in (F.accuracy_by_layer(tables["probe_accuracy"], tables["group_gap"]),
                F.in_group_benefit(tables["in_group_benefit"], "3")):
        F.figure_to_base64(fig)  # drawn (tick labels are made at draw time)
        texts = [t for t in fig.findobj(matplotlib.text.Text) if "$" in t.get_text()]
        assert {t.get_text() for t in texts} >= set(names.values())
        assert not any(t.get_parse_math() for t in texts)


def test_missing_tables_say_not_computed(tmp_path: Path) -> None:
    t = example_tables()
    only_probes = {k: t[k] for k in ("probe_accuracy", "group_gap", "in_group_benefit")}
    page = write_report(tmp_path, only_probes, {}, {}, title="partial").read_text()
    for anchor, _ in SECTIONS:
        assert (f'<section id="{anchor}">' in page) == (anchor != "comparison")
    assert "not computed (verdict table absent)" in page
    assert "not computed (decomposition table absent)" in page
    assert "not computed (group_summary table absent)" in page
    assert page.count("<img ") == 3  # accuracy, heatmaps, benefit
    assert "banner" not in page.split("<nav>")[0].split("</style>")[1]  # no demo banner
    empty = write_report(tmp_path / "empty", {}, {}, {}, title="empty").read_text()
    assert empty.count("not computed") >= 8 and "<img" not in empty


def test_layer_order_and_best_layer() -> None:
    assert layer_order(["10", "2", "cnn", "0", "12_norm", "x"]) == ["cnn", "0", "2", "10", "12_norm", "x"]
    gg = pd.DataFrame({"layer": ["0", "1", "2"], "overall_accuracy": [0.5, 0.9, 0.7]})
    assert best_layer(gg) == "1"
    assert best_layer(None, None) is None
