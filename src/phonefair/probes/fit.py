"""``fit_probes``: cross-fitted phone probes per layer, from which every probe table is computed.

For every layer, every repeat and every speaker fold of the :class:`~phonefair.audit.design.Design`, the training
populations of :mod:`phonefair.probes.populations` are fitted on the other folds' speakers (one batched call of the
trainer for all of a layer's probes) and evaluated on the fold's speakers. So every speaker is tested exactly once
per repeat, by probes that never saw it; the per-(speaker, phone) correct/total counts of every population are what
:mod:`phonefair.probes.results` turns into tables.

λ (the L2 strength) is chosen per probe on held-out *training* speakers (an inner speaker split), then the probe is
refitted on all its rows; a population with a single speaker cannot be split and takes its fold's ``all`` probe's λ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from phonefair import rng
from phonefair.audit.design import Design
from phonefair.layers import layer_order, parse_layers
from phonefair.probes.populations import Population, crossfit_populations, inner_split
from phonefair.probes.results import ProbeResults, build_tables
from phonefair.probes.solver import Workspace
from phonefair.probes.solver import torch_threads as solver_threads
from phonefair.probes.trainer import BatchedProbes, TrainerConfig, evaluate_gathered, fit_batched, fit_select
from phonefair.settings import ProbeSettings
from phonefair.store.base import EmbeddingSource

__all__ = ["fit_probes", "resolve_device", "LayerCounts", "torch_threads"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def torch_threads(n: int) -> AbstractContextManager[int]:
    """Set torch's intra-op threads for a block and restore them after (yields the count). ``n = 0`` picks a sane
    default: every core when the machine is idle, one when other processes already keep the cores busy (small probe
    tensors run several times slower on contended threads)."""
    return solver_threads(n if n > 0 else _auto_threads())


def _auto_threads() -> int:
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without a load average
        busy = 0.0
    return max(1, min(cores, int(cores - busy + 0.5)))


@dataclass
class LayerCounts:
    """Per-(speaker, phone) correct/total test counts of one layer, per training population key, summed over
    repeats; plus the ``all`` probe's confusion counts per group ``[G, C, C]``."""

    correct: dict[tuple[str, str | None], np.ndarray]  # key -> [S, C]
    total: dict[tuple[str, str | None], np.ndarray]
    confusion: np.ndarray
    # per (key, repeat, fold): the keys' counts restricted to that fold's speakers, for fold-level inference
    fold_correct: dict[tuple[str, str | None], np.ndarray] = field(default_factory=dict)  # key -> [R, K, S, C]
    n_nonfinite: int = 0


