"""Baseline figures: one panel per group, the encoder curve on relative depth, the baseline at −0.15 with its gap,
the same colour for a group in both figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from phonefair.analysis.baseline import amplification
from phonefair.layers import relative_depth
from phonefair.report.baseline_figures import amplification_figure, gap_figure, group_colors


@pytest.fixture(scope="module")
def comparison() -> object:
    rng = np.random.default_rng(0)
    layers = ["cnn", "0", "1", "2", "3"]
    spk = [(f"{g}{i}", g, rng.normal(0, 0.03)) for g in ("x", "y", "z") for i in range(5)]
    enc = pd.DataFrame([{"layer": k, "speaker": s, "group": g,
                         "accuracy": 0.8 - (0.04 * j if g == "y" else 0) + u + rng.normal(0, 0.01)}
                        for j, k in enumerate(layers) for s, g, u in spk])
    base = pd.DataFrame([{"layer": k, "speaker": s, "group": g, "accuracy": 0.6 - (0.1 if g == "y" else 0) + u}
                         for k in ("logmel", "mfcc") for s, g, u in spk])
    return amplification(enc, base, baseline_layer="mfcc")


def _line_colour(ax: object) -> tuple[float, float, float]:
    return to_rgb(ax.get_lines()[0].get_color())  # type: ignore[attr-defined]


def test_gap_figure_draws_encoder_curve_and_baseline_point(comparison: object) -> None:
    gaps = comparison.tables()["gaps"]  # type: ignore[attr-defined]
    fig = gap_figure(gaps)
    assert isinstance(fig, Figure)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["x", "y", "z"]
    layers = ["cnn", "0", "1", "2", "3"]
    for ax, g in zip(axes, ["x", "y", "z"], strict=True):
        line = ax.get_lines()[0]
        np.testing.assert_allclose(line.get_xdata(), [relative_depth(k, layers) for k in layers])
        enc = gaps[(gaps["source"] == "encoder") & (gaps["group"] == g)].set_index("layer").loc[layers, "gap"]
        np.testing.assert_allclose(line.get_ydata(), enc.to_numpy(float))
        b = gaps[(gaps["source"] == "baseline") & (gaps["group"] == g) & (gaps["layer"] == "mfcc")].iloc[0]
        points = [ln for ln in ax.get_lines() if ln.get_marker() == "s"]
        assert len(points) == 1
        assert points[0].get_xdata()[0] == pytest.approx(-0.15)
        assert points[0].get_ydata()[0] == pytest.approx(b["gap"])
        assert _line_colour(ax) == to_rgb(group_colors(["x", "y", "z"])[g])
    assert "mfcc" in [t.get_text() for t in axes[0].get_xticklabels()]


def test_amplification_figure_shares_colours_and_marks_readings(comparison: object) -> None:
    t = comparison.tables()  # type: ignore[attr-defined]
    fa, fg = amplification_figure(t["amplification"]), gap_figure(t["gaps"])
    for a_ax, g_ax in zip(fa.axes, fg.axes, strict=True):
        assert a_ax.get_title() == g_ax.get_title()
        assert _line_colour(a_ax) == _line_colour(g_ax)
    amp = t["amplification"]
    y = amp[(amp["group"] == "y") & (amp["baseline_layer"] == "mfcc")].set_index("layer").loc[
        ["cnn", "0", "1", "2", "3"], "amplification"]
    np.testing.assert_allclose(fa.axes[1].get_lines()[0].get_ydata(), y.to_numpy(float))
    legend = fa.axes[0].get_legend()
    assert legend is not None and {x.get_text() for x in legend.get_texts()} <= set(amp["reading"])
    # another feature set can be drawn; colours can be given
    f2 = amplification_figure(amp, baseline_layer="logmel", colors={"x": "k", "y": "r", "z": "b"})
    assert _line_colour(f2.axes[1]) == to_rgb("r")


def test_figures_reject_tables_they_cannot_draw(comparison: object) -> None:
    t = comparison.tables()  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="lacks column"):
        gap_figure(t["gaps"].drop(columns="ci_low"))
    with pytest.raises(ValueError, match="'nope' is not"):
        amplification_figure(t["amplification"], baseline_layer="nope")
    with pytest.raises(ValueError, match="both sources"):
        gap_figure(t["gaps"][t["gaps"]["source"] == "encoder"])
