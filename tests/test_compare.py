"""Before / after inside the audit: paired speaker-level changes, verdict transitions."""

from __future__ import annotations

import numpy as np

from phonefair.audit import Audit
from phonefair.audit.compare import compare_audits
from phonefair.store import Embeddings
from phonefair.synth.simulate import PRESETS, simulate


def test_paired_change_of_a_degraded_group_and_verdict_transition() -> None:
    sc = PRESETS["null"]
    for g in "ABC":
        sc = sc.with_group(g, n_speakers=10, speaker_sd=0.8)
    sim = simulate(sc, seed=3, dim=10)
    x = sim.embeddings.read("0")
    rng = np.random.default_rng(0)
    is_c = (sim.tokens["group"] == "C").to_numpy()
    after = x + np.where(is_c[:, None], rng.normal(0, 1.5, x.shape), 0.0)  # "fine-tuning" made C noisier
    audit = Audit({"before": sim.embeddings, "after": Embeddings(sim.tokens, {"0": after})}, sim.groups,
                  probes={"l2_grid": [0.01], "threads": 1}, analysis={"n_perm": 499, "n_boot": 50})
    out = compare_audits(audit, "before", ["after"])
    acc = out["change_accuracy"].set_index("group")
    assert acc.loc["C", "change"] < 0 and acc.loc["C", "ci_high"] < 0
    assert acc.loc["A", "ci_low"] < 0.02  # unaffected groups change little
    gap = out["change_gap"].set_index("group")
    assert gap.loc["C", "ci_low"] > 0  # C's gap to the others grew
    tr = out["verdict_transitions"].set_index("group")
    assert tr.loc["C", "verdict_before"] == "not served worse"
    assert tr.loc["C", "verdict_after"].startswith("served worse") and tr.loc["C", "changed"]
    var = out["change_variance"]
    assert (var[(var["group"] == "C")]["change"] > 0).all()
