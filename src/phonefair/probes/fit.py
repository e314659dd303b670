"""``fit_probes``: per-group phoneme probes for every layer, cross-group matrices, in-group benefit, CIs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from phonefair.errors import DataError
from phonefair.groups import split_speakers
from phonefair.probes.populations import POPULATION_KINDS, build_populations, inner_split
from phonefair.probes.results import MetricEngine, ProbeResults, compute_tables
from phonefair.probes.trainer import TrainerConfig, evaluate_gathered, fit_batched
from phonefair.store.base import EmbeddingSource

DEFAULT_L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} requested but CUDA is not available")
    return dev


def _pad(row_lists: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(len(r) for r in row_lists))
    rows = np.zeros((len(row_lists), n), dtype=np.int64)
    w = np.zeros((len(row_lists), n), dtype=np.float32)
    for i, r in enumerate(row_lists):
        rows[i, :len(r)] = r
        w[i, :len(r)] = 1.0
    return torch.from_numpy(rows).to(device), torch.from_numpy(w).to(device)


def prepare_tokens(source: EmbeddingSource, groups: pd.Series, *, exclude_phones: Sequence[str],
                   test_fraction: float, seed: int, check_layer: str | None = None
                   ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The tokens probes may use: ``row, speaker, group, phone, split`` (train/test), plus exclusion counts.

    Rows whose embedding in ``check_layer`` (default: the source's first layer) is not finite are left out and
    counted (``tokens_non_finite_embedding``): extraction stores NaN rows, in every layer, for phones it could not
    embed (past the end of the audio, recordings shorter than one frame, unreadable audio)."""
    if not isinstance(groups, pd.Series):
        raise TypeError(f"groups must be a pandas Series speaker -> group, got {type(groups).__name__}")
    if groups.index.duplicated().any():
        dup = groups.index[groups.index.duplicated()].astype(str).tolist()[:5]
        raise ValueError(f"groups: duplicated speaker id(s) {dup}")
    tok = source.tokens
    for c in ("speaker", "phone"):
        if c not in tok.columns:
            raise ValueError(f"source.tokens lacks column {c!r}; has {list(tok.columns)}")
    g = groups.dropna()
    g = pd.Series(g.astype(str).to_numpy(), index=g.index.astype(str))
    df = pd.DataFrame({"row": np.arange(len(tok), dtype=np.int64), "speaker": tok["speaker"].astype(str).to_numpy(),
                       "phone": tok["phone"].astype("string").to_numpy()})
    df["group"] = df["speaker"].map(g)
    excluded: dict[str, Any] = {}
    out_grp = df["group"].isna()
    excluded["speakers_not_in_groups"] = int(df.loc[out_grp, "speaker"].nunique())
    excluded["tokens_of_speakers_not_in_groups"] = int(out_grp.sum())
    excluded["group_speakers_not_in_source"] = int((~g.index.isin(df["speaker"].unique())).sum())
    df = df[~out_grp]
    na = df["phone"].isna()
    excluded["tokens_phone_na"] = int(na.sum())
    df = df[~na]
    ex = df["phone"].isin(list(exclude_phones))
    excluded["tokens_excluded_phones"] = {str(k): int(v) for k, v in df.loc[ex, "phone"].value_counts().items()}
    df = df[~ex].copy()
    finite = _finite_rows(source, check_layer if check_layer is not None else str(source.layers[0]),
                          df["row"].to_numpy())
    excluded["tokens_non_finite_embedding"] = int((~finite).sum())
    df = df[finite].copy()
    if df.empty:
        raise ValueError("no tokens left after excluding speakers without a group, <NA> phones and "
                         f"exclude_phones={list(exclude_phones)}: {excluded}")
    split_col = tok["split"].astype("string") if "split" in tok.columns else None
    if split_col is not None and split_col.iloc[df["row"].to_numpy()].notna().any():
        df["split"] = split_col.iloc[df["row"].to_numpy()].to_numpy()
        per_spk = df.dropna(subset=["split"]).groupby("speaker")["split"].nunique()
        if (mixed := per_spk[per_spk > 1]).size:
            raise ValueError(f"tokens 'split' column is not speaker-disjoint: speaker(s) {mixed.index.tolist()[:5]} "
                             "have tokens in more than one split")
        bad = ~df["split"].isin(["train", "test"]).fillna(False)
        excluded["tokens_split_not_train_test"] = {str(k): int(v) for k, v in
                                                   df.loc[bad, "split"].fillna("<NA>").value_counts().items()}
        df = df[~bad].copy()
        split_source = "tokens.split"
    else:
        sp = split_speakers(pd.Series(df.drop_duplicates("speaker").set_index("speaker")["group"]),
                            test_fraction=test_fraction, seed=seed)
        df["split"] = df["speaker"].map(sp).astype(str)
        split_source = f"phonefair.groups.split_speakers(test_fraction={test_fraction}, seed={seed})"
    df["split"] = df["split"].astype(str)
    for grp in sorted(df["group"].unique()):
        sub = df[df["group"] == grp]
        for side in ("train", "test"):
            if not (sub["split"] == side).any():
                raise ValueError(f"group {grp!r} has no {side} speakers (speaker-disjoint split from {split_source})")
    info = {"excluded": excluded, "split_source": split_source}
    return df.reset_index(drop=True), info


