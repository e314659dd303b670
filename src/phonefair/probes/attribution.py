"""Which embedding dimensions and directions carry group identity, and what removing them does (docs/lenses.md).

Everything here reads the phone-centred cells of :mod:`phonefair.probes.identity` (one row per speaker x phone,
each centred on its phone's mean), standardised over cells (every dimension z-scored), so that a dimension's
importance is not its scale. Three views, each with a stability over speaker subsamples:

* ``dimension``: weight mass of a sparse (L1) multinomial logistic probe, ``sum_c |W_dc| / sum_dc |W_dc|``;
  stability = how often the dimension is in the subsample fit's top-k;
* ``pca``: the group effect size (eta squared: between-group share of the variance of the cells' scores) of each
  principal direction; stability = how often the direction is in the subsample's top-k by eta squared;
* ``lda``: the discriminant ratio (between- over within-group variance) of each linear-discriminant direction;
  stability = mean length of the direction's projection onto the subsample's discriminant subspace (1: always in it).

The controlled "remove the group direction" experiment projects the LDA directions (or, as a control, as many random
directions) out of the embeddings with :class:`~phonefair.store.ProjectedEmbeddings` and measures the phone-accuracy
gap between groups before and after on the same held-out speakers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
import torch

from phonefair.errors import ConfigError, RunError
from phonefair.rng import derive, derive_seed
from phonefair.stats import cluster_bootstrap_weights, percentile_ci
from phonefair.store.base import EmbeddingSource
from phonefair.store.projected import ProjectedEmbeddings, orthonormal_basis

__all__ = ["dimension_attribution", "eta_squared", "group_directions", "l1_logistic", "lda_directions",
           "phone_accuracy_by_speaker", "phone_gap_table", "projected_sources", "removal_rows", "speaker_subsamples"]


def speaker_subsamples(speaker_group: np.ndarray, n: int, fraction: float, seed: int) -> np.ndarray:
    """``[n, S]`` 0/1 membership of ``n`` subsamples drawing ``fraction`` of each group's speakers (at least 2)
    without replacement (subsampling, not the bootstrap: a duplicated speaker would look like a stable signal)."""
    rng = derive(seed, "attribution", "subsamples")
    out = np.zeros((n, len(speaker_group)))
    for r in range(n):
        for g in np.unique(speaker_group):
            idx = np.flatnonzero(speaker_group == g)
            m = min(len(idx), max(2, round(fraction * len(idx))))
            out[r, rng.choice(idx, size=m, replace=False)] = 1.0
    return out


# ------------------------------------------------------------------------------------------ sparse probe
def l1_logistic(z: np.ndarray, y: np.ndarray, weights: np.ndarray, alpha: float, n_classes: int, *,
                max_iter: int = 500, tol: float = 1e-4, device: str | torch.device = "cpu") -> np.ndarray:
    """L1-penalised multinomial logistic regression, one fit per row of ``weights`` (batched FISTA).

    Objective of fit ``r``: ``sum_i w_ri CE(y_i, z_i W + b) / sum_i w_ri + alpha * ||W||_1`` (intercept not
    penalised). Step ``1/L`` with ``L = 0.5 * lambda_max([z, 1]^T diag(w) [z, 1])``, a bound on the gradient's
    Lipschitz constant (the softmax Hessian is at most 1/2). Returns ``W [R, D, C]``. Runs in float64 (float32 on
    CUDA, where large layers make it worth the device) on ``device``.
    """
    dev = torch.device(device)
    dt = torch.float32 if dev.type == "cuda" else torch.float64
    zt = torch.as_tensor(np.asarray(z), dtype=dt, device=dev)
    N, D = zt.shape
    w = torch.as_tensor(np.asarray(weights), dtype=dt, device=dev)
    w = w / w.sum(1, keepdim=True)
    Y = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(y, dtype=np.int64), device=dev), n_classes).to(dt)
    z1 = torch.cat([zt, torch.ones(N, 1, dtype=dt, device=dev)], 1)
    lip = max(float(torch.linalg.eigvalsh((z1.T @ (wr[:, None] * z1)).double())[-1]) for wr in w) * 0.5
    step = 1.0 / max(lip, 1e-12)
    R = w.shape[0]
    W = torch.zeros(R, D, n_classes, dtype=dt, device=dev)
    b = torch.zeros(R, n_classes, dtype=dt, device=dev)
    Wy, by, t = W.clone(), b.clone(), 1.0
    for _ in range(max_iter):
        logits = torch.einsum("nd,rdc->rnc", zt, Wy) + by[:, None, :]
        p = (logits - logits.amax(-1, keepdim=True)).exp()  # softmax by hand: torch's is slow over a short axis
        p = p / p.sum(-1, keepdim=True)
        g = (p - Y) * w[:, :, None]
        W_new = Wy - step * torch.einsum("nd,rnc->rdc", zt, g)
        W_new = torch.sign(W_new) * (W_new.abs() - step * alpha).clamp_min(0.0)  # soft threshold
        b_new = by - step * g.sum(1)
        t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
        delta = float((W_new - W).abs().max())
        Wy = W_new + ((t - 1) / t_new) * (W_new - W)
        by = b_new + ((t - 1) / t_new) * (b_new - b)
        W, b, t = W_new, b_new, t_new
        if delta < tol:
            break
    return W.cpu().double().numpy()


def _alpha_max(z: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Smallest L1 strength at which the all-zero ``W`` is optimal (gradient at W = 0, optimal intercepts)."""
    Y = np.eye(n_classes)[y]
    return float(np.abs(z.T @ (Y - Y.mean(0)) / len(z)).max())


