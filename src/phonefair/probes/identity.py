"""Where group information lives: group-identity and speaker-identity probes per layer (docs/lenses.md).

Two lenses from the research line phonefair follows, put beside the phone-accuracy and gap curves:

* **group identity** (after Herron et al., *Speaker Group Encoding in Self-supervised Speech Recognition Models*,
  arXiv 2606.10654): can a linear probe tell a held-out speaker's group from the embeddings of their phones, per
  layer, per phone class and pooled over phones?
* **speaker identity** (after *Where do S3Ms become unfair?*, arXiv 2604.18249): can a linear probe tell which
  speaker said a held-out recording's phones (closed set), and for which groups' speakers is that easier?

Units. The group probe reads *cells*: the mean embedding of one speaker's tokens of one phone. The group is a speaker
property, so a cell is the smallest unit that carries it without token noise, and every speaker weighs the same in a
per-phone probe however talkative. "Pooled over phones" means one probe with shared weights over all cells of all
phones, each cell centred on its phone's mean (the average over speakers of their cell means; label-free): the phone
is given as context, and the probe reads group information common to all phones. Per-phone probes read only that
phone's cells. The speaker probe reads single phone tokens, centred the same way.

Every number is cross-fitted over speaker folds (group) or recording folds (speaker), so every speaker (recording) is
tested exactly once, by a probe that never saw it. The dimension attribution and the "remove the group direction"
experiment live in :mod:`phonefair.probes.attribution`; :func:`identity_lenses` runs everything.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from phonefair.errors import ConfigError, DataError
from phonefair.io import ResultTables, load_tables, save_tables
from phonefair.layers import layer_order
from phonefair.probes import attribution as A
from phonefair.probes.solver import Workspace
from phonefair.probes.trainer import TrainerConfig, fit_batched
from phonefair.rng import derive, derive_seed
from phonefair.stats import benjamini_hochberg, cluster_bootstrap_weights, percentile_ci, permutation_pvalue
from phonefair.store.base import EmbeddingSource

__all__ = ["IDENTITY_COLUMNS", "IdentityData", "IdentityResults", "IdentitySettings", "cell_means",
           "group_identity_layer", "identity_lenses", "prepare_identity_data", "speaker_folds",
           "speaker_identity_layer"]

POOLED = "*"  # the ``phone`` of the pooled group probe and the ``group`` of the all-speaker speaker-ID row
_LABEL_CHUNK_BYTES = 2**30  # group-ID cross-fit: gathered rows of the labellings fitted in one call


@dataclass(frozen=True)
class IdentitySettings:
    """Settings of :func:`identity_lenses` (all recorded in every table's provenance).

    The defaults keep the demo (48 speakers, ~30 phones, 5 layers of dim 32) at about 5 CPU-seconds in all; see
    docs/lenses.md for measured times and what to raise for a publication run (``n_perm=999``,
    ``n_resamples=50``, ``per_phone=True``).
    """

    # group identity
    n_folds: int = 3  # speaker folds (stratified by group); lowered to the smallest group's size
    n_perm: int = 49  # group-label permutations (each one retrains every fold); p >= 1 / (n_perm + 1)
    per_phone: bool = False  # also one probe per phone class, same permutations (about 3x the pooled probe's cost)
    min_speakers_per_group: int = 2  # a phone is probed only if every group has this many speakers saying it
    l2: float = 0.1  # L2 strength of the linear probes (mean CE + l2/2 ||W||^2 on standardised features)
    max_iter: int = 100  # L-BFGS iterations of the batched trainer
    # speaker identity
    speaker_identity: bool = True
    recording_folds: int = 3  # folds over each speaker's recordings
    min_recordings: int = 2  # speakers with fewer recordings are skipped (reported in ``problems``)
    speaker_l2: float = 0.01  # L2 strength of the speaker probe (many classes, many tokens: weaker than ``l2``)
    # dimension attribution
    attribution: bool = True
    top_k: int = 5  # size of the top sets whose stability is reported
    n_resamples: int = 10  # speaker subsamples for stability
    subsample: float = 0.8  # fraction of each group's speakers per subsample
    l1: float = 0.2  # L1 strength of the sparse probe as a fraction of the smallest strength that zeroes it
    lda_shrinkage: float = 0.05  # within-group covariance shrunk towards its mean variance (fraction)
    # remove the group directions
    removal: bool = True
    removal_layers: str | Sequence[str] = "peak"  # "peak" (max pooled group-ID accuracy), "all", or layer names
    removal_k: Sequence[int] | None = None  # numbers of LDA directions removed (None: all, i.e. n_groups - 1)
    phone_l2: float = 1e-3  # L2 strength of the phone probe that measures the gap (one fixed value: no inner search)
    # shared
    n_boot: int = 1000
    level: float = 0.95
    fdr_alpha: float = 0.05
    exclude_phones: Sequence[str] = ("sil",)
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in ("n_folds", "recording_folds", "min_recordings", "min_speakers_per_group"):
            if getattr(self, name) < 2:
                raise ConfigError(f"IdentitySettings.{name} must be >= 2, got {getattr(self, name)}")
        for name in ("n_perm",):
            if getattr(self, name) < 0:
                raise ConfigError(f"IdentitySettings.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("top_k", "n_resamples", "n_boot", "max_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"IdentitySettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("subsample", "level", "fdr_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"IdentitySettings.{name} must be in (0, 1), got {getattr(self, name)}")
        for name in ("l2", "speaker_l2", "phone_l2"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"IdentitySettings.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.l1 < 1:
            raise ConfigError(f"IdentitySettings.l1 must be in (0, 1) (a fraction of the zeroing strength), "
                              f"got {self.l1}")
        if not 0 <= self.lda_shrinkage < 1:
            raise ConfigError(f"IdentitySettings.lda_shrinkage must be in [0, 1), got {self.lda_shrinkage}")
        if self.removal_k is not None and any(int(k) < 1 for k in self.removal_k):
            raise ConfigError(f"IdentitySettings.removal_k must hold integers >= 1, got {list(self.removal_k)}")
        if isinstance(self.exclude_phones, str):
            raise ConfigError("IdentitySettings.exclude_phones must be a list of phone labels, not a string")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


# ------------------------------------------------------------------------------------------------- the data
@dataclass
class IdentityData:
    """The tokens the lenses use, indexed once: speakers sorted by (group, speaker), cells = (speaker, phone)."""

    rows: np.ndarray  # [T] token rows in the source
    tok_speaker: np.ndarray  # [T] index into ``speakers``
    tok_phone: np.ndarray  # [T] index into ``phones``
    tok_recording: np.ndarray | None  # [T] recording code, None when the tokens have no ``recording_id``
    speakers: np.ndarray  # [S] speaker ids
    speaker_group: np.ndarray  # [S] index into ``groups``
    groups: list[str]
    phones: list[str]
    cell_of_token: np.ndarray  # [T] index into cells
    cell_speaker: np.ndarray  # [N] index into ``speakers``
    cell_phone: np.ndarray  # [N] index into ``phones``
    cell_tokens: np.ndarray  # [N] tokens per cell
    problems: list[dict[str, Any]] = field(default_factory=list)
    excluded: dict[str, Any] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def sizes(self) -> dict[str, Any]:
        return {"n_tokens": len(self.rows), "n_speakers": len(self.speakers),
                "n_cells": len(self.cell_speaker), "n_phones": len(self.phones),
                "speakers_per_group": {g: int((self.speaker_group == i).sum()) for i, g in enumerate(self.groups)}}


def _problem(lens: str, item: str, reason: str, layer: str = "*", n: int = 0) -> dict[str, Any]:
    return {"lens": lens, "layer": layer, "item": item, "reason": reason, "n": int(n)}


def prepare_identity_data(source: EmbeddingSource, groups: pd.Series, *,
                          exclude_phones: Sequence[str] = ("sil",)) -> IdentityData:
    """Index the usable tokens of ``source``; every exclusion is counted in ``problems`` / ``excluded``.

    Tokens of speakers without a group, ``<NA>`` phones and ``exclude_phones`` are left out; a group with fewer than
    two speakers is left out (a group probe cannot be tested on a speaker it was not trained on otherwise).
    """
    if not isinstance(groups, pd.Series):
        raise ConfigError(f"groups must be a pandas Series speaker -> group, got {type(groups).__name__}")
    if groups.index.duplicated().any():
        dup = groups.index[groups.index.duplicated()].astype(str).tolist()[:5]
        raise DataError(f"groups: duplicated speaker id(s) {dup}")
    tok = source.tokens
    for c in ("speaker", "phone"):
        if c not in tok.columns:
            raise DataError(f"source.tokens lacks column {c!r}; has {list(tok.columns)}")
    g = groups.dropna()
    g = pd.Series(g.astype(str).to_numpy(), index=g.index.astype(str))
    spk = tok["speaker"].astype(str).to_numpy()
    phone = tok["phone"].astype("string")
    grp = pd.Series(spk).map(g).to_numpy()
    problems: list[dict[str, Any]] = []
    excluded: dict[str, Any] = {}
    no_group = pd.isna(grp)
    excluded["speakers_not_in_groups"] = int(pd.unique(spk[no_group]).size)
    excluded["tokens_of_speakers_not_in_groups"] = int(no_group.sum())
    if no_group.any():
        problems.append(_problem("all", "speakers", "speaker has no group: tokens not used",
                                 n=excluded["speakers_not_in_groups"]))
    na = phone.isna().to_numpy()
    excluded["tokens_phone_na"] = int((na & ~no_group).sum())
    if excluded["tokens_phone_na"]:
        problems.append(_problem("all", "<NA>", "phone label missing: tokens not used", n=excluded["tokens_phone_na"]))
    ex = phone.isin(list(exclude_phones)).fillna(False).to_numpy() & ~no_group & ~na
    excluded["tokens_excluded_phones"] = {str(k): int(v) for k, v in
                                          pd.Series(phone[ex]).value_counts().items()}
    for p, n in excluded["tokens_excluded_phones"].items():
        problems.append(_problem("all", p, "phone in exclude_phones: tokens not used", n=n))
    keep = ~no_group & ~na & ~ex
    # groups with fewer than two speakers cannot be cross-fitted
    spk_grp = pd.Series(grp[keep], index=spk[keep]).groupby(level=0).first()
    counts = spk_grp.value_counts()
    small = sorted(counts[counts < 2].index.tolist())
    for s in small:
        problems.append(_problem("all", f"group {s}", "group has fewer than 2 speakers with tokens: left out",
                                 n=int(counts[s])))
    keep &= ~pd.Series(grp).isin(small).to_numpy()
    excluded["groups_too_small"] = small
    if not keep.any():
        raise DataError(f"identity lenses: no tokens left after exclusions {excluded}")
    rows = np.flatnonzero(keep)
    spk_k, grp_k, phone_k = spk[rows], grp[rows].astype(str), phone.to_numpy()[rows].astype(str)
    group_names = sorted(pd.unique(grp_k).tolist())
    if len(group_names) < 2:
        raise DataError(f"identity lenses need at least 2 groups with >= 2 speakers each; usable: {group_names} "
                        f"(left out as too small: {small})")
    spk_table = pd.DataFrame({"speaker": spk_k, "group": grp_k}).drop_duplicates("speaker")
    spk_table = spk_table.sort_values(["group", "speaker"]).reset_index(drop=True)
    speakers = spk_table["speaker"].to_numpy()
    speaker_group = spk_table["group"].map({n: i for i, n in enumerate(group_names)}).to_numpy()
    tok_speaker = pd.Series(spk_k).map({s: i for i, s in enumerate(speakers)}).to_numpy()
    phones = sorted(pd.unique(phone_k).tolist())
    tok_phone = pd.Series(phone_k).map({p: i for i, p in enumerate(phones)}).to_numpy()
    tok_recording = None
    if "recording_id" in tok.columns:
        rec = tok["recording_id"].astype("string").to_numpy()[rows]
        tok_recording = pd.factorize(pd.Series(rec).fillna("<NA>"))[0]
    key = tok_speaker.astype(np.int64) * len(phones) + tok_phone
    cell_key, cell_of_token = np.unique(key, return_inverse=True)
    return IdentityData(rows=rows, tok_speaker=tok_speaker, tok_phone=tok_phone, tok_recording=tok_recording,
                        speakers=speakers, speaker_group=speaker_group, groups=group_names, phones=phones,
                        cell_of_token=cell_of_token, cell_speaker=cell_key // len(phones),
                        cell_phone=cell_key % len(phones), cell_tokens=np.bincount(cell_of_token),
                        problems=problems, excluded=excluded)


def cell_means(data: IdentityData, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Phone-centred cell means ``[N, D]`` and the phone means ``[n_phones, D]`` from token rows ``x [T, D]``.

    A cell is the mean of one speaker's tokens of one phone; a phone's mean is the unweighted mean of its cells
    (every speaker counts once). Centring uses no group label, so it is the same for every fold and permutation.
    """
    T, N = len(data.rows), len(data.cell_speaker)
    ind = sp.csr_matrix((np.ones(T), (data.cell_of_token, np.arange(T))), shape=(N, T))
    cells = (ind @ x.astype(np.float64)) / data.cell_tokens[:, None]
    n_ph = len(data.phones)
    pind = sp.csr_matrix((np.ones(N), (data.cell_phone, np.arange(N))), shape=(n_ph, N))
    phone_mean = (pind @ cells) / np.bincount(data.cell_phone, minlength=n_ph)[:, None]
    return cells - phone_mean[data.cell_phone], phone_mean


def speaker_folds(labels: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold of every speaker, stratified by ``labels``: each label's speakers shuffled and dealt round-robin,
    continuing where the previous label stopped so fold sizes stay within one of each other."""
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0
    for lab in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == lab))
        fold[idx] = (start + np.arange(len(idx))) % n_folds
        start += len(idx)
    return fold


def _pad(row_lists: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(len(r) for r in row_lists))
    rows = np.zeros((len(row_lists), n), dtype=np.int64)
    w = np.zeros((len(row_lists), n), dtype=np.float32)
    for i, r in enumerate(row_lists):
        rows[i, :len(r)] = r
        w[i, :len(r)] = 1.0
    return torch.from_numpy(rows).to(device), torch.from_numpy(w).to(device)


def _class_mask(y: np.ndarray, row_lists: Sequence[np.ndarray], n_classes: int, device: torch.device) -> torch.Tensor:
    m = np.zeros((len(row_lists), n_classes), dtype=bool)
    for i, r in enumerate(row_lists):
        m[i, np.unique(y[r])] = True
    return torch.from_numpy(m).to(device)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name!r} requested but CUDA is not available")
    return dev


def _trainer(settings: IdentitySettings) -> TrainerConfig:
    return TrainerConfig(probe="linear", max_iter=settings.max_iter)


# ------------------------------------------------------------------------------------------- group identity
@dataclass
class GroupDesign:
    """The permuted labellings and their speaker folds, shared by every layer (index 0 = the true labels)."""

    labels: np.ndarray  # [B + 1, S] group index per speaker
    folds: np.ndarray  # [B + 1, S]
    n_folds: int


def group_design(data: IdentityData, settings: IdentitySettings) -> GroupDesign:
    """True and permuted speaker labels (group sizes kept) and folds stratified by each labelling."""
    k = int(min(settings.n_folds, np.bincount(data.speaker_group).min()))
    perm_rng = derive(settings.seed, "group_identity", "permutations")
    fold_rng = derive(settings.seed, "group_identity", "folds")
    labels = [data.speaker_group]
    labels += [perm_rng.permutation(data.speaker_group) for _ in range(settings.n_perm)]
    lab = np.stack(labels)
    # the fold rule is applied to each labelling exactly as to the true one, so the null replicates the procedure
    folds = np.stack([speaker_folds(lab[b], k, fold_rng) for b in range(lab.shape[0])])
    return GroupDesign(labels=lab, folds=folds, n_folds=k)


def _speaker_scores(correct: np.ndarray, cell_speaker: np.ndarray, n_speakers: int) -> np.ndarray:
    """Fraction of each speaker's cells predicted correctly, ``[S, B + 1]`` (NaN: speaker has no cell)."""
    B1 = correct.shape[1]
    tot = np.bincount(cell_speaker, minlength=n_speakers).astype(float)
    out = np.empty((n_speakers, B1))
    for b in range(B1):
        out[:, b] = np.bincount(cell_speaker, weights=correct[:, b], minlength=n_speakers)
    with np.errstate(invalid="ignore", divide="ignore"):
        return out / tot[:, None]


def balanced_accuracy(scores: np.ndarray, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """Per labelling ``b``: mean over groups of the mean speaker score of the group's speakers (NaN scores skipped).

    ``scores [S, B + 1]``, ``labels [B + 1, S]``. With one cell per speaker this is the usual balanced accuracy over
    speakers; with many it weighs every speaker equally within their group and every group equally.
    """
    B1 = scores.shape[1]
    out = np.full(B1, np.nan)
    for b in range(B1):
        s = scores[:, b]
        ok = ~np.isnan(s)
        n = np.bincount(labels[b][ok], minlength=n_groups)
        tot = np.bincount(labels[b][ok], weights=s[ok], minlength=n_groups)
        present = n > 0
        if present.any():
            out[b] = float(np.mean(tot[present] / n[present]))
    return out


def _bootstrap_bacc(score: np.ndarray, groups: np.ndarray, n_groups: int, weights: np.ndarray) -> np.ndarray:
    """Balanced accuracy under every speaker-bootstrap replicate ``weights [R, S]`` (true groups)."""
    ok = ~np.isnan(score)
    s = np.where(ok, score, 0.0)
    per_group = []
    for g in range(n_groups):
        m = (groups == g) & ok
        if not m.any():
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            per_group.append((weights[:, m] @ s[m]) / weights[:, m].sum(1))
    return np.nanmean(np.stack(per_group), axis=0)


def _cross_fit(z: np.ndarray, cell_speaker: np.ndarray, cell_part: np.ndarray, n_parts: int, design: GroupDesign,
               settings: IdentitySettings, device: torch.device, seed: int) -> np.ndarray:
    """Cross-fitted predictions ``correct [n, B + 1]`` of cells ``z [n, D]``: one probe per (labelling, fold, part).

    A part is a subset of cells with its own probe (one phone, or every cell for the pooled probe). Probe
    ``(b, k, q)`` trains on the cells of part ``q`` whose speaker is outside fold ``k`` of labelling ``b`` and
    predicts the cells of part ``q`` inside it. The batched trainer shares one label vector across probes, so the
    resident matrix holds one copy of the cells per *group* (copy ``g`` labelled ``g``) and a probe reads, for each
    of its cells, the copy of the label its labelling gives: memory grows with the number of groups, not with the
    number of permutations. Labellings are fitted in chunks that keep L-BFGS's gathered tensor within its budget.
    """
    n, D = z.shape
    B1, K, G = design.labels.shape[0], design.n_folds, int(design.labels.max()) + 1
    zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(device)
    x_res = zt.repeat(G, 1)
    y_res = torch.arange(G, device=device).repeat_interleave(n)
    cfg = _trainer(settings)
    part_cells = [np.flatnonzero(cell_part == q) for q in range(n_parts)]
    n_max = max(1, max(len(c) for c in part_cells))
    per_label = K * n_parts * n_max * D * 4
    chunk = int(max(1, min(B1, _LABEL_CHUNK_BYTES // max(1, per_label))))
    ws = Workspace()  # the solver's buffers, reused by every chunk
    correct = np.zeros((n, B1))
    for c0 in range(0, B1, chunk):
        bs = range(c0, min(B1, c0 + chunk))
        row_lists, ys = [], []
        for b in bs:
            lab, fold = design.labels[b][cell_speaker], design.folds[b][cell_speaker]
            for k in range(K):
                for cells in part_cells:
                    tr = cells[fold[cells] != k]
                    row_lists.append(lab[tr] * n + tr)
                    ys.append(lab[tr])
        rows, w = _pad(row_lists, device)
        mask = np.zeros((len(ys), G), dtype=bool)
        for i, y in enumerate(ys):
            mask[i, y] = True
        l2 = torch.full((len(row_lists), 1), float(settings.l2), device=device)
        probes = fit_batched(x_res, y_res, rows, w, torch.from_numpy(mask).to(device), l2, cfg,
                             seed=derive_seed(seed, "chunk", c0), workspace=ws)
        pred_all = probes.predict(zt)[:, :, 0].cpu().numpy()  # [n, P]: every probe on every cell
        for j, b in enumerate(bs):
            fold = design.folds[b][cell_speaker]
            probe = (j * K + fold) * n_parts + cell_part
            correct[:, b] = pred_all[np.arange(n), probe] == design.labels[b][cell_speaker]
        del probes, pred_all
    return correct


def group_identity_layer(z: np.ndarray, data: IdentityData, design: GroupDesign, settings: IdentitySettings, *,
                         layer: str, eligible_phones: Sequence[int], device: torch.device,
                         phones_per_call: int = 8) -> dict[Any, np.ndarray]:
    """Cross-fitted group predictions of every cell under every labelling, for the pooled probe and per phone.

    Returns ``{"*": correct [N, B + 1], phone index: correct [n_p, B + 1], ...}`` (1.0 = correct). The pooled probes
    of all labellings x folds are fitted in one :func:`fit_batched` call (chunked only past the trainer's L-BFGS
    budget); per-phone probes in calls of ``phones_per_call`` phones (the trainer's standardisation cost grows with
    probes x resident rows, so a call per handful of phones is cheaper than one for all).
    """
    seed = derive_seed(settings.seed, "group_identity", layer)
    out: dict[Any, np.ndarray] = {
        POOLED: _cross_fit(z, data.cell_speaker, np.zeros(len(z), dtype=np.int64), 1, design, settings, device,
                           derive_seed(seed, POOLED))}
    phones = list(eligible_phones)
    for i in range(0, len(phones), phones_per_call):
        batch = phones[i:i + phones_per_call]
        cells = np.flatnonzero(np.isin(data.cell_phone, batch))
        part = pd.Series(data.cell_phone[cells]).map({p: q for q, p in enumerate(batch)}).to_numpy()
        corr = _cross_fit(z[cells], data.cell_speaker[cells], part, len(batch), design, settings, device,
                          derive_seed(seed, "phones", i))
        for q, p in enumerate(batch):
            out[p] = corr[part == q]
    return out


def eligible_phones(data: IdentityData, min_speakers: int) -> tuple[list[int], list[dict[str, Any]]]:
    """Phones every group says with at least ``min_speakers`` speakers; the others become problem rows."""
    spk_per = np.zeros((len(data.phones), data.n_groups), dtype=np.int64)
    np.add.at(spk_per, (data.cell_phone, data.speaker_group[data.cell_speaker]), 1)
    ok = (spk_per >= min_speakers).all(1)
    problems = [_problem("group_identity", data.phones[p],
                         f"fewer than {min_speakers} speakers say this phone in some group "
                         f"(speakers per group: {dict(zip(data.groups, spk_per[p].tolist(), strict=True))}): "
                         "no per-phone probe", n=int(spk_per[p].sum()))
                for p in np.flatnonzero(~ok)]
    return np.flatnonzero(ok).tolist(), problems


def summarise_group_identity(correct: dict[Any, np.ndarray], data: IdentityData, design: GroupDesign,
                             settings: IdentitySettings, *, layer: str, boot: np.ndarray) -> list[dict[str, Any]]:
    """Rows of the ``group_identity`` table for one layer (p-values from the permutations; q-values added later)."""
    rows = []
    G = data.n_groups
    for key, corr in correct.items():
        cells = np.arange(len(data.cell_speaker)) if key == POOLED else np.flatnonzero(data.cell_phone == key)
        cspk = data.cell_speaker[cells]
        scores = _speaker_scores(corr, cspk, len(data.speakers))
        bacc = balanced_accuracy(scores, design.labels, G)
        reps = _bootstrap_bacc(scores[:, 0], data.speaker_group, G, boot)
        lo, hi = percentile_ci(reps, settings.level)
        null = bacc[1:]
        rows.append({"layer": layer, "phone": POOLED if key == POOLED else data.phones[key],
                     "balanced_accuracy": float(bacc[0]), "ci_low": float(lo), "ci_high": float(hi),
                     "chance": 1.0 / len(np.unique(data.speaker_group[cspk])),
                     "p_value": float(permutation_pvalue(bacc[0], null)) if len(null) else float("nan"),
                     "null_mean": float(np.mean(null)) if len(null) else float("nan"),
                     "null_q95": float(np.quantile(null, 0.95)) if len(null) else float("nan"),
                     "n_speakers": len(np.unique(cspk)), "n_cells": len(cells),
                     "n_tokens": int(data.cell_tokens[cells].sum()), "n_perm": settings.n_perm})
    return rows


# ----------------------------------------------------------------------------------------- speaker identity
@dataclass
class SpeakerDesign:
    """Recording folds of the closed-set speaker probe (same for every layer)."""

    token_fold: np.ndarray  # [T] fold of each token's recording; -1 for tokens of skipped speakers
    speakers: np.ndarray  # [S_e] indices (into ``IdentityData.speakers``) of the speakers probed
    n_folds: int


def speaker_design(data: IdentityData, settings: IdentitySettings) -> tuple[SpeakerDesign | None,
                                                                            list[dict[str, Any]]]:
    """Assign each speaker's recordings to folds; speakers with too few recordings become problem rows."""
    if data.tok_recording is None:
        return None, [_problem("speaker_identity", "recording_id",
                               "tokens have no recording_id column: held-out recordings cannot be formed, "
                               "speaker identity not computed")]
    rng = derive(settings.seed, "speaker_identity", "folds")
    K = settings.recording_folds
    token_fold = np.full(len(data.rows), -1, dtype=np.int64)
    problems, probed = [], []
    for s in range(len(data.speakers)):
        tok = np.flatnonzero(data.tok_speaker == s)
        recs = np.unique(data.tok_recording[tok])
        if len(recs) < settings.min_recordings:
            problems.append(_problem("speaker_identity", str(data.speakers[s]),
                                     f"speaker has {len(recs)} recording(s), fewer than min_recordings="
                                     f"{settings.min_recordings}: not probed", n=len(tok)))
            continue
        order = rng.permutation(recs)
        fold_of = dict(zip(order.tolist(), ((int(rng.integers(K)) + np.arange(len(order))) % K).tolist(),
                           strict=True))
        token_fold[tok] = pd.Series(data.tok_recording[tok]).map(fold_of).to_numpy()
        probed.append(s)
    if len(probed) < 2:
        problems.append(_problem("speaker_identity", "speakers",
                                 f"only {len(probed)} speaker(s) with >= {settings.min_recordings} recordings: "
                                 "speaker identity not computed", n=len(probed)))
        return None, problems
    return SpeakerDesign(token_fold=token_fold, speakers=np.asarray(probed), n_folds=K), problems


def speaker_identity_layer(xc: np.ndarray, data: IdentityData, design: SpeakerDesign, settings: IdentitySettings,
                           *, layer: str, device: torch.device) -> np.ndarray:
    """Per-speaker accuracy ``[S]`` (NaN for skipped speakers) of a closed-set speaker probe on held-out recordings.

    ``xc [T, D]``: phone-centred token rows. One probe per recording fold, all folds in one :func:`fit_batched`
    call; a token is predicted by the probe of its own recording's fold, which saw the speaker's other recordings.
    """
    use = np.flatnonzero(design.token_fold >= 0)
    cls_of = np.full(len(data.speakers), -1, dtype=np.int64)
    cls_of[design.speakers] = np.arange(len(design.speakers))
    y = cls_of[data.tok_speaker[use]]
    fold = design.token_fold[use]
    x = torch.from_numpy(np.ascontiguousarray(xc[use], dtype=np.float32)).to(device)
    K, C = design.n_folds, len(design.speakers)
    row_lists = [np.flatnonzero(fold != k) for k in range(K)]
    rows, w = _pad(row_lists, device)
    mask = _class_mask(y, row_lists, C, device)
    l2 = torch.full((K, 1), float(settings.speaker_l2), device=device)
    probes = fit_batched(x, torch.from_numpy(y).to(device), rows, w, mask, l2, _trainer(settings),
                         seed=derive_seed(settings.seed, "speaker_identity", layer))
    pred = probes.predict(x)[:, :, 0].cpu().numpy()[np.arange(len(use)), fold]
    correct = (pred == y).astype(float)
    spk = data.tok_speaker[use]
    n = np.bincount(spk, minlength=len(data.speakers)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(spk, weights=correct, minlength=len(data.speakers)) / np.where(n > 0, n, np.nan)


def summarise_speaker_identity(acc: np.ndarray, data: IdentityData, design: SpeakerDesign,
                               settings: IdentitySettings, *, layer: str, boot: np.ndarray) -> list[dict[str, Any]]:
    """Rows of ``speaker_identity`` for one layer: per group (and ``"*"``: all probed speakers) the mean speaker
    accuracy with a speaker-bootstrap CI, and the group's difference from the other probed speakers (paired)."""
    probed = np.zeros(len(data.speakers), dtype=bool)
    probed[design.speakers] = True
    n_test = np.bincount(data.tok_speaker[design.token_fold >= 0], minlength=len(data.speakers))
    a = np.where(probed, acc, 0.0)

    def mean_reps(mask: np.ndarray) -> np.ndarray:
        w = np.vstack([np.ones((1, len(a))), boot])[:, mask]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ a[mask]) / w.sum(1)

    rows = []
    chance = 1.0 / len(design.speakers)
    for gi, g in [(-1, POOLED), *enumerate(data.groups)]:
        m = probed if gi < 0 else probed & (data.speaker_group == gi)
        if not m.any():
            continue
        r = mean_reps(m)
        lo, hi = percentile_ci(r[1:], settings.level)
        d_est, d_lo, d_hi = (float("nan"),) * 3
        rest = probed & ~m
        if gi >= 0 and rest.any():
            d = r - mean_reps(rest)
            d_est = float(d[0])
            d_lo, d_hi = (float(v) for v in percentile_ci(d[1:], settings.level))
        rows.append({"layer": layer, "group": g, "accuracy": float(r[0]), "ci_low": float(lo), "ci_high": float(hi),
                     "chance": chance, "diff_vs_rest": d_est, "diff_ci_low": d_lo, "diff_ci_high": d_hi,
                     "n_speakers": int(m.sum()), "n_test_tokens": int(n_test[m].sum())})
    return rows


# -------------------------------------------------------------------------------------------- entry point
IDENTITY_COLUMNS: dict[str, list[str]] = {
    "group_identity": ["layer", "phone", "balanced_accuracy", "ci_low", "ci_high", "chance", "p_value", "q_value",
                       "null_mean", "null_q95", "n_speakers", "n_cells", "n_tokens", "n_perm"],
    "speaker_identity": ["layer", "group", "accuracy", "ci_low", "ci_high", "chance", "diff_vs_rest", "diff_ci_low",
                         "diff_ci_high", "n_speakers", "n_test_tokens"],
    "group_dimensions": ["layer", "kind", "index", "measure", "importance", "stability", "rank", "top_k",
                         "topk_overlap", "variance_fraction"],
    "direction_removal": ["layer", "directions", "k_removed", "best_group", "worst_group", "gap_before", "gap_after",
                          "change", "ci_low", "ci_high", "change_vs_control", "control_ci_low", "control_ci_high",
                          "accuracy_before", "accuracy_after", "group_bacc_before", "group_bacc_after"],
    "phone_gap": ["layer", "group", "gap", "ci_low", "ci_high"],
    "problems": ["lens", "layer", "item", "reason", "n"],
}
_STRING_COLS = {"layer", "phone", "group", "kind", "measure", "directions", "best_group", "worst_group", "lens",
                "item", "reason"}


def _frame(name: str, rows: list[dict[str, Any]] | pd.DataFrame, provenance: dict[str, Any]) -> pd.DataFrame:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows, columns=IDENTITY_COLUMNS[name])
    df = df.reindex(columns=IDENTITY_COLUMNS[name]).reset_index(drop=True)
    for c in df.columns:
        if c in _STRING_COLS:
            df[c] = df[c].astype("string")
    df.attrs["provenance"] = {**provenance, "table": name}
    return df


class IdentityResults(ResultTables):
    """Tables of :func:`identity_lenses`: ``group_identity``, ``speaker_identity``, ``group_dimensions``,
    ``direction_removal``, ``phone_gap`` (the gap at the removal layers) and ``problems``."""

    def save(self, directory: str | Path) -> Path:
        """One Parquet file per table plus ``identity.json`` (provenance)."""
        return save_tables(directory, self.table_map, fmt="identity", meta={"provenance": self.provenance})

    @classmethod
    def load(cls, directory: str | Path) -> IdentityResults:
        tables, meta = load_tables(directory, fmt="identity")
        return cls(table_map=tables, provenance=meta["provenance"])

    def peak_layer(self) -> str | None:
        """The layer whose pooled group probe is most accurate (None without a group_identity table)."""
        gi = self.table_map.get("group_identity")
        if gi is None or gi.empty:
            return None
        pooled = gi[gi["phone"] == POOLED].dropna(subset=["balanced_accuracy"])
        return None if pooled.empty else str(pooled.loc[pooled["balanced_accuracy"].idxmax(), "layer"])

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.table_map.items())
        return f"IdentityResults(layers={self.provenance.get('layers')}, {sizes})"


def _resolve_layers(source: EmbeddingSource, layers: Sequence[str] | None) -> list[str]:
    available = [str(x) for x in source.layers]
    if layers is None:
        return available
    wanted = [str(x) for x in layers]
    if missing := [x for x in wanted if x not in available]:
        raise ConfigError(f"layer(s) {missing} not in the source; available: {available}")
    return [x for x in layer_order(available) if x in wanted]


def _removal_layers(spec: str | Sequence[str], gi_rows: list[dict[str, Any]], layers: list[str]) -> list[str]:
    """The layers of the removal experiment; called once before any work (``gi_rows`` empty: only validates)."""
    if isinstance(spec, str) and spec == "all":
        return layers
    if isinstance(spec, str) and spec == "peak":
        pooled = [r for r in gi_rows if r["phone"] == POOLED and np.isfinite(r["balanced_accuracy"])]
        return [max(pooled, key=lambda r: r["balanced_accuracy"])["layer"]] if pooled else []
    wanted = [spec] if isinstance(spec, str) else [str(x) for x in spec]
    if missing := [x for x in wanted if x not in layers]:
        raise ConfigError(f"IdentitySettings.removal_layers: {missing} not among the analysed layers {layers} "
                          "(or use 'peak' / 'all')")
    return [x for x in layers if x in wanted]


def identity_lenses(source: EmbeddingSource, groups: pd.Series, *, layers: Sequence[str] | None = None,
                    settings: IdentitySettings | None = None, progress: bool = False) -> IdentityResults:
    """Group-identity and speaker-identity probes per layer, the dimensions that carry group identity, and the
    phone-accuracy gap before / after removing the group directions (docs/lenses.md).

    ``source``: any :class:`~phonefair.store.EmbeddingSource` (layers read one at a time, only the rows used);
    ``groups``: speaker -> group label. Returns :class:`IdentityResults`; every table has ``attrs["provenance"]``
    (settings, seeds, sizes, folds, timings).
    """
    st = settings or IdentitySettings()
    t0 = time.perf_counter()
    dev = _device(st.device)
    use_layers = _resolve_layers(source, layers)
    if st.removal:
        _removal_layers(st.removal_layers, [], use_layers)  # a bad layer name fails before any work
    data = prepare_identity_data(source, groups, exclude_phones=st.exclude_phones)
    problems = list(data.problems)
    gdesign = group_design(data, st)
    phones: list[int] = []
    if st.per_phone:
        phones, pp = eligible_phones(data, st.min_speakers_per_group)
        problems += pp
    sdesign, sp_problems = speaker_design(data, st) if st.speaker_identity else (None, [])
    problems += sp_problems
    _, boot = cluster_bootstrap_weights(data.speakers, st.n_boot, seed=derive_seed(st.seed, "identity", "bootstrap"),
                                        strata=data.speaker_group)
    subsamples = A.speaker_subsamples(data.speaker_group, st.n_resamples, st.subsample, st.seed)
    gi_rows: list[dict[str, Any]] = []
    si_rows: list[dict[str, Any]] = []
    dim_rows: list[dict[str, Any]] = []
    lda_dirs: dict[str, np.ndarray] = {}
    timing: dict[str, dict[str, float]] = {}
    it: Sequence[str] = use_layers
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(use_layers, desc="identity lenses (layers)", leave=False)
    for layer in it:
        tl: dict[str, float] = {}
        t = time.perf_counter()
        x = np.asarray(source.read(layer, data.rows), dtype=np.float32)
        if x.shape[0] != len(data.rows):
            raise DataError(f"source.read({layer!r}) returned {x.shape[0]} rows for {len(data.rows)} requested")
        z, phone_mean = cell_means(data, x)
        tl["read"] = time.perf_counter() - t
        t = time.perf_counter()
        correct = group_identity_layer(z, data, gdesign, st, layer=layer, eligible_phones=phones, device=dev)
        gi_rows += summarise_group_identity(correct, data, gdesign, st, layer=layer, boot=boot)
        tl["group_identity"] = time.perf_counter() - t
        if sdesign is not None:
            t = time.perf_counter()
            xc = x - phone_mean[data.tok_phone].astype(np.float32)
            acc = speaker_identity_layer(xc, data, sdesign, st, layer=layer, device=dev)
            si_rows += summarise_speaker_identity(acc, data, sdesign, st, layer=layer, boot=boot)
            tl["speaker_identity"] = time.perf_counter() - t
        t = time.perf_counter()
        y_cell = data.speaker_group[data.cell_speaker]
        if st.attribution:
            rows, lda_dirs[layer] = A.dimension_attribution(
                z, y_cell, data.cell_speaker, subsamples, layer=layer, top_k=st.top_k, l1=st.l1,
                lda_shrinkage=st.lda_shrinkage, device=dev)
            dim_rows += rows
        elif st.removal:
            lda_dirs[layer] = A.group_directions(z, y_cell, shrinkage=st.lda_shrinkage)
        tl["attribution"] = time.perf_counter() - t
        timing[layer] = tl
    _add_q_values(gi_rows)

    removal: list[dict[str, Any]] = []
    gap_rows = pd.DataFrame(columns=IDENTITY_COLUMNS["phone_gap"])
    t = time.perf_counter()
    r_layers = _removal_layers(st.removal_layers, gi_rows, use_layers) if st.removal else []
    if r_layers:
        removal, gap_rows = _direction_removal(source, groups, data, gdesign, st, r_layers=r_layers,
                                               lda_dirs=lda_dirs, device=dev)
    t_removal = time.perf_counter() - t

    provenance: dict[str, Any] = {
        "stage": "phonefair.probes.identity_lenses",
        "source": dict(getattr(source, "provenance", {}) or {}),
        "layers": use_layers,
        "groups_name": groups.name,
        "groups": data.groups,
        "settings": st.to_dict(),
        "seed": st.seed,
        "sizes": {**data.sizes(), "group_folds": gdesign.n_folds,
                  "per_phone_probes": len(phones),
                  "speaker_identity_speakers": len(sdesign.speakers) if sdesign is not None else 0,
                  "speaker_identity_folds": sdesign.n_folds if sdesign is not None else 0},
        "excluded": data.excluded,
        "removal_layers": r_layers,
        "definitions": {
            "cell": "mean embedding of one speaker's tokens of one phone, centred on the phone's mean over speakers",
            "balanced_accuracy": "mean over groups of the mean over the group's speakers of the fraction of the "
                                 "speaker's cells predicted correctly (cross-fitted: each speaker tested once)",
            "p_value": "(1 + #{permuted >= observed}) / (1 + n_perm); group labels permuted between speakers, "
                       "folds re-drawn and every probe refitted per permutation",
            "q_value": "Benjamini-Hochberg over layers for phone '*', and over all (layer, phone) per-phone rows",
            "ci": "percentile interval of a speaker bootstrap within groups (predictions fixed)",
            "speaker_accuracy": "fraction of a speaker's held-out-recording tokens assigned to that speaker; group "
                                "value = mean over the group's speakers; chance = 1 / speakers probed",
        },
        "timing_s": {"per_layer": timing, "removal": t_removal, "total": time.perf_counter() - t0},
    }
    tables = {
        "group_identity": _frame("group_identity", gi_rows, provenance),
        "speaker_identity": _frame("speaker_identity", si_rows, provenance),
        "group_dimensions": _frame("group_dimensions", dim_rows, provenance),
        "direction_removal": _frame("direction_removal", removal, provenance),
        "phone_gap": _frame("phone_gap", gap_rows, provenance),
        "problems": _frame("problems", problems, provenance),
    }
    return IdentityResults(table_map=tables, provenance=provenance)


def _add_q_values(rows: list[dict[str, Any]]) -> None:
    for pooled in (True, False):
        fam = [r for r in rows if (r["phone"] == POOLED) == pooled]
        if fam:
            q, _ = benjamini_hochberg([r["p_value"] for r in fam])
            for r, qi in zip(fam, q, strict=True):
                r["q_value"] = float(qi)


def _direction_removal(source: EmbeddingSource, groups: pd.Series, data: IdentityData, design: GroupDesign,
                       st: IdentitySettings, *, r_layers: list[str], lda_dirs: dict[str, np.ndarray],
                       device: torch.device
                       ) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Phone-accuracy gap before / after projecting out k group (LDA) directions or k random ones (control), and
    the pooled group probe's balanced accuracy on the projected cells (no permutations)."""
    g_max = data.n_groups - 1
    ks = sorted({min(int(k), g_max) for k in (st.removal_k or [g_max])})
    # the phone probe sees the same speakers and groups as the lenses (groups too small here are left out there too)
    groups = pd.Series(np.asarray(data.groups)[data.speaker_group], index=data.speakers, name=groups.name)
    dirs = {layer: lda_dirs[layer] for layer in r_layers}
    gap_seed = derive_seed(st.seed, "identity", "phone_probe")
    before = A.phone_accuracy_by_speaker(source, groups, layers=r_layers, seed=gap_seed,
                                         exclude_phones=st.exclude_phones, l2=st.phone_l2, device=st.device)
    observed = GroupDesign(labels=design.labels[:1], folds=design.folds[:1], n_folds=design.n_folds)
    one = replace(st, n_perm=0)

    def group_bacc(z: np.ndarray) -> float:
        corr = _cross_fit(z, data.cell_speaker, np.zeros(len(z), dtype=np.int64), 1, observed, one, device,
                          derive_seed(st.seed, "identity", "removal_group_probe"))
        return float(balanced_accuracy(_speaker_scores(corr, data.cell_speaker, len(data.speakers)),
                                       observed.labels, data.n_groups)[0])

    # cells are recomputed for the few removal layers rather than kept for every layer (memory on real encoders)
    cells = {layer: cell_means(data, np.asarray(source.read(layer, data.rows), dtype=np.float32))[0]
             for layer in r_layers}
    base_bacc = {layer: group_bacc(cells[layer]) for layer in r_layers}
    rows = []
    for k in ks:
        sources = dict(zip(("lda", "random"), A.projected_sources(source, dirs, k, st.seed), strict=True))
        after = {label: A.phone_accuracy_by_speaker(src, groups, layers=r_layers, seed=gap_seed,
                                                    exclude_phones=st.exclude_phones, l2=st.phone_l2,
                                                    device=st.device)
                 for label, src in sources.items()}
        for layer in r_layers:
            for row in A.removal_rows(before, after, layer=layer, k_removed=k, n_boot=st.n_boot, level=st.level,
                                      seed=st.seed):
                q = sources[row["directions"]].basis(layer)
                z = cells[layer]
                row["group_bacc_before"] = base_bacc[layer]
                row["group_bacc_after"] = group_bacc(z - (z @ q) @ q.T)
                rows.append(row)
    gap = A.phone_gap_table(before, n_boot=st.n_boot, level=st.level, seed=st.seed)
    return rows, gap