def _finite_rows(source: EmbeddingSource, layer: str, rows: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Whether each of ``rows`` has a finite embedding in ``layer`` (read in chunks: flat memory)."""
    out = np.ones(len(rows), dtype=bool)
    for a in range(0, len(rows), chunk):
        out[a:a + chunk] = np.isfinite(source.read(layer, rows[a:a + chunk])).all(axis=1)
    return out


def fit_probes(
    source: EmbeddingSource,
    groups: pd.Series,
    *,
    layers: Sequence[str] | None = None,
    populations: Sequence[str] = POPULATION_KINDS,
    seeds: Sequence[int] = (0, 1, 2),
    probe: str = "linear",
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    n_boot: int = 1000,
    level: float = 0.95,
    fdr_alpha: float = 0.05,
    exclude_phones: Sequence[str] = ("sil",),
    device: str = "cpu",
    progress: bool = True,
    seed: int = 0,
    n_train_speakers: int | None = None,
    n_train_tokens: int | None = None,
    test_fraction: float = 0.3,
    val_fraction: float = 0.25,
    trainer: TrainerConfig | None = None,
    keep_predictions: bool = True,
    resample_seeds: bool = True,
) -> ProbeResults:
    """Fit phoneme probes per layer × training population × seed and compute the group-fairness tables.

    Parameters
    ----------
    source: any :class:`~phonefair.store.EmbeddingSource`; layers are read one at a time.
    groups: speaker → group label. Speakers absent from the source are ignored; source speakers absent from
        ``groups`` are excluded (counted in the provenance).
    populations: training populations, any of ``"pooled"``, ``"group"``, ``"leave_out"`` (size-matched).
    seeds: one probe per population per seed (seeds redraw the size-matched training sample).
    probe: ``"linear"`` (multinomial logistic regression) or ``"mlp"``.
    l2_grid: L2 strengths λ (objective ``mean CE + λ/2 ||W||²``, i.e. scikit-learn ``C = 1/(λ n)``); one is chosen
        per probe by accuracy on held-out *training* speakers; a single value skips the selection.
    n_boot, level: speaker-clustered bootstrap replicates and CI level. ``fdr_alpha``: BH level across groups × layers.
    exclude_phones: phone labels left out (``<NA>`` phones are always left out); counts are in the provenance.
    device: ``"cpu"``, ``"cuda"`` or ``"auto"``. ``seed``: speaker split (when the tokens have none), bootstrap,
        optimiser randomness.
    n_train_speakers, n_train_tokens: override the size-matching targets (default: the largest common size).
    trainer: optimisation settings (:class:`TrainerConfig`); ``probe`` overrides its ``probe`` field.
    keep_predictions: keep the token-level ``predictions`` table.
    resample_seeds: every bootstrap replicate also redraws the probe seeds with replacement (two-level bootstrap:
        test speakers, then training samples), so CIs include training-sample variation. ``False`` gives CIs from
        test-speaker resampling alone, which under-cover in null simulations (see docs/probes.md).
    """
    t0 = time.perf_counter()
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not 0 < fdr_alpha < 1:
        raise ValueError(f"fdr_alpha must be in (0, 1), got {fdr_alpha}")
    grid = sorted(float(v) for v in l2_grid)
    if not grid or any(v < 0 for v in grid):
        raise ValueError(f"l2_grid must be a non-empty sequence of values >= 0, got {list(l2_grid)}")
    if bad := [k for k in populations if k not in POPULATION_KINDS]:
        raise ValueError(f"unknown population(s) {bad}; choose from {POPULATION_KINDS}")
    cfg = TrainerConfig(**{**(trainer.to_dict() if trainer else {}), "probe": probe})
    dev = resolve_device(device)
    all_layers = [str(x) for x in source.layers]
    if layers is None:
        use_layers = all_layers
    else:
        wanted = [str(x) for x in layers]
        if missing := [x for x in wanted if x not in all_layers]:
            raise ValueError(f"layer(s) {missing} not in the source; available: {all_layers}")
        use_layers = [x for x in all_layers if x in wanted]  # depth order of the source

    tokens, info = prepare_tokens(source, groups, exclude_phones=exclude_phones, test_fraction=test_fraction,
                                  seed=seed, check_layer=use_layers[0])
    classes = sorted(tokens["phone"].astype(str).unique().tolist())
    cidx = {c: i for i, c in enumerate(classes)}
    tokens["y"] = tokens["phone"].astype(str).map(cidx).astype(np.int64)
    train = tokens[tokens["split"] == "train"]
    test = tokens[tokens["split"] == "test"].reset_index(drop=True)
    pops, sizes = build_populations(train, kinds=populations, seeds=seeds, base_seed=seed,
                                    n_speakers=n_train_speakers, n_tokens=n_train_tokens)
    speaker_of_row = pd.Series(tokens["speaker"].to_numpy(), index=tokens["row"].to_numpy())
    y_of_row = pd.Series(tokens["y"].to_numpy(), index=tokens["row"].to_numpy())

    resident = np.unique(np.concatenate([p.rows for p in pops] + [test["row"].to_numpy()]))

    def local(rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(resident, rows)

    y_res = torch.from_numpy(y_of_row.loc[resident].to_numpy().copy()).to(dev)
    C = len(classes)

    def mask_of(row_lists: Sequence[np.ndarray]) -> torch.Tensor:
        m = np.zeros((len(row_lists), C), dtype=bool)
        for i, r in enumerate(row_lists):
            m[i, np.unique(y_of_row.loc[r].to_numpy())] = True
        return torch.from_numpy(m).to(dev)

    full_rows, full_w = _pad([local(p.rows) for p in pops], dev)
    full_mask = mask_of([p.rows for p in pops])
    if len(grid) > 1:
        splits = [inner_split(p, speaker_of_row, val_fraction=val_fraction, seed=seed) for p in pops]
        fit_rows, fit_w = _pad([local(a) for a, _ in splits], dev)
        val_rows, val_w = _pad([local(b) for _, b in splits], dev)
        fit_mask = mask_of([a for a, _ in splits])
    test_local = torch.from_numpy(local(test["row"].to_numpy())).to(dev)
    test_y = test["y"].to_numpy()
    unseen = ~full_mask.cpu().numpy()[:, test_y].T  # [Nt, P]: test token's class never seen by the probe

    preds: dict[str, np.ndarray] = {}
    fit_rows_out: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    it = use_layers
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(use_layers, desc="probes (layers)", leave=False)
    for li, layer in enumerate(it):
        tl = time.perf_counter()
        x = torch.from_numpy(np.ascontiguousarray(source.read(layer, resident), dtype=np.float32)).to(dev)
        if x.shape[0] != len(resident):
            raise ValueError(f"source.read({layer!r}) returned {x.shape[0]} rows for {len(resident)} requested")
        if not bool(torch.isfinite(x).all()):  # finite in the first layer, not here: float16 overflow (inf)
            n_bad = int((~torch.isfinite(x).all(dim=1)).sum())
            raise DataError(f"layer {layer!r}: {n_bad} token embedding(s) are NaN/inf although layer "
                            f"{use_layers[0]!r} is finite for them (float16 overflow?); extract with "
                            f"dtype='float32'")
        layer_seed = int(seed) * 1009 + li
        P = len(pops)
        if len(grid) > 1:
            l2 = torch.tensor(grid, device=dev, dtype=x.dtype).expand(P, -1).contiguous()
            sel = fit_batched(x, y_res, fit_rows, fit_w, fit_mask, l2, cfg, seed=layer_seed)
            val_acc, _ = evaluate_gathered(sel, x, y_res, val_rows, val_w, cfg.chunk_rows)
            va = val_acc.cpu().numpy()
            # the most accurate λ; ties go to the larger λ (the simpler probe)
            best = len(grid) - 1 - np.argmax(va[:, ::-1] >= va.max(1, keepdims=True) - 1e-12, axis=1)
            chosen = np.array(grid)[best]
            chosen_acc = va[np.arange(P), best]
            del sel
        else:
            chosen = np.full(P, grid[0])
            chosen_acc = np.full(P, np.nan)
        l2c = torch.tensor(chosen, device=dev, dtype=x.dtype)[:, None]
        probes = fit_batched(x, y_res, full_rows, full_w, full_mask, l2c, cfg, seed=layer_seed + 500_009)
        pred = probes.predict(x[test_local], cfg.chunk_rows)[:, :, 0].cpu().numpy().astype(np.int32)
        pred[unseen] = -1
        preds[layer] = pred
        for i, p in enumerate(pops):
            fit_rows_out.append({"layer": layer, "train_kind": p.kind, "train_group": p.group, "seed": p.seed,
                                 "l2": float(chosen[i]), "val_accuracy": float(chosen_acc[i]),
                                 "n_train_tokens": p.n_tokens, "n_train_speakers": p.n_speakers,
                                 "n_classes": int(full_mask[i].sum()),
                                 "n_test_dropped_unseen": int(unseen[:, i].sum()),
                                 "optimizer": probes.optimizer, "n_iter": probes.n_iter})
        del x, probes
        timings[layer] = time.perf_counter() - tl

    t_fit = time.perf_counter() - t0
    engine = MetricEngine(test, classes, pops, n_boot=n_boot, level=level, seed=seed,
                          resample_seeds=resample_seeds)
    provenance: dict[str, Any] = {
        "stage": "phonefair.probes.fit_probes",
        "source": dict(getattr(source, "provenance", {}) or {}),
        "layers": use_layers,
        "seeds": [int(s) for s in seeds],
        "settings": {"populations": list(populations), "probe": probe, "l2_grid": grid, "n_boot": n_boot,
                     "level": level, "fdr_alpha": fdr_alpha, "resample_seeds": resample_seeds,
                     "exclude_phones": list(exclude_phones),
                     "device": str(dev), "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
                     "trainer": cfg.to_dict(), "l2_convention": "mean CE + l2/2 ||W||^2 on standardised features; "
                     "sklearn C = 1/(l2 * n_train_tokens)",
                     "accuracy": "token-weighted: total correct / total evaluated tokens over the speakers",
                     "ci": "percentile, speaker-clustered bootstrap within test group, shared weights (paired)"},
        "size_matching": sizes,
        "groups_name": groups.name,
        "groups": sorted(tokens["group"].unique().tolist()),
        "classes": classes,
        "n_test_speakers": int(test["speaker"].nunique()),
        "n_test_tokens": int(len(test)),
        "n_test_dropped_unseen_total": int(unseen.sum()),
        "populations": [{"kind": p.kind, "group": p.group, "seed": p.seed, "speakers": list(p.speakers)}
                        for p in pops],
        **info,
        "timing_s": {"fit": t_fit, "per_layer": timings},
    }
    fits = pd.DataFrame(fit_rows_out)
    tables, curve = compute_tables(use_layers, preds, engine, fits, fdr_alpha=fdr_alpha, provenance=provenance,
                                   keep_predictions=keep_predictions)
    provenance["timing_s"]["total"] = time.perf_counter() - t0
    return ProbeResults(table_map=tables, provenance=provenance, curve=curve)


__all__ = ["DEFAULT_L2_GRID", "fit_probes", "prepare_tokens", "resolve_device"]