# ------------------------------------------------------------------------------------------ PCA and LDA
def eta_squared(scores: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Between-group share of the variance of each score column, per weighting: ``[R, J]`` from ``scores [N, J]``,
    labels ``y [N]`` and ``weights [R, N]`` (eta squared of a one-way ANOVA)."""
    out = np.empty((weights.shape[0], scores.shape[1]))
    for r, w in enumerate(weights):
        m = w > 0
        s, yy, ww = scores[m], y[m], w[m]
        mu = np.average(s, axis=0, weights=ww)
        total = np.average((s - mu) ** 2, axis=0, weights=ww)
        between = np.zeros(scores.shape[1])
        for g in np.unique(yy):
            gm = yy == g
            between += ww[gm].sum() / ww.sum() * (np.average(s[gm], axis=0, weights=ww[gm]) - mu) ** 2
        with np.errstate(invalid="ignore", divide="ignore"):
            out[r] = np.where(total > 0, between / total, 0.0)
    return out


def lda_directions(z: np.ndarray, y: np.ndarray, *, shrinkage: float, weights: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Fisher discriminant directions ``V [D, G - 1]`` (columns, unit length) and their discriminant ratios.

    Solves ``S_b v = lambda S_w' v`` with ``S_w' = (1 - shrinkage) S_w + shrinkage * tr(S_w) / D * I`` (shrinkage
    keeps it invertible when cells are few for the dimension). ``lambda_j`` is the between- over within-group
    variance of the scores along ``v_j``.
    """
    w = np.ones(len(z)) if weights is None else np.asarray(weights, dtype=float)
    m = w > 0
    z, y, w = z[m], y[m], w[m]
    D = z.shape[1]
    groups = np.unique(y)
    mu = np.average(z, axis=0, weights=w)
    sw = np.zeros((D, D))
    sb = np.zeros((D, D))
    for g in groups:
        gm = y == g
        mg = np.average(z[gm], axis=0, weights=w[gm])
        zc = z[gm] - mg
        sw += (zc * w[gm][:, None]).T @ zc
        d = (mg - mu)[:, None]
        sb += w[gm].sum() * (d @ d.T)
    sw /= w.sum()
    sb /= w.sum()
    sw = (1 - shrinkage) * sw + shrinkage * np.trace(sw) / D * np.eye(D)
    sw += 1e-10 * max(1.0, np.trace(sw) / D) * np.eye(D)
    ev, vec = scipy.linalg.eigh(sb, sw)
    order = np.argsort(ev)[::-1][:max(1, len(groups) - 1)]
    v = vec[:, order]
    v /= np.linalg.norm(v, axis=0, keepdims=True)
    return v, ev[order].clip(min=0.0)


def group_directions(z: np.ndarray, y: np.ndarray, *, shrinkage: float) -> np.ndarray:
    """The LDA directions of the cells ``z`` (standardised over cells first) in the raw embedding space
    ``[D, G - 1]``, most discriminant first: a discriminant score ``v . zs = (v / sd) . x + const``, so ``v / sd``."""
    sd = z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    v, _ = lda_directions((z - z.mean(0)) / sd, y, shrinkage=shrinkage)
    return v / sd[:, None]


# ----------------------------------------------------------------------------------------- one layer
def dimension_attribution(z: np.ndarray, y: np.ndarray, cell_speaker: np.ndarray, subsamples: np.ndarray, *,
                          layer: str, top_k: int, l1: float, lda_shrinkage: float,
                          device: str | torch.device = "cpu") -> tuple[list[dict[str, Any]], np.ndarray]:
    """Rows of ``group_dimensions`` for one layer and the LDA directions in the raw embedding space ``[D, G - 1]``.

    ``z [N, D]``: phone-centred cells; ``y``: the cell's (true) group; ``subsamples [R, S]``: speaker subsamples
    (:func:`speaker_subsamples`), shared by every layer so stability differences are not sampling differences.
    """
    N, D = z.shape
    G = int(y.max()) + 1
    k = min(top_k, D)
    mean, sd = z.mean(0), z.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    zs = (z - mean) / sd
    cw = subsamples[:, cell_speaker]  # [R, N] cell weights
    rows: list[dict[str, Any]] = []

    def emit(kind: str, measure: str, importance: np.ndarray, stability: np.ndarray, overlap: float,
             variance: np.ndarray | None = None, set_size: int = k) -> None:
        order = np.argsort(-importance, kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(1, len(order) + 1)
        for j in range(len(importance)):
            rows.append({"layer": layer, "kind": kind, "index": j, "measure": measure,
                         "importance": float(importance[j]), "stability": float(stability[j]),
                         "rank": int(rank[j]), "top_k": set_size, "topk_overlap": overlap,
                         "variance_fraction": float(variance[j]) if variance is not None else float("nan")})

    def in_top(values: np.ndarray) -> tuple[np.ndarray, float]:
        """[R, J] -> how often each column is among a row's k largest non-zero values, and the mean pairwise
        Jaccard overlap of the rows' top-k sets."""
        sets = []
        for v in values:
            top = np.argsort(-v, kind="stable")[:k]
            sets.append(set(top[v[top] > 0].tolist()))
        hit = np.zeros(values.shape[1])
        for st in sets:
            hit[list(st)] += 1
        pairs = [len(a & b) / len(a | b) for i, a in enumerate(sets) for b in sets[i + 1:] if a | b]
        return hit / len(values), float(np.mean(pairs)) if pairs else float("nan")

    # sparse probe: weight mass per dimension, averaged over subsamples
    alpha = l1 * _alpha_max(zs, y, G)
    W = l1_logistic(zs, y, cw, alpha, G, device=device)
    mass = np.abs(W).sum(2)  # [R, D]
    tot = mass.sum(1, keepdims=True)
    frac = np.divide(mass, tot, out=np.zeros_like(mass), where=tot > 0)
    emit("dimension", "l1_weight_mass", frac.mean(0), *in_top(frac))

    # principal directions (label-free, fixed): group effect size of each
    cov = zs.T @ zs / N
    ev, vec = np.linalg.eigh(cov)
    ev, vec = ev[::-1].clip(min=0.0), vec[:, ::-1]
    scores = zs @ vec
    full = eta_squared(scores, y, np.ones((1, N)))[0]
    emit("pca", "eta_squared", full, *in_top(eta_squared(scores, y, cw)), ev / max(ev.sum(), 1e-12))

    # discriminant directions: ratio on all speakers; stability against each subsample's discriminant subspace
    v, ratio = lda_directions(zs, y, shrinkage=lda_shrinkage)
    bases = [orthonormal_basis(lda_directions(zs, y, shrinkage=lda_shrinkage, weights=w)[0]) for w in cw]
    stab = np.mean([np.linalg.norm(q.T @ v, axis=0) for q in bases], axis=0)
    # subspace overlap of two subsamples: mean squared cosine of their principal angles
    pairs = [float(np.linalg.norm(a.T @ b) ** 2 / max(1, min(a.shape[1], b.shape[1])))
             for i, a in enumerate(bases) for b in bases[i + 1:]]
    emit("lda", "discriminant_ratio", ratio, stab, float(np.mean(pairs)) if pairs else float("nan"),
         set_size=v.shape[1])
    return rows, v / sd[:, None]  # raw-space directions, as group_directions


# --------------------------------------------------------------------------------- the phone-accuracy gap
def phone_accuracy_by_speaker(source: EmbeddingSource, groups: pd.Series, *, layers: Sequence[str], seed: int,
                              exclude_phones: Sequence[str], l2: float, device: str = "cpu") -> pd.DataFrame:
    """Held-out phone accuracy per speaker: ``layer, speaker, group, n_correct, n_tokens``.

    The audit's own cross-fitted all-speaker probe (:func:`phonefair.probes.fit_probes`, one L2 strength): every
    speaker is tested once by probes that never saw it, and the seeded folds make two calls on sources with the
    same tokens test the same speakers with the same folds.
    """
    from phonefair.audit.design import Design
    from phonefair.probes.fit import fit_probes
    from phonefair.settings import ProbeSettings

    design = Design.build(source, groups, min_speakers=2, exclude_phones=tuple(exclude_phones), seed=seed)
    res = fit_probes(source, design, ProbeSettings(populations=(), l2_grid=(l2,), layers=tuple(layers),
                                                   exclude_phones=tuple(exclude_phones), device=device), seed=seed)
    sa = res["speaker_accuracy"]
    n = sa["n_tokens"].astype(float)
    return pd.DataFrame({"layer": sa["layer"].astype(str).to_numpy(), "speaker": sa["speaker"].astype(str).to_numpy(),
                         "group": sa["group"].astype(str).to_numpy(),
                         "n_correct": (sa["accuracy"].astype(float) * n).round().to_numpy(),
                         "n_tokens": n.to_numpy()})


def _group_accuracy_reps(per_speaker: pd.DataFrame, speakers: np.ndarray, weights: np.ndarray,
                         groups: Sequence[str]) -> np.ndarray:
    """Token-weighted accuracy per group under every weighting: ``[G, R]`` (``weights [R, S]`` over ``speakers``)."""
    d = per_speaker.set_index("speaker").reindex(speakers)
    c, n, g = d["n_correct"].to_numpy(float), d["n_tokens"].to_numpy(float), d["group"].astype(str).to_numpy()
    out = np.empty((len(groups), weights.shape[0]))
    for i, grp in enumerate(groups):
        m = g == grp
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i] = (weights[:, m] @ c[m]) / (weights[:, m] @ n[m])
    return out


def _speaker_weights(per_speaker: pd.DataFrame, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Speakers (sorted) and ``[1 + n_boot, S]`` weights: row 0 the sample, then a bootstrap within groups."""
    spk = per_speaker.drop_duplicates("speaker").sort_values(["group", "speaker"])
    speakers, w = cluster_bootstrap_weights(spk["speaker"].to_numpy(), n_boot,
                                            seed=derive_seed(seed, "identity", "gap_bootstrap"),
                                            strata=spk["group"].to_numpy())
    return speakers, np.vstack([np.ones((1, len(speakers))), w])


def phone_gap_table(per_speaker: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95,
                    seed: int = 0) -> pd.DataFrame:
    """Per layer and group: ``gap`` = phone accuracy of the *other* groups' held-out speakers minus the group's own
    (token-weighted; positive = the group is served worse), with a speaker-bootstrap CI.

    ``per_speaker``: ``layer, speaker, group`` and either ``n_correct, n_tokens`` (:func:`phone_accuracy_by_speaker`)
    or ``accuracy, n_tokens`` (the audit's ``speaker_accuracy`` table). This is the gap table the identity figures
    overlay (:func:`phonefair.report.identity_figures.identity_by_depth`).
    """
    ps = per_speaker.copy()
    if "n_correct" not in ps.columns:
        if not {"accuracy", "n_tokens"} <= set(ps.columns):
            raise ConfigError("phone_gap_table needs columns layer, speaker, group and n_correct or accuracy, "
                              f"n_tokens; got {list(ps.columns)}")
        ps["n_correct"] = ps["accuracy"].astype(float) * ps["n_tokens"].astype(float)
    ps["speaker"], ps["group"], ps["layer"] = ps["speaker"].astype(str), ps["group"].astype(str), ps["layer"].astype(str)
    rows = []
    for layer, d in ps.groupby("layer", sort=False):
        speakers, w = _speaker_weights(d, n_boot, seed)
        grp = d.drop_duplicates("speaker").set_index("speaker").reindex(speakers)["group"].to_numpy()
        dd = d.set_index("speaker").reindex(speakers)
        c, n = dd["n_correct"].to_numpy(float), dd["n_tokens"].to_numpy(float)
        for g in sorted(np.unique(grp)):
            m = grp == g
            with np.errstate(invalid="ignore", divide="ignore"):
                gap = (w[:, ~m] @ c[~m]) / (w[:, ~m] @ n[~m]) - (w[:, m] @ c[m]) / (w[:, m] @ n[m])
            lo, hi = percentile_ci(gap[1:], level)
            rows.append({"layer": layer, "group": g, "gap": float(gap[0]), "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows, columns=["layer", "group", "gap", "ci_low", "ci_high"])


def removal_rows(before: pd.DataFrame, after: dict[str, pd.DataFrame], *, layer: str, k_removed: int,
                 n_boot: int, level: float, seed: int, control: str = "random") -> list[dict[str, Any]]:
    """``direction_removal`` rows of one layer: best-minus-worst phone-accuracy gap before and after each removal
    (``after``: directions label -> per-speaker table), the change, and for every non-control row the change minus
    the control's change (``change_vs_control``).

    Best and worst groups are fixed at their *before* identities; every gap is computed under the same speaker
    bootstrap weights (the same held-out speakers are tested in every fit), so changes and their differences are
    paired. The CIs reflect which speakers were tested, not the retraining of the probe on changed embeddings.
    """
    b = before[before["layer"] == layer]
    speakers, w = _speaker_weights(b, n_boot, seed)
    groups = sorted(b["group"].unique().tolist())
    acc_b = _group_accuracy_reps(b, speakers, w, groups)
    best, worst = int(np.nanargmax(acc_b[:, 0])), int(np.nanargmin(acc_b[:, 0]))
    gap_b = acc_b[best] - acc_b[worst]
    changes: dict[str, np.ndarray] = {}
    rows = []
    for label, table in after.items():
        a = table[table["layer"] == layer]
        if set(b["speaker"]) != set(a["speaker"]):
            raise RunError(f"direction removal, layer {layer!r}: the phone probe tested different speakers before "
                           f"and after removing {label} directions; the split must not depend on the embeddings")
        acc_a = _group_accuracy_reps(a, speakers, w, groups)
        gap_a = acc_a[best] - acc_a[worst]
        changes[label] = gap_a - gap_b
        lo, hi = percentile_ci(changes[label][1:], level)
        rows.append({"layer": layer, "directions": label, "k_removed": int(k_removed), "best_group": groups[best],
                     "worst_group": groups[worst], "gap_before": float(gap_b[0]), "gap_after": float(gap_a[0]),
                     "change": float(changes[label][0]), "ci_low": float(lo), "ci_high": float(hi),
                     "accuracy_before": _overall(b), "accuracy_after": _overall(a)})
    for row in rows:
        if row["directions"] != control and control in changes:
            d = changes[row["directions"]] - changes[control]
            lo, hi = percentile_ci(d[1:], level)
            row.update({"change_vs_control": float(d[0]), "control_ci_low": float(lo), "control_ci_high": float(hi)})
    return rows


def _overall(per_speaker: pd.DataFrame) -> float:
    return float(per_speaker["n_correct"].sum() / max(1.0, per_speaker["n_tokens"].sum()))


def projected_sources(source: EmbeddingSource, directions: dict[str, np.ndarray], k: int, seed: int
                      ) -> tuple[ProjectedEmbeddings, ProjectedEmbeddings]:
    """The source with the first ``k`` group (LDA) directions of each layer removed, and its control: ``k`` random
    directions (Gaussian, seeded per layer) orthogonal to *all* the layer's group directions removed instead, so the
    control takes away as many dimensions but no group-discriminant one."""
    lda = {layer: d[:, :k] for layer, d in directions.items()}
    control = {}
    for layer, d in directions.items():
        q = orthonormal_basis(d)
        r = derive(seed, "identity", "random_directions", layer, k).normal(size=(d.shape[0], k))
        control[layer] = r - q @ (q.T @ r)
    return (ProjectedEmbeddings(source, lda, label=f"lda_{k}"),
            ProjectedEmbeddings(source, control, label=f"random_orthogonal_{k}"))
