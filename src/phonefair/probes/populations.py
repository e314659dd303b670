"""Size-matched training populations.

Three kinds of training population (all from training-split speakers only):

``group``      the speakers of one group;
``pooled``     speakers of every group, the same number from each group (± 1 when it does not divide);
``leave_out``  speakers of every group except one, equally from the remaining groups.

Every population of every seed has **the same number of speakers** ``n_speakers`` (default: the smallest group's
number of training speakers) and **the same number of tokens** ``n_tokens`` (default: the smallest token total over
all sampled populations and seeds), so a difference between probes is never just more data. Tokens are allocated to
a population's speakers proportionally to how many each has (at least one each, largest-remainder rounding) and drawn
without replacement; phone frequencies are left as the speakers produced them (no class re-weighting), the same rule
for every population, which is why both accuracy and class-balanced accuracy are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

POPULATION_KINDS = ("pooled", "group", "leave_out")


@dataclass(frozen=True)
class Population:
    """One training population of one seed. ``group``: the trained group (``group``), the left-out group
    (``leave_out``) or ``None`` (``pooled``). ``rows``: sorted token rows of the source."""

    kind: str
    group: str | None
    seed: int
    speakers: tuple[str, ...]
    rows: np.ndarray

    @property
    def label(self) -> str:
        return self.kind if self.group is None else f"{self.kind}:{self.group}"

    @property
    def n_tokens(self) -> int:
        return int(len(self.rows))

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)


def _allocate(total: int, capacity: np.ndarray) -> np.ndarray:
    """Split ``total`` units over bins proportionally to ``capacity``, >= 1 per bin, never above capacity."""
    k = len(capacity)
    if total < k or total > capacity.sum():
        raise ValueError(f"cannot allocate {total} tokens over {k} speakers holding {int(capacity.sum())}")
    alloc = np.ones(k, dtype=np.int64)
    room = capacity - 1
    rest = total - k
    if rest and room.sum():
        exact = rest * room / room.sum()
        extra = np.floor(exact).astype(np.int64)
        alloc += extra
        left = rest - int(extra.sum())
        frac = exact - extra
        order = np.lexsort((np.arange(k), -frac))  # largest remainder first, ties by position (deterministic)
        for i in order:
            if left == 0:
                break
            if alloc[i] < capacity[i]:
                alloc[i] += 1
                left -= 1
    return alloc


def _spread(n: int, groups: list[str], rng: np.random.Generator) -> dict[str, int]:
    q, r = divmod(n, len(groups))
    extra = set(rng.permutation(len(groups))[:r].tolist())
    return {g: q + (1 if i in extra else 0) for i, g in enumerate(groups)}


def build_populations(
    train: pd.DataFrame,
    *,
    kinds: Sequence[str] = POPULATION_KINDS,
    seeds: Sequence[int] = (0, 1, 2),
    base_seed: int = 0,
    n_speakers: int | None = None,
    n_tokens: int | None = None,
) -> tuple[list[Population], dict[str, int]]:
    """Draw size-matched training populations.

    ``train`` has one row per training token with columns ``row`` (token row in the source), ``speaker`` and
    ``group``. Returns the populations (seed-major, then ``pooled``, ``group`` per group, ``leave_out`` per group)
    and ``{"n_speakers": ..., "n_tokens": ...}``. Seed ``s`` draws from ``numpy.random.default_rng([base_seed, s])``.
    """
    for c in ("row", "speaker", "group"):
        if c not in train.columns:
            raise ValueError(f"build_populations: training table lacks column {c!r}")
    if bad := [k for k in kinds if k not in POPULATION_KINDS]:
        raise ValueError(f"unknown population kind(s) {bad}; choose from {POPULATION_KINDS}")
    if not kinds:
        raise ValueError("at least one population kind is needed")
    if len(set(seeds)) != len(seeds) or not seeds:
        raise ValueError(f"seeds must be distinct and non-empty, got {list(seeds)}")
    groups = sorted(train["group"].astype(str).unique().tolist())
    if not groups:
        raise ValueError("no training tokens")
    if "leave_out" in kinds and len(groups) < 2:
        raise ValueError(f"leave_out populations need >= 2 groups; training data has {groups}")
    spk_group = train.drop_duplicates("speaker").set_index("speaker")["group"].astype(str)
    by_group = {g: np.sort(spk_group.index[spk_group == g].to_numpy().astype(str)) for g in groups}
    smallest = min(len(v) for v in by_group.values())
    n_spk = smallest if n_speakers is None else int(n_speakers)
    if not 1 <= n_spk <= smallest:
        raise ValueError(f"n_speakers={n_spk}: must be between 1 and the smallest group's training speakers "
                         f"({smallest}; per group: { {g: len(v) for g, v in by_group.items()} })")
    rows_by_spk = {str(s): np.sort(r.to_numpy()) for s, r in train.groupby("speaker", observed=True)["row"]}

    specs: list[tuple[str, str | None, list[str]]] = []
    for k in POPULATION_KINDS:  # fixed order, whatever order the caller gave
        if k not in kinds:
            continue
        if k == "pooled":
            specs.append((k, None, groups))
        elif k == "group":
            specs.extend((k, g, [g]) for g in groups)
        else:
            specs.extend((k, g, [h for h in groups if h != g]) for g in groups)

    chosen: list[tuple[str, str | None, int, list[str], np.random.Generator]] = []
    for s in seeds:
        rng = np.random.default_rng([int(base_seed), int(s)])
        for kind, g, eligible in specs:
            quota = _spread(n_spk, eligible, rng)
            spk: list[str] = []
            for h in eligible:
                if quota[h]:
                    spk.extend(rng.choice(by_group[h], size=quota[h], replace=False).tolist())
            chosen.append((kind, g, int(s), sorted(spk), rng))
    totals = [sum(len(rows_by_spk[x]) for x in spk) for _, _, _, spk, _ in chosen]
    n_tok = min(totals) if n_tokens is None else int(n_tokens)
    if not n_spk <= n_tok <= min(totals):
        raise ValueError(f"n_tokens={n_tok}: must be between n_speakers={n_spk} and the smallest sampled "
                         f"population's token total ({min(totals)})")
    out: list[Population] = []
    for kind, g, s, spk, rng in chosen:
        cap = np.array([len(rows_by_spk[x]) for x in spk])
        alloc = _allocate(n_tok, cap)
        rows = np.concatenate([rng.choice(rows_by_spk[x], size=a, replace=False) for x, a in zip(spk, alloc)])
        out.append(Population(kind=kind, group=g, seed=s, speakers=tuple(spk), rows=np.sort(rows)))
    return out, {"n_speakers": n_spk, "n_tokens": n_tok}


def inner_split(pop: Population, speaker_of_row: pd.Series, *, val_fraction: float = 0.25,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Speaker-disjoint fit/validation split of a population's rows (for choosing the L2 strength).

    ``round(val_fraction * n_speakers)`` speakers (at least 1, leaving at least 1) go to validation.
    """
    if pop.n_speakers < 2:
        raise ValueError(f"population {pop.label} (seed {pop.seed}) has {pop.n_speakers} speaker(s): cannot "
                         "choose L2 on held-out training speakers; pass a single-value l2_grid")
    n_val = min(pop.n_speakers - 1, max(1, int(round(val_fraction * pop.n_speakers))))
    rng = np.random.default_rng([int(seed), int(pop.seed), 7919])
    val_spk = set(rng.permutation(np.array(pop.speakers))[:n_val].tolist())
    is_val = speaker_of_row.loc[pop.rows].isin(val_spk).to_numpy()
    return pop.rows[~is_val], pop.rows[is_val]


__all__ = ["POPULATION_KINDS", "Population", "build_populations", "inner_split"]
