"""One streaming pass over a layer → per-(speaker, phone) sufficient statistics.

Everything the typology computes (shifts, variance components, permutations, bootstraps) is a function of, per
speaker ``s`` and phone ``p``: the token count ``n_sp``, the mean vector ``x̄_sp`` and the within-cell sum of squares
``SS_sp = Σ_t ||x_t − x̄_sp||²``. They are accumulated chunk by chunk, so a layer of a million tokens never has to be
in memory at once; memory is ``O(speakers × phones × dim)``.

Numerics: the tokens are centred by a per-phone constant before accumulation (every statistic used later is
within-phone, hence invariant to it); that keeps ``Σ||x||² − ||Σx||²/n`` free of catastrophic cancellation when
embeddings have a large common offset (common in transformer layers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from phonefair.store.base import EmbeddingSource


@dataclass
class SpaceStats:
    """Per-(speaker, phone) sufficient statistics in one space (raw or a projection)."""

    mean: np.ndarray  # [S, P, D] float64, 0 where count == 0
    count: np.ndarray  # [S, P] int64
    ss: np.ndarray  # [S, P] float64, within-cell sum of squares summed over dims

    @property
    def dim(self) -> int:
        return int(self.mean.shape[2])

    @property
    def has(self) -> np.ndarray:
        return (self.count > 0).astype(np.float64)

    @property
    def sq(self) -> np.ndarray:
        """Squared norms of the speaker-phone means."""
        return np.einsum("spd,spd->sp", self.mean, self.mean)

    @property
    def dof(self) -> np.ndarray:
        return np.maximum(self.count - 1, 0).astype(np.float64)

    @property
    def inv_n(self) -> np.ndarray:
        c = self.count.astype(np.float64)
        return np.divide(1.0, c, out=np.zeros_like(c), where=c > 0)


@dataclass
class LDAProjection:
    """Whitened LDA: ``y = (x − centre[phone]) @ W`` with ``Wᵀ Σ_within,reg W = I``."""

    W: np.ndarray  # [D, k] float32
    eigenvalues: np.ndarray  # [k] between/within ratios of the kept directions
    n_tokens: int
    n_speakers: int
    shrinkage: float
    fitted_on: str  # "train split" | "all speakers"


def fit_lda(X: np.ndarray, phone_idx: np.ndarray, n_phones: int, *, shrinkage: float,
            n_components: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit a whitened LDA projection on tokens ``X`` (already phone-centred or not) with labels ``phone_idx``.

    The within-class covariance is shrunk towards a scaled identity, ``(1−γ) Σ_w + γ tr(Σ_w)/D · I``, because with
    768 dims and few tokens per phone the plain estimate is singular. Returns ``(W [D,k], eigenvalues [k])``.
    """
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"lda_shrinkage must be in [0, 1], got {shrinkage}")
    n, D = X.shape
    present = np.unique(phone_idx)
    if len(present) < 2:
        raise ValueError(f"LDA needs at least 2 phones among the fitting tokens, got {len(present)}")
    counts = np.bincount(phone_idx, minlength=n_phones).astype(np.float64)
    agg = sp.csr_matrix((np.ones(n, dtype=np.float32), (phone_idx, np.arange(n))), shape=(n_phones, n))
    sums = np.asarray(agg @ X, dtype=np.float64)
    means = np.divide(sums, counts[:, None], out=np.zeros_like(sums), where=counts[:, None] > 0)
    Xc = X - means[phone_idx].astype(X.dtype)
    Sw = (Xc.T @ Xc).astype(np.float64) / max(n - len(present), 1)
    grand = sums.sum(0) / n
    dm = (means[present] - grand) * np.sqrt(counts[present] / n)[:, None]  # Sb = dmᵀ dm, rank <= P − 1
    Sw_reg = (1 - shrinkage) * Sw + shrinkage * (np.trace(Sw) / D) * np.eye(D)
    lam, V = np.linalg.eigh(Sw_reg)
    lam = np.maximum(lam, 1e-12 * max(lam.max(), 1e-300))
    Wh = V / np.sqrt(lam)
    # eigenvectors of Whᵀ Sb Wh = (dm Wh)ᵀ (dm Wh) from a small SVD instead of a D × D eigendecomposition
    _, sv, Vt = np.linalg.svd(dm @ Wh, full_matrices=False)
    k = min(len(present) - 1, D) if n_components is None else min(n_components, len(present) - 1, D)
    return (Wh @ Vt[:k].T).astype(np.float32), sv[:k] ** 2


@dataclass
class LayerStats:
    """Result of :func:`accumulate_layer`: statistics per space, optionally the projected tokens."""

    spaces: dict[str, SpaceStats]
    token_cells: np.ndarray | None = None  # [n] cell id (s * P + p) of each kept token, if tokens were kept
    token_proj: np.ndarray | None = None  # [n, k] float32 LDA-projected tokens, if kept
    nonfinite_rows: np.ndarray | None = None  # source rows skipped because they hold NaN/inf (unembeddable)


