"""The report's "How to read this report" box: every verdict and quantity with its sign and unit, the layer names
of the audited encoders, the error control of each kind of result, and the chance levels. The vocabulary is the one
of :mod:`phonefair.analysis.verdict` and :mod:`phonefair.analysis.baseline` (docs/report.md has the same text)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from phonefair.layers import describe_layer, layer_order
from phonefair.report.fmt import e, html_table, pct

__all__ = ["QUANTITIES", "READING_MEANINGS", "VERDICT_MEANINGS", "howto_section"]

VERDICT_MEANINGS: dict[str, str] = {
    "not served worse": "no other group is significantly more accurate on this group's speakers at any layer "
                        "(family-wise). The MDE says how large a gap could have gone unnoticed.",
    "served worse: systematic": "served worse, and its phone embeddings are shifted against the groups it is "
                                "served worse than (shift test significant, spread test not).",
    "served worse: random": "served worse, and its speakers' phone embeddings are more scattered (spread test "
                            "significant, shift test not).",
    "served worse: systematic and random": "both; the systematic share says which dominates.",
    "served worse: unexplained": "served worse, but neither a shift nor a larger spread is detected.",
    "representational difference": "a group NOT served worse whose embeddings are shifted or more variable: it "
                                   "costs no measured accuracy, so it is not a disadvantage.",
}
READING_MEANINGS: dict[str, str] = {
    "amplified": "the acoustic baseline already has the gap; the encoder makes it larger",
    "inherited": "the baseline has the gap; the encoder passes it on (no detectable change)",
    "reduced": "the baseline has the gap; the encoder makes it smaller (or reverses it)",
    "created": "no detectable gap in the baseline; the encoder has one",
    "unclear": "the encoder has a gap; whether the signal has it is unresolved",
    "absent": "no detectable gap in either",
    "insufficient": "an interval could not be computed (fewer than 2 speakers)",
}
#: (quantity, definition, unit, sign)
QUANTITIES: list[tuple[str, str, str, str]] = [
    ("accuracy",
     ("a linear phone probe's accuracy on a speaker's tokens, cross-fitted (probes never see the speakers they are "
      "tested on), phone frequencies standardised to the corpus's; a group's accuracy is the mean over its speakers"),
     "%", "0–100; chance = majority class"),
    ("gap",
     ("A_ref − A_g: the reference group's accuracy (or, without a reference, the mean of the other groups') minus "
      "the group's"),
     "percentage points (pp)", "+ = served worse; − = served better"),
    ("served worse than",
     ("for each group this one is significantly worse than: that group's accuracy minus this one's, at the verdict "
      "layer (the pairwise numbers behind the verdict; the gap to the mean of the others can be small when a group "
      "is worse than one group only)"),
     "pp", "+ = the other group is served better"),
    ("MDE (minimum detectable effect)",
     ("(c_α + z₀.₈) × SE(gap): the gap the served-worse test would detect with 80 % power at the family-wise level; "
      "given for groups not served worse"),
     "pp", "≥ 0"),
    ("systematic excess",
     ("squared distance between the group's phone means and the comparison groups' (summed over embedding "
      "dimensions, averaged over phones); an unbiased U-statistic"),
     "squared embedding units", "can be < 0 when the true value is near 0"),
    ("random excess",
     ("how much farther (expected squared distance) a token lies from its own group's phone mean than the "
      "comparison groups' tokens from theirs: D × (between- + within-speaker variance difference)"),
     "squared embedding units (same as above)", "< 0 = the group is less scattered"),
    ("systematic share",
     ("sys⁺ / (sys⁺ + rand⁺), x⁺ = max(x, 0): which kind of error makes the group's tokens farther from where the "
      "others' are"),
     "%", "0 = all random, 100 = all systematic"),
    ("in-group benefit",
     "accuracy on a group of a probe trained on that group only minus a probe trained on everyone, both size-matched",
     "pp", "+ = the group's own probe reads it better (sign of a shift)"),
    ("amplification", "the encoder's gap minus the acoustic baseline's gap on the same speakers", "pp",
     "+ = the encoder widens the gap"),
    ("group identity", "balanced accuracy of a probe that predicts a phone token's speaker group", "%",
     "chance = 100 / number of groups"),
    ("speaker identity", "accuracy of a closed-set speaker probe on held-out recordings", "%",
     "chance = 100 / number of speakers"),
    ("normalised variance, ρ, rank agreement",
     ("a speaker's phone-token scatter around its own phone means relative to the phone's typical scatter; "
      "Spearman ρ with accuracy over speakers; Kendall τ between the group rankings by variance and by error"),
     "ratio; −1…1", "ρ < 0 = noisier speakers are less accurate"),
    ("PER (fine-tuning)", "phone error rate: (substitutions + deletions + insertions) / reference phones", "%",
     "can exceed 100 % (more edits than phones)"),
]


def _layer_summary(layers: list[str]) -> str:
    """``cnn, 0–12, 12_norm`` for a list of layer names."""
    order = layer_order(layers)
    nums = [int(x) for x in order if x.isdigit()]
    pre = [x for x in order if x == "cnn"]
    post = [x for x in order if not x.isdigit() and x != "cnn"]
    run = len(nums) > 2 and nums == list(range(nums[0], nums[-1] + 1))
    mid = [f"{nums[0]}–{nums[-1]}"] if run else [str(n) for n in nums]
    return ", ".join(pre + mid + post)


def _layers_html(tables: Mapping[str, pd.DataFrame], encoders: list[str], baseline: str | None) -> str:
    ga = tables.get("group_accuracy")
    if ga is None or ga.empty:
        return ""
    rows = []
    kinds: dict[str, str] = {}
    for enc in encoders:
        d = ga[ga["encoder"].astype(str) == enc] if "encoder" in ga.columns else ga
        layers = layer_order(d["layer"].astype(str).unique())
        if not layers:
            continue
        rows.append([e(enc) + (" (acoustic baseline)" if enc == baseline else ""), e(_layer_summary(layers))])
        for x in layers:
            key = "1…L" if x.isdigit() and x != "0" else ("L_norm" if x.endswith("_norm") else x)
            kinds.setdefault(key, "hidden state i: output of transformer layer i" if key == "1…L" else
                             "output of the last transformer layer after the encoder's final LayerNorm "
                             "(stable-layer-norm models)" if key == "L_norm" else describe_layer(x))
    meaning = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in kinds.items())
    return (html_table(["encoder", "layers"], rows) + f"<ul class='small'>{meaning}</ul><p class='small'>Curves of "
            "several encoders share the axis <i>relative depth</i> = i / L (0 = hidden state 0, 1 = the last layer; "
            "cnn half a step before 0, L_norm at 1); the acoustic baseline's feature sets sit at “layer −1”, left of "
            "every encoder.</p>")


def howto_section(summary: Mapping[str, Any], tables: Mapping[str, pd.DataFrame], encoders: list[str],
                  baseline: str | None, level: float, alpha: float, fdr_alpha: float) -> str:
    """The box (HTML)."""
    verdicts = html_table(["verdict", "meaning"],
                          [[f"<b>{e(k)}</b>", e(v)] for k, v in VERDICT_MEANINGS.items()])
    quantities = html_table(["quantity", "definition", "unit", "sign / range"],
                            [[f"<b>{e(q)}</b>", e(d), e(u), e(s)] for q, d, u, s in QUANTITIES])
    readings = "; ".join(f"<b>{e(k)}</b>: {e(v)}" for k, v in READING_MEANINGS.items())
    chance = ", ".join(f"{e(n)} {pct(s['chance_accuracy'])} %" for n, s in (summary.get("encoders") or {}).items()
                       if s.get("chance_accuracy") is not None)
    lv = f"{100 * level:.0f} %"
    return f"""<div class="box">