def fit_probes(source: EmbeddingSource, design: Design, settings: ProbeSettings | None = None, *,
               level: float = 0.95, fdr_alpha: float = 0.05, seed: int = 0, progress: bool = False,
               trainer: TrainerConfig | None = None, val_fraction: float = 0.25) -> ProbeResults:
    """Fit the cross-fitted probes of every layer and compute the probe tables (see docs/probes.md).

    ``source``: any :class:`~phonefair.store.EmbeddingSource` (one layer is read at a time). ``design``: the
    validated audit design (speakers, groups, folds). ``settings``: :class:`~phonefair.settings.ProbeSettings`.
    ``level`` / ``fdr_alpha``: interval level and BH level of the in-group-benefit tests. ``seed``: population
    draws, inner splits and optimiser randomness (each derived with :func:`phonefair.rng.derive`).
    """
    s = settings or ProbeSettings()
    t0 = time.perf_counter()
    layers = list(source.layers) if s.layers == "all" else parse_layers(list(s.layers), [str(x) for x in
                                                                                         source.layers])
    layers = layer_order(layers)
    cfg = TrainerConfig(**{**(trainer.to_dict() if trainer else {}), "probe": s.type})
    dev = resolve_device(s.device)
    pops, sizes = crossfit_populations(design, kinds=s.populations, seed=seed)
    resident = design.tokens["row"].to_numpy()  # sorted
    y_res = design.tokens["phone_idx"].to_numpy()
    spk_res = design.tokens["speaker_idx"].to_numpy()
    C, S = len(design.phones), design.n_speakers
    local = {id(p): np.searchsorted(resident, p.rows) for p in pops}
    splits = {id(p): inner_split(p, _speaker_of_rows(design), val_fraction=val_fraction, seed=seed)
              for p in pops} if len(s.l2_grid) > 1 else {}
    counts: dict[str, LayerCounts] = {}
    fits: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    it: Any = layers
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(layers, desc="probes (layers)", unit="layer", leave=False)
    ws = Workspace()  # the exact solver's buffers: faulted in by the first layer, reused by the others
    with torch_threads(s.threads) as n_threads:
        for layer in it:
            tl = time.perf_counter()
            x_np = np.asarray(source.read(layer, resident), dtype=np.float32)
            if x_np.shape[0] != len(resident):
                raise ValueError(f"source.read({layer!r}) returned {x_np.shape[0]} rows for {len(resident)}")
            finite = np.isfinite(x_np).all(1)
            x_np[~finite] = 0.0
            x = torch.from_numpy(x_np).to(dev)
            y = torch.from_numpy(np.where(finite, y_res, -1)).to(dev)
            probes, chosen, val_acc = _fit_layer(x, y, pops, resident, splits, s.l2_grid, cfg, finite,
                                                 rng.derive_seed(seed, "probe-fit", layer), ws)
            lc = _evaluate(probes, x, y_res, finite, spk_res, pops, design, C, S, cfg)
            lc.n_nonfinite = int((~finite).sum())
            counts[layer] = lc
            for i, p in enumerate(pops):
                fits.append({"layer": layer, "train_kind": p.kind, "train_group": p.group, "repeat": p.repeat,
                             "fold": p.fold, "l2": float(chosen[i]), "val_accuracy": float(val_acc[i]),
                             "n_train_tokens": int(finite[local[id(p)]].sum()), "n_train_speakers": p.n_speakers,
                             "n_classes": int(probes.class_mask[i].sum()), "optimizer": probes.optimizer,
                             "n_iter": int(probes.n_iter)})
            del x, probes
            timings[layer] = time.perf_counter() - tl
    provenance: dict[str, Any] = {
        "stage": "phonefair.probes.fit_probes",
        "source": dict(getattr(source, "provenance", {}) or {}),
        "layers": layers, "seed": seed,
        "settings": {**s.to_dict(), "level": level, "fdr_alpha": fdr_alpha, "val_fraction": val_fraction,
                     "trainer": cfg.to_dict(), "device": str(dev), "threads": n_threads,
                     "l2_convention": "mean CE + l2/2 ||W||^2 on standardised features; sklearn C = 1/(l2 * n)",
                     "evaluation": "cross-fitted: every speaker tested once per repeat by probes trained on the "
                                   "other folds' speakers"},
        "design": design.summary(), "size_matching": sizes, "classes": list(design.phones),
        # token rows whose embedding is NaN/inf (audio the extraction could not embed): left out of every probe
        "non_finite_rows": {layer: counts[layer].n_nonfinite for layer in layers},
        "timing_s": {"fit": time.perf_counter() - t0, "per_layer": timings},
    }
    import pandas as pd

    tables = build_tables(layers, counts, design, pd.DataFrame(fits), level=level, fdr_alpha=fdr_alpha,
                          provenance=provenance, kinds=("all", *s.populations))
    provenance["timing_s"]["total"] = time.perf_counter() - t0
    return ProbeResults(table_map=tables, provenance=provenance)


def _speaker_of_rows(design: Design) -> np.ndarray:
    """Source row → speaker index (-1 for rows not analysed)."""
    t = design.tokens
    out = np.full(int(t["row"].max()) + 1, -1, dtype=np.int64)
    out[t["row"].to_numpy()] = t["speaker_idx"].to_numpy()
    return out