def accumulate_layer(source: EmbeddingSource, layer: str, rows: np.ndarray, spk_idx: np.ndarray,
                     phone_idx: np.ndarray, n_speakers: int, n_phones: int, *, centre: np.ndarray,
                     projections: dict[str, np.ndarray | None], chunk_rows: int = 32768,
                     keep_tokens: str | None = None) -> LayerStats:
    """Stream ``rows`` of ``layer`` in chunks and accumulate per-(speaker, phone) statistics for every space.

    ``projections`` maps a space name to a ``[D, k]`` matrix, or ``None`` for the raw space. ``centre`` is a
    ``[P, D]`` per-phone offset subtracted first (numerical conditioning only). ``keep_tokens`` names a projected
    space whose token vectors are kept (small: ``k`` dims) for the nearest-class-mean fallback accuracy.
    """
    n_cells = n_speakers * n_phones
    cells = spk_idx.astype(np.int64) * n_phones + phone_idx
    acc: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    counts = np.zeros(n_cells, dtype=np.int64)
    kept: list[np.ndarray] = []
    kept_cells: list[np.ndarray] = []
    bad: list[np.ndarray] = []
    centre32 = centre.astype(np.float32)
    for a in range(0, len(rows), chunk_rows):
        r = rows[a:a + chunk_rows]
        c = cells[a:a + chunk_rows]
        pi = phone_idx[a:a + chunk_rows]
        X = np.asarray(source.read(layer, r), dtype=np.float32)
        if X.shape[0] != len(r):
            raise ValueError(f"layer {layer!r}: source.read returned {X.shape[0]} rows for {len(r)} requested")
        finite = np.isfinite(X).all(1)
        if not finite.all():  # e.g. rows of utterances the extraction could not embed (NaN): skipped, reported
            bad.append(r[~finite])
            X, r, c, pi = X[finite], r[finite], c[finite], pi[finite]
        counts += np.bincount(c, minlength=n_cells)
        X -= centre32[pi]
        u, inv = np.unique(c, return_inverse=True)
        agg = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (inv, np.arange(len(r)))), shape=(len(u), len(r)))
        for name, W in projections.items():
            Y = X if W is None else X @ W
            if name not in acc:
                acc[name] = (np.zeros((n_cells, Y.shape[1])), np.zeros(n_cells))
            sums, sumsq = acc[name]
            sums[u] += agg @ Y
            sumsq[u] += np.bincount(inv, weights=np.einsum("ij,ij->i", Y, Y).astype(np.float64), minlength=len(u))
            if name == keep_tokens:
                kept.append(Y.astype(np.float32, copy=True))
                kept_cells.append(c)
    out: dict[str, SpaceStats] = {}
    cnt = counts.astype(np.float64)
    for name in list(acc):
        sums, sumsq = acc.pop(name)  # free as we go: peak memory is one space's sums at a time
        mean = np.divide(sums, cnt[:, None], out=np.zeros_like(sums), where=cnt[:, None] > 0)
        ss = np.maximum(sumsq - np.einsum("cd,cd->c", mean, sums), 0.0)
        D = sums.shape[1]
        out[name] = SpaceStats(mean=mean.reshape(n_speakers, n_phones, D),
                               count=counts.reshape(n_speakers, n_phones), ss=ss.reshape(n_speakers, n_phones))
    proj = np.concatenate(kept) if kept else None
    return LayerStats(spaces=out, token_cells=np.concatenate(kept_cells) if kept_cells else None, token_proj=proj,
                      nonfinite_rows=np.concatenate(bad) if bad else np.zeros(0, dtype=np.int64))


def phone_centres(X: np.ndarray, phone_idx: np.ndarray, n_phones: int) -> np.ndarray:
    """Per-phone mean of a token sample (the grand mean for phones absent from it), ``[P, D]`` float64."""
    counts = np.bincount(phone_idx, minlength=n_phones).astype(np.float64)
    agg = sp.csr_matrix((np.ones(len(X), dtype=np.float32), (phone_idx, np.arange(len(X)))),
                        shape=(n_phones, len(X)))
    sums = np.asarray(agg @ X, dtype=np.float64)
    grand = X.mean(0, dtype=np.float64)
    return np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], grand[None, :])


def sample_rows(rows: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """A sorted random subset of at most ``max_rows`` of ``rows`` (sorted reads are cheap on a memmap)."""
    if len(rows) <= max_rows:
        return np.sort(rows)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(rows, size=max_rows, replace=False))


__all__: Sequence[str] = ["LDAProjection", "LayerStats", "SpaceStats", "accumulate_layer", "fit_lda",
                          "phone_centres", "sample_rows"]
