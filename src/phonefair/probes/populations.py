"""Training populations of the cross-fitted probes.

For every repeat ``r`` and speaker fold ``k`` of the :class:`~phonefair.audit.design.Design`, the test speakers are
the fold's speakers and the training speakers are all the others. From those training speakers:

``all``        every training token of every training speaker: the probe "trained on everyone", whose accuracy on
               the held-out speakers answers *is a group served worse?*;
``pooled``     ``n_speakers`` speakers spread evenly over the groups, ``n_tokens`` tokens (size-matched);
``group``      ``n_speakers`` speakers of one group, ``n_tokens`` tokens (size-matched): the in-group probe;
``leave_out``  ``n_speakers`` speakers of every group except one, ``n_tokens`` tokens (size-matched).

Every size-matched population of every fold and repeat has **the same number of speakers** (default: the smallest
number of training speakers any group has in any fold) and **the same number of tokens** (the smallest token total
over all sampled matched populations), so a difference between matched probes is never just more data. Tokens are
allocated to a population's speakers proportionally to how many each has (at least one each, largest-remainder
rounding) and drawn without replacement; phone frequencies stay as the speakers produced them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from phonefair import rng
from phonefair.audit.design import Design
from phonefair.errors import DataError

MATCHED_KINDS = ("pooled", "group", "leave_out")
POPULATION_KINDS = ("all", *MATCHED_KINDS)


@dataclass(frozen=True)
class Population:
    """One training population of one (repeat, fold). ``group``: the trained group (``group``), the left-out
    group (``leave_out``) or ``None``. ``rows``: sorted token rows of the source; ``speakers``: indices into
    ``Design.speakers``."""

    kind: str
    group: str | None
    repeat: int
    fold: int
    speakers: tuple[int, ...]
    rows: np.ndarray

    @property
    def label(self) -> str:
        return self.kind if self.group is None else f"{self.kind}:{self.group}"

    @property
    def key(self) -> tuple[str, str | None]:
        return (self.kind, self.group)

    @property
    def n_tokens(self) -> int:
        return int(len(self.rows))

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)


def allocate(total: int, capacity: np.ndarray) -> np.ndarray:
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
        order = np.lexsort((np.arange(k), -(exact - extra)))  # largest remainder first, ties by position
        for i in order:
            if left == 0:
                break
            if alloc[i] < capacity[i]:
                alloc[i] += 1
                left -= 1
    return alloc


def _spread(n: int, groups: list[int], gen: np.random.Generator) -> dict[int, int]:
    q, r = divmod(n, len(groups))
    extra = set(gen.permutation(len(groups))[:r].tolist())
    return {g: q + (1 if i in extra else 0) for i, g in enumerate(groups)}


def crossfit_populations(design: Design, *, kinds: Sequence[str] = ("pooled", "group"), seed: int = 0,
                         n_speakers: int | None = None, n_tokens: int | None = None
                         ) -> tuple[list[Population], dict[str, int]]:
    """Every training population of every (repeat, fold): ``all`` always, plus the size-matched ``kinds``.

    Returns the populations (repeat-major, fold, then ``all``, ``pooled``, ``group`` per group, ``leave_out`` per
    group) and the matched sizes ``{"n_speakers", "n_tokens"}`` (0 when no matched kind is asked for).
    """
    if bad := [k for k in kinds if k not in MATCHED_KINDS]:
        raise ValueError(f"unknown population kind(s) {bad}; choose from {MATCHED_KINDS}")
    G = design.n_groups
    if "leave_out" in kinds and G < 2:
        raise DataError("leave_out populations need >= 2 groups")
    tok = design.tokens
    rows_of = [np.sort(r.to_numpy()) for _, r in tok.groupby("speaker_idx", sort=True)["row"]]
    if len(rows_of) != design.n_speakers:
        raise DataError("every analysed speaker must have at least one token")
    n_tok_spk = np.array([len(r) for r in rows_of])
    R, S = design.folds.shape
    K = design.n_folds
    train_by: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for r in range(R):
        for k in range(K):
            tr = np.flatnonzero(design.folds[r] != k)
            train_by[(r, k)] = {g: tr[design.speaker_group[tr] == g] for g in range(G)}
    available = min(len(v) for d in train_by.values() for v in d.values())
    n_spk = 0
    if kinds:
        n_spk = available if n_speakers is None else int(n_speakers)
        if not 1 <= n_spk <= available:
            raise DataError(f"n_speakers={n_spk}: the smallest group has {available} training speaker(s) in some "
                            "fold; size-matched probes need at least 1")
    specs: list[tuple[str, str | None, list[int]]] = []
    for kind in MATCHED_KINDS:
        if kind not in kinds:
            continue
        if kind == "pooled":
            specs.append((kind, None, list(range(G))))
        elif kind == "group":
            specs.extend((kind, design.group_names[g], [g]) for g in range(G))
        else:
            specs.extend((kind, design.group_names[g], [h for h in range(G) if h != g]) for g in range(G))

    drawn: list[tuple[str, str | None, int, int, list[int], np.random.Generator]] = []
    for (r, k), by_group in train_by.items():
        for kind, g, eligible in specs:
            gen = rng.derive(seed, "population", r, k, kind, g or "")
            quota = _spread(n_spk, eligible, gen)
            spk: list[int] = []
            for h in eligible:
                if quota[h]:
                    spk.extend(gen.choice(by_group[h], size=quota[h], replace=False).tolist())
            drawn.append((kind, g, r, k, sorted(spk), gen))
    n_tok = 0
    if drawn:
        totals = [int(n_tok_spk[spk].sum()) for *_, spk, _ in drawn]
        n_tok = min(totals) if n_tokens is None else int(n_tokens)
        if not n_spk <= n_tok <= min(totals):
            raise DataError(f"n_tokens={n_tok}: must be between n_speakers={n_spk} and the smallest sampled "
                            f"population's token total ({min(totals)})")
    out: list[Population] = []
    matched = iter(drawn)
    for (r, k), by_group in train_by.items():
        tr = np.sort(np.concatenate(list(by_group.values())))
        out.append(Population("all", None, r, k, tuple(int(s) for s in tr), np.concatenate([rows_of[s] for s in tr])))
        for _ in specs:
            kind, g, r2, k2, spk, gen = next(matched)
            alloc = allocate(n_tok, n_tok_spk[spk])
            rows = np.concatenate([gen.choice(rows_of[s], size=a, replace=False) for s, a in zip(spk, alloc)])
            out.append(Population(kind, g, r2, k2, tuple(spk), np.sort(rows)))
    for p in out:
        p.rows.sort()
    return out, {"n_speakers": n_spk, "n_tokens": n_tok}


def inner_split(pop: Population, speaker_of_row: np.ndarray, *, val_fraction: float = 0.25, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray] | None:
    """Speaker-disjoint fit / validation rows of a population (for choosing the L2 strength), or ``None`` when it
    has fewer than 2 speakers (then it inherits the λ of its fold's ``all`` probe).

    ``round(val_fraction * n_speakers)`` speakers (at least 1, leaving at least 1) go to validation.
    ``speaker_of_row`` maps a source row to its speaker index.
    """
    if pop.n_speakers < 2:
        return None
    n_val = min(pop.n_speakers - 1, max(1, int(round(val_fraction * pop.n_speakers))))
    gen = rng.derive(seed, "inner-split", pop.repeat, pop.fold, pop.kind, pop.group or "")
    val = set(gen.permutation(np.array(pop.speakers))[:n_val].tolist())
    is_val = np.isin(speaker_of_row[pop.rows], list(val))
    return pop.rows[~is_val], pop.rows[is_val]


__all__ = ["MATCHED_KINDS", "POPULATION_KINDS", "Population", "allocate", "crossfit_populations", "inner_split"]