def _pad(row_lists: Sequence[np.ndarray], finite: np.ndarray, device: torch.device
         ) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(len(r) for r in row_lists))
    rows = np.zeros((len(row_lists), n), dtype=np.int64)
    w = np.zeros((len(row_lists), n), dtype=np.float32)
    for i, r in enumerate(row_lists):
        rows[i, :len(r)] = r
        w[i, :len(r)] = finite[r]  # non-finite rows (unembeddable audio) weigh nothing
    return torch.from_numpy(rows).to(device), torch.from_numpy(w).to(device)


def _class_mask(row_lists: Sequence[np.ndarray], y: torch.Tensor, C: int) -> torch.Tensor:
    yn = y.cpu().numpy()
    m = np.zeros((len(row_lists), C), dtype=bool)
    for i, r in enumerate(row_lists):
        yy = yn[r]
        m[i, np.unique(yy[yy >= 0])] = True
    return torch.from_numpy(m).to(y.device)


def _fit_layer(x: torch.Tensor, y: torch.Tensor, pops: list[Population], resident: np.ndarray,
               splits: dict[int, tuple[np.ndarray, np.ndarray] | None], grid: Sequence[float], cfg: TrainerConfig,
               finite: np.ndarray, seed: int, ws: Workspace | None = None
               ) -> tuple[BatchedProbes, np.ndarray, np.ndarray]:
    """λ per probe on its inner validation speakers, then every probe refitted on all its rows (one batched call
    per phase). Returns the probes, the chosen λ and the validation accuracy (NaN without a split)."""
    dev = x.device
    C = int(y.max().item()) + 1
    P = len(pops)
    grid = sorted(float(v) for v in grid)
    chosen = np.full(P, grid[0])
    val_acc = np.full(P, np.nan)
    with_split = [i for i, p in enumerate(pops) if splits.get(id(p)) is not None] if len(grid) > 1 else []
    rows_l = [np.searchsorted(resident, p.rows) for p in pops]
    selected: BatchedProbes | None = None
    if with_split:
        fit_l = [np.searchsorted(resident, splits[id(pops[i])][0]) for i in with_split]  # type: ignore[index]
        val_l = [np.searchsorted(resident, splits[id(pops[i])][1]) for i in with_split]  # type: ignore[index]
        fr, fw = _pad(fit_l, finite, dev)
        vr, vw = _pad(val_l, finite, dev)
        if cfg.exact:  # the linear solver ranks the grid and refits in one call sharing the gathered rows
            full_l = [rows_l[i] for i in with_split]
            ar, aw = _pad(full_l, finite, dev)
            sel = fit_select(x, y, fr, fw, vr, vw, ar, aw, _class_mask(fit_l, y, C), _class_mask(full_l, y, C),
                             grid, cfg, seed=seed, workspace=ws)
            selected = sel.probes
            # the grid value itself (the solver reports λ in its compute dtype)
            l2v = sel.l2.double().cpu().numpy()
            chosen[with_split] = np.array(grid)[np.abs(np.array(grid)[None] - l2v[:, None]).argmin(1)]
            val_acc[with_split] = sel.val_accuracy.cpu().numpy()
        else:
            l2 = torch.tensor(grid, device=dev, dtype=x.dtype).expand(len(with_split), -1).contiguous()
            fitted = fit_batched(x, y, fr, fw, _class_mask(fit_l, y, C), l2, cfg, seed=seed, workspace=ws)
            va = evaluate_gathered(fitted, x, y, vr, vw, cfg.chunk_rows)[0].cpu().numpy()
            # the most accurate λ; ties go to the larger λ (the simpler probe)
            best = len(grid) - 1 - np.argmax(va[:, ::-1] >= va.max(1, keepdims=True) - 1e-12, axis=1)
            chosen[with_split] = np.array(grid)[best]
            val_acc[with_split] = va[np.arange(len(with_split)), best]
        # populations without a split take their fold's `all` probe's λ
        all_l2 = {(p.repeat, p.fold): chosen[i] for i, p in enumerate(pops) if p.kind == "all"}
        for i, p in enumerate(pops):
            if splits.get(id(p)) is None:
                chosen[i] = all_l2.get((p.repeat, p.fold), chosen[i])
    rest = [i for i in range(P) if selected is None or i not in set(with_split)]
    parts: list[tuple[list[int], BatchedProbes]] = [] if selected is None else [(with_split, selected)]
    if rest:
        rl = [rows_l[i] for i in rest]
        fr, fw = _pad(rl, finite, dev)
        parts.append((rest, fit_batched(x, y, fr, fw, _class_mask(rl, y, C),
                                        torch.tensor(chosen[rest], device=dev, dtype=x.dtype)[:, None], cfg,
                                        seed=seed + 1, workspace=ws)))
    probes = parts[0][1] if len(parts) == 1 else _concat(parts, P)
    return probes, chosen, val_acc


