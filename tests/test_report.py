"""The HTML report renders every section from a real audit's tables, is self-contained and escapes text."""

from __future__ import annotations

from pathlib import Path

import pytest

from phonefair.audit import Audit
from phonefair.report import write_report
from phonefair.report.html import SECTIONS
from phonefair.synth.simulate import simulate


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    sim = simulate("variance", seed=2, dim=8, layers=("0", "1"))
    groups = sim.groups.replace({"A": "<b>A</b>"})  # hostile label: must be escaped
    audit = Audit(sim.embeddings, groups, probes={"l2_grid": [0.01], "threads": 1},
                  analysis={"n_perm": 199, "n_boot": 50})
    out = tmp_path_factory.mktemp("report")
    path = audit.report(out, title="Test <report>", caveats=["a caveat"])
    return path, path.read_text()


def test_sections_present(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    for anchor, _title in SECTIONS:
        if anchor in ("comparison", "provenance", "data"):
            continue
        assert f'id="{anchor}"' in html, anchor
    assert "served worse" in html and "a caveat" in html


def test_self_contained_and_escaped(rendered: tuple[Path, str]) -> None:
    _, html = rendered
    assert "<img" in html and "data:image/png;base64," in html and "https://" not in html
    assert "<b>A</b>" not in html and "&lt;b&gt;A&lt;/b&gt;" in html
    assert "Test &lt;report&gt;" in html


def test_figures_saved_as_png_and_svg(rendered: tuple[Path, str]) -> None:
    path, _ = rendered
    figs = list((path.parent / "figures").glob("*"))
    assert {p.suffix for p in figs} >= {".png", ".svg"}


def test_dollar_signs_in_labels_are_drawn_literally(tmp_path: Path) -> None:
    """Issue 15 row 7: a group label with "$" was read as matplotlib mathtext: "$10k-$20k" drawn as "10k−20k",
    and "a $_$ b" killed the report stage with "error: _"."""
    import matplotlib.text

    from phonefair.report import figures as F

    sim = simulate("null", seed=1, dim=6)
    groups = sim.groups.replace({"A": "$10k-$20k", "B": "a $_$ b"})
    audit = Audit(sim.embeddings, groups, probes={"l2_grid": [0.01], "threads": 1},
                  analysis={"n_perm": 99, "n_boot": 20})
    path = audit.report(tmp_path, title="dollars")
    assert "$10k-$20k" in path.read_text()
    fig = F.accuracy_by_layer(audit.tables()["group_accuracy"])
    F.figure_to_base64(fig)  # drawn (tick labels are made at draw time)
    texts = [t for t in fig.findobj(matplotlib.text.Text) if "$" in t.get_text()]
    assert {t.get_text() for t in texts} >= {"$10k-$20k", "a $_$ b"}
    assert not any(t.get_parse_math() for t in texts)


def test_missing_tables_say_not_computed(tmp_path: Path) -> None:
    html = write_report(tmp_path, {}, {}, {}).read_text()
    assert "not computed" in html