<p>Two questions, in this order. <b>Served worse?</b> Is the phone probe significantly less accurate on this group's
speakers than on another group's, at some layer? <b>Why?</b> For a group served worse: are its phone embeddings
shifted (systematic error), more scattered (random error), both, or neither? Speakers are the unit of every interval
and test (their tokens are not independent).</p>
<dl>
<dt>Verdicts</dt><dd><div class="scroll">{verdicts}</div></dd>
<dt>Quantities, units and signs</dt><dd><div class="scroll">{quantities}</div>
All intervals are {lv} intervals over speakers (t / Welch intervals for accuracies and gaps, speaker bootstrap for
distances and shares, paired for before/after changes).</dd>
<dt>Why can an estimate be negative?</dt><dd>The squared shift and the excess spread are <i>unbiased</i>
estimates: a speaker's own noise is never counted as a difference between groups. The price is that, when the true
value is zero or small, the estimate scatters around it and comes out below zero about half of the time. A negative
squared shift means "no evidence of a shift", not an error; the systematic share counts a negative part as 0, and
the figures draw negative estimates where they are, left of the zero line.</dd>
<dt>Layer names</dt><dd>{_layers_html(tables, encoders, baseline)}
The <i>headline layer</i> of an encoder is its most accurate layer (chosen without group labels, so the tests
there stay exact).</dd>
<dt>Error control</dt><dd><b>Verdicts</b> control the family-wise error rate at α = {alpha}: "served worse" by a
step-down max-T permutation test over every pair of groups × every layer; the mechanism by permutation tests
combined over layers and spaces (min-p), Holm-adjusted over every mechanism claim (each group's systematic and
random). Under "no difference" the chance of any false
"served worse" in the whole report is α. <b>Descriptive tables</b> (phones, per-layer shift and spread tests,
in-group benefit) control the false discovery rate at {fdr_alpha} (Benjamini–Hochberg, q-values): among the rows
marked significant, about {100 * fdr_alpha:.0f} % may be false. Intervals are per row, not adjusted.</dd>
<dt>Chance level</dt><dd>The majority-class accuracy (always predicting the most frequent phone):
{chance or "not recorded"}. Accuracy near it means the layer carries little phone information, and gaps there say
little.</dd>
<dt>Acoustic-baseline readings</dt><dd>{readings}.</dd>
</dl></div>"""