def _concat(parts: list[tuple[list[int], BatchedProbes]], n: int) -> BatchedProbes:
    """One batch of ``n`` probes from batches holding the probes at the listed positions."""
    order = torch.as_tensor(np.argsort(np.concatenate([np.asarray(i) for i, _ in parts])))
    bs = [b for _, b in parts]

    def cat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(ts)[order.to(ts[0].device)]

    return BatchedProbes(kind=bs[0].kind, mean=cat([b.mean for b in bs]), scale=cat([b.scale for b in bs]),
                         params={k: cat([b.params[k] for b in bs]) for k in bs[0].params},
                         class_mask=cat([b.class_mask for b in bs]), optimizer=bs[0].optimizer,
                         n_iter=max(b.n_iter for b in bs))


def _take(probes: BatchedProbes, idx: Sequence[int]) -> BatchedProbes:
    """The probes at ``idx`` (a view of the batch, for predicting one fold's speakers)."""
    ii = torch.as_tensor(list(idx), device=probes.mean.device)
    return BatchedProbes(kind=probes.kind, mean=probes.mean[ii], scale=probes.scale[ii],
                         params={k: v[ii] for k, v in probes.params.items()}, class_mask=probes.class_mask[ii],
                         optimizer=probes.optimizer, n_iter=probes.n_iter)


def _evaluate(probes: BatchedProbes, x: torch.Tensor, y_res: np.ndarray, finite: np.ndarray, spk_res: np.ndarray,
              pops: list[Population], design: Design, C: int, S: int, cfg: TrainerConfig) -> LayerCounts:
    """Predict every fold's test tokens with that fold's probes; per-(speaker, phone) counts per population key."""
    R, K = design.folds.shape[0], design.n_folds
    keys = list(dict.fromkeys(p.key for p in pops))
    correct = {k: np.zeros((S, C)) for k in keys}
    total = {k: np.zeros((S, C)) for k in keys}
    fold_correct = {k: np.zeros((R, K, S, C)) for k in keys}
    G = design.n_groups
    confusion = np.zeros((G, C, C))
    for r in range(R):
        for k in range(K):
            idx = [i for i, p in enumerate(pops) if p.repeat == r and p.fold == k]
            test_spk = np.flatnonzero(design.folds[r] == k)
            rows = np.flatnonzero(np.isin(spk_res, test_spk) & finite)
            if not idx or len(rows) == 0:
                continue
            pred = _take(probes, idx).predict(x[torch.from_numpy(rows).to(x.device)], cfg.chunk_rows)
            pred = pred[:, :, 0].cpu().numpy()  # [n, P_fold]
            yt, st = y_res[rows], spk_res[rows]
            cell = st * C + yt
            tot = np.bincount(cell, minlength=S * C).reshape(S, C)
            for j, i in enumerate(idx):
                key = pops[i].key
                ok = np.bincount(cell, weights=(pred[:, j] == yt), minlength=S * C).reshape(S, C)
                correct[key] += ok
                total[key] += tot
                fold_correct[key][r, k] += ok
                if key == ("all", None):
                    g = design.speaker_group[st]
                    np.add.at(confusion, (g, yt, pred[:, j]), 1.0)
    return LayerCounts(correct=correct, total=total, confusion=confusion, fold_correct=fold_correct)
