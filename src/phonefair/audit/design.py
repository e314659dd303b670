"""The audit design, validated once: which tokens, speakers and groups are analysed, and the speaker folds.

Everything downstream (probes, verdicts, typology, lenses) reads the same :class:`Design`, so a speaker excluded
here is excluded everywhere, for one stated reason, in one ``problems`` table. Rules:

* tokens of speakers without a group label, with a missing phone, or with a phone in ``exclude_phones`` are left
  out (counted);
* groups with fewer than ``min_speakers`` speakers are excluded from inference (reported); 2 is the floor for any
  between-speaker statistic, and groups of 2–4 speakers make a *pilot* design (warnings, wide intervals);
* at least two groups must remain; a stated ``reference`` must be one of them;
* speakers are dealt into ``folds`` cross-fitting folds per repeat, stratified by group: each group's speakers in a
  seeded random order, round-robin, so every fold holds every group as evenly as its size allows and every speaker
  is tested exactly once per repeat.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phonefair import rng
from phonefair.errors import DataError
from phonefair.store.base import EmbeddingSource

__all__ = ["Design", "GroupsLike", "as_groups", "exclude_small_groups", "PILOT_SPEAKERS"]

#: groups smaller than this make a pilot design (warned about; intervals will be wide)
PILOT_SPEAKERS = 5

GroupsLike = pd.Series | Mapping[Any, Any] | tuple[pd.DataFrame, str]


def as_groups(groups: GroupsLike, *, name: str | None = None) -> pd.Series:
    """Normalise a speaker → group mapping: a ``Series`` indexed by speaker, a ``dict``, or ``(speaker_table,
    column)``. Returns a ``Series[str]`` indexed by ``str`` speaker ids (missing labels stay <NA>)."""
    if isinstance(groups, tuple) and len(groups) == 2 and isinstance(groups[0], pd.DataFrame):
        table, col = groups
        if "speaker" not in table.columns or col not in table.columns:
            raise DataError(f"groups: the speaker table needs columns 'speaker' and {col!r}; has "
                            f"{list(table.columns)}")
        s = pd.Series(table[col].to_numpy(), index=table["speaker"].astype(str).to_numpy(), name=col)
    elif isinstance(groups, pd.Series):
        s = groups.copy()
    elif isinstance(groups, Mapping):
        s = pd.Series(dict(groups), dtype=object)
    else:
        raise DataError(f"groups: expected a pandas Series (speaker -> group), a dict, or (speaker_table, column); "
                        f"got {type(groups).__name__}")
    s.index = pd.Index([str(i) for i in s.index])
    if s.index.has_duplicates:
        dup = s.index[s.index.duplicated()].unique().tolist()[:5]
        raise DataError(f"groups: speaker ids must be unique; duplicated: {dup}")
    out = s.astype("string").str.strip().replace("", pd.NA)
    out.name = name or (str(s.name) if s.name is not None else "group")
    return out


def exclude_small_groups(groups: pd.Series, min_speakers: int) -> tuple[pd.Series, pd.DataFrame]:
    """The one rule for group size: groups with fewer than ``min_speakers`` speakers are excluded (reported)."""
    sizes = groups.value_counts()
    small = sizes[sizes < min_speakers]
    rows = [{"speaker": s, "group": g, "reason": f"group {g!r} has {int(sizes[g])} speaker(s) < min_speakers="
                                                 f"{min_speakers}"}
            for g in small.index for s in groups.index[groups == g]]
    return groups[~groups.isin(small.index)], pd.DataFrame(rows, columns=["speaker", "group", "reason"])


@dataclass
class Design:
    """The analysed tokens, speakers, groups and folds (see the module docstring). Build with :meth:`build`."""

    tokens: pd.DataFrame  # row (source row), speaker, group, phone (str), speaker_idx, phone_idx, group_idx
    speakers: np.ndarray  # [S] str, sorted by (group, speaker)
    speaker_group: np.ndarray  # [S] int group index
    group_names: list[str]
    phones: list[str]
    reference: str | None
    folds: np.ndarray  # [repeats, S] fold index of every speaker
    problems: pd.DataFrame  # speaker / group / phone / reason
    warnings: list[str] = field(default_factory=list)
    groups_name: str = "group"

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, source: EmbeddingSource, groups: GroupsLike, *, reference: str | None = None,
              min_speakers: int = PILOT_SPEAKERS, exclude_phones: Sequence[str] = ("sil",), folds: int = 5,
              repeats: int = 1, seed: int = 0) -> Design:
        """Validate ``source`` × ``groups`` once; raise :class:`DataError` naming what is missing."""
        if min_speakers < 2:
            raise DataError(f"min_speakers={min_speakers}: between-speaker statistics need at least 2 speakers "
                            "per group")
        if folds < 2:
            raise DataError(f"folds={folds}: cross-fitting needs at least 2 speaker folds")
        tok = source.tokens
        for col in ("speaker", "phone"):
            if col not in tok.columns:
                raise DataError(f"the embeddings' token table has no {col!r} column (columns: {list(tok.columns)})")
        g = as_groups(groups)
        problems: list[dict[str, Any]] = []
        spk = tok["speaker"].astype(str).to_numpy()
        phone = tok["phone"].astype("string")
        token_speakers = pd.unique(spk)
        for s in g.index[g.isna()]:
            problems.append({"speaker": s, "reason": "group label is missing; speaker not analysed"})
        g = g.dropna().astype(str)
        not_grouped = sorted(set(token_speakers) - set(g.index))
        for s in not_grouped:
            problems.append({"speaker": s, "reason": "speaker has tokens but no group; not analysed"})
        for s in sorted(set(g.index) - set(token_speakers)):
            problems.append({"speaker": s, "group": g[s], "reason": "speaker has a group but no tokens"})
        g = g[g.index.isin(set(token_speakers))]
        g, small = exclude_small_groups(g, min_speakers)
        for grp, d in small.groupby("group"):
            problems.append({"group": grp, "reason": d["reason"].iloc[0] + "; excluded from inference"})
        names = sorted(g.unique().tolist())
        if len(names) < 2:
            sizes = as_groups(groups).dropna().value_counts().to_dict()
            raise DataError(f"need at least 2 groups with >= min_speakers={min_speakers} speakers that have tokens; "
                            f"got {names} (speakers per group: {sizes}). For a pilot run with very small groups "
                            "set min_speakers = 2.")
        if reference is not None and reference not in names:
            why = " (excluded: too few speakers)" if reference in set(small["group"]) else ""
            raise DataError(f"reference group {reference!r} is not among the analysed groups {names}{why}")

        excl = set(exclude_phones)
        keep = pd.Series(spk).isin(set(g.index)).to_numpy() & phone.notna().to_numpy()
        n_na = int((pd.Series(spk).isin(set(g.index)).to_numpy() & phone.isna().to_numpy()).sum())
        if n_na:
            problems.append({"reason": f"{n_na} token(s) without a phone label; not analysed"})
        phone_s = phone.fillna("").astype(str).to_numpy()
        is_ex = np.isin(phone_s, list(excl)) if excl else np.zeros(len(phone_s), bool)
        for p in sorted(set(phone_s[keep & is_ex])):
            problems.append({"phone": p, "reason": f"phone in exclude_phones: {int((phone_s[keep] == p).sum())} "
                                                   "token(s) not analysed"})
        keep &= ~is_ex
        rows = np.flatnonzero(keep)
        if len(rows) == 0:
            raise DataError("no tokens left after removing ungrouped speakers, missing and excluded phones")

        order = sorted(g.index, key=lambda s: (g[s], s))
        speakers = np.array(order, dtype=object)
        group_idx = np.array([names.index(g[s]) for s in speakers], dtype=np.int64)
        phones = sorted(set(phone_s[rows]))
        if len(phones) < 2:
            raise DataError(f"need at least 2 phone classes; the analysed tokens have {phones}")
        t = pd.DataFrame({"row": rows.astype(np.int64), "speaker": spk[rows], "phone": phone_s[rows]})
        t["speaker_idx"] = pd.Index(speakers).get_indexer(t["speaker"]).astype(np.int64)
        t["phone_idx"] = pd.Index(phones).get_indexer(t["phone"]).astype(np.int64)
        t["group_idx"] = group_idx[t["speaker_idx"].to_numpy()]
        t["group"] = np.array(names, dtype=object)[t["group_idx"].to_numpy()]

        fold_arr = np.stack([_deal_folds(group_idx, folds, rng.derive(seed, "folds", r)) for r in range(repeats)])
        warnings = []
        sizes = pd.Series(group_idx).value_counts().sort_index()
        pilot = [names[i] for i, n in sizes.items() if n < PILOT_SPEAKERS]
        if pilot:
            warnings.append(f"pilot-sized design: group(s) {pilot} have fewer than {PILOT_SPEAKERS} speakers; "
                            "intervals will be wide and small effects undetectable")
        return cls(tokens=t, speakers=speakers, speaker_group=group_idx, group_names=names, phones=phones,
                   reference=reference, folds=fold_arr,
                   problems=pd.DataFrame(problems, columns=["speaker", "group", "phone", "reason"]),
                   warnings=warnings, groups_name=str(g.name))

    # ------------------------------------------------------------------ views
    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    @property
    def n_groups(self) -> int:
        return len(self.group_names)

    @property
    def n_folds(self) -> int:
        return int(self.folds.max()) + 1

    @property
    def groups(self) -> pd.Series:
        """speaker → group label of the analysed speakers."""
        return pd.Series(np.array(self.group_names, dtype=object)[self.speaker_group], index=self.speakers,
                         name=self.groups_name)

    def group_sizes(self) -> pd.DataFrame:
        """Speakers and tokens per analysed group."""
        t = self.tokens
        out = pd.DataFrame({"group": self.group_names,
                            "speakers": np.bincount(self.speaker_group, minlength=self.n_groups),
                            "tokens": np.bincount(t["group_idx"], minlength=self.n_groups)})
        out["reference"] = out["group"] == self.reference
        return out

    def summary(self) -> dict[str, Any]:
        return {"groups": self.group_names, "reference": self.reference, "n_speakers": self.n_speakers,
                "n_tokens": int(len(self.tokens)), "n_phones": len(self.phones), "folds": self.n_folds,
                "repeats": int(self.folds.shape[0]),
                "speakers_per_group": dict(zip(self.group_names, np.bincount(self.speaker_group).tolist())),
                "warnings": list(self.warnings), "n_problems": int(len(self.problems))}


def _deal_folds(group_idx: np.ndarray, k: int, gen: np.random.Generator) -> np.ndarray:
    """Stratified fold assignment: each group's speakers in random order, dealt round-robin, the deal continuing
    across groups (from a random first fold), so folds differ in size by at most one speaker and every fold holds
    each group as evenly as its size allows."""
    out = np.empty(len(group_idx), dtype=np.int64)
    pos = int(gen.integers(k))
    for g in np.unique(group_idx):
        perm = gen.permutation(np.flatnonzero(group_idx == g))
        out[perm] = (pos + np.arange(len(perm))) % k
        pos = (pos + len(perm)) % k
    return out
