"""The identity-lens figure draws the three curves on relative depth, with chance levels, CIs and a compare state."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from phonefair.layers import relative_depth
from phonefair.report.identity_figures import identity_by_depth, identity_by_depth_grid


def _tables(layers: list[str], shift: float = 0.0) -> dict[str, pd.DataFrame]:
    n = len(layers)
    acc = np.linspace(0.3, 0.8, n) + shift
    gi = pd.DataFrame({"layer": layers, "phone": "*", "balanced_accuracy": acc, "ci_low": acc - 0.05,
                       "ci_high": acc + 0.05, "chance": 0.25})
    gi = pd.concat([gi, gi.assign(phone="aa", balanced_accuracy=0.9)], ignore_index=True)  # per-phone rows ignored
    si = pd.DataFrame({"layer": layers * 2, "group": ["*"] * n + ["A"] * n, "accuracy": np.r_[acc[::-1], acc],
                       "ci_low": 0.1, "ci_high": 0.9, "chance": 1 / 48})
    gap = pd.DataFrame({"layer": layers * 2, "group": ["A"] * n + ["B"] * n, "gap": np.r_[acc, -acc] / 10,
                        "ci_low": -0.1, "ci_high": 0.1})
    return {"group_identity": gi, "speaker_identity": si, "phone_gap": gap}


def test_curves_on_relative_depth_with_chance_and_gap_axis():
    layers = ["0", "1", "2", "3", "4"]
    t = _tables(layers)
    fig = identity_by_depth(t["group_identity"], t["speaker_identity"], t["phone_gap"], title="enc")
    assert fig is not None
    ax, gap_ax = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    gid = lines["group identity (balanced acc.)"]
    assert list(gid.get_xdata()) == [relative_depth(x, layers) for x in layers]  # 0, .25, ..., 1
    np.testing.assert_allclose(gid.get_ydata(), np.linspace(0.3, 0.8, 5))  # the pooled rows only
    np.testing.assert_allclose(lines["chance (group identity)"].get_ydata(), 0.25)
    np.testing.assert_allclose(lines["chance (speaker identity)"].get_ydata(), 1 / 48)
    np.testing.assert_allclose(lines["speaker identity (acc.)"].get_ydata(), np.linspace(0.8, 0.3, 5))
    assert {line.get_label() for line in gap_ax.get_lines()} >= {"gap: A", "gap: B"}
    assert ax.get_title() == "enc"
    plt.close(fig)


def test_compare_state_is_dashed_and_grid_has_one_panel_per_encoder():
    t, t2 = _tables(["0", "1", "2"]), _tables(["0", "1", "2"], shift=-0.1)
    fig = identity_by_depth(t["group_identity"], t["speaker_identity"], None, compare=t2,
                            labels=("pretrained", "fine-tuned"))
    assert fig is not None
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"]
    assert {ln.get_label() for ln in dashed} >= {"group identity (balanced acc.) (fine-tuned)"}
    plt.close(fig)
    grid = identity_by_depth_grid({"a": _tables(["0", "1", "2", "3"]), "b": _tables(["0", "1"]),
                                   "empty": {"group_identity": pd.DataFrame()}})
    assert grid is not None
    assert [ax.get_title() for ax in grid.axes if ax.get_title()] == ["a", "b"]
    plt.close(grid)


@pytest.mark.parametrize("empty", [None, pd.DataFrame(), pd.DataFrame({"layer": ["0"], "phone": ["aa"],
                                                                       "balanced_accuracy": [0.5]})])
def test_nothing_to_draw_gives_none(empty):
    assert identity_by_depth(empty, None, None) is None
