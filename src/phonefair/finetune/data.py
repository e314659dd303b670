"""Utterances, phone targets and batch sampling for CTC fine-tuning.

The corpus' phone table (time-aligned ARPABET-39 tokens) is turned into one *phone sequence* per recording: the
alignment's phones in time order with ``"sil"`` removed. Silence is not a target because CTC's blank already absorbs
non-speech frames, and keeping ``"sil"`` would make the model spend capacity on pause placement, which varies with
speaking style rather than with phonemes. Phones that are ``<NA>`` (unmappable labels) are also left out; every
removal is counted and reported in :attr:`UtteranceSet.problems`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.phonesets import ARPABET39, NON_SPEECH
from phonefair.corpus.schema import Corpus, CorpusError, problems_frame

__all__ = ["BLANK", "VOCAB", "Utterance", "UtteranceSet", "build_utterances", "encode_phones",
           "GroupBalancedSampler", "UniformSampler"]

#: CTC output classes: index 0 is the blank, then the 38 ARPABET-39 speech phones (``"sil"`` excluded)
BLANK = "<blank>"
VOCAB: tuple[str, ...] = (BLANK, *[p for p in ARPABET39 if p not in NON_SPEECH])
_INDEX = {p: i for i, p in enumerate(VOCAB)}


def encode_phones(phones: Sequence[str]) -> list[int]:
    """CTC target ids for a sequence of ARPABET-39 speech phones (``ValueError`` naming an unknown phone)."""
    try:
        return [_INDEX[p] for p in phones]
    except KeyError as exc:
        raise ValueError(f"phone {exc.args[0]!r} is not an ARPABET-39 speech phone; vocabulary: {VOCAB[1:]}") from None


@dataclass(frozen=True)
class Utterance:
    """One recording as a CTC training/evaluation item."""

    recording_id: str
    speaker: str
    group: str
    split: str
    targets: tuple[int, ...]  # CTC target ids (no blank)
    start: float  # seconds: the first aligned phone's start (audio before it is not read)
    end: float  # seconds: the last aligned phone's end


@dataclass
class UtteranceSet:
    """All usable utterances of a corpus plus what was left out and why."""

    utterances: list[Utterance]
    problems: pd.DataFrame
    n_sil_removed: int = 0
    n_na_removed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def subset(self, split: str | Sequence[str]) -> list[Utterance]:
        splits = {split} if isinstance(split, str) else set(split)
        return [u for u in self.utterances if u.split in splits]

    def summary(self) -> pd.DataFrame:
        """Utterances, speakers and target phones per split × group."""
        df = pd.DataFrame([{"split": u.split, "group": u.group, "speaker": u.speaker, "n": len(u.targets)}
                           for u in self.utterances])
        if df.empty:
            return pd.DataFrame(columns=["split", "group", "n_utterances", "n_speakers", "n_phones"])
        return (df.groupby(["split", "group"]).agg(n_utterances=("n", "size"), n_speakers=("speaker", "nunique"),
                                                   n_phones=("n", "sum")).reset_index())


def build_utterances(corpus: Corpus, groups: pd.Series) -> UtteranceSet:
    """One :class:`Utterance` per recording that has aligned speech phones, a group and a split.

    A recording is left out (with a row in ``problems``) when its speaker has no group, when its phones carry
    no split or several splits, or when no speech phone remains after removing ``"sil"`` and ``<NA>``.
    """
    ph = corpus.phones
    if ph.empty:
        raise CorpusError(f"corpus {corpus.name!r}: the phones table is empty")
    if ph["split"].isna().all():
        raise CorpusError(f"corpus {corpus.name!r}: phones table column 'split' is empty; assign speaker splits "
                          "first (phonefair.groups.split_speakers + apply_split)")
    grp = groups.copy()
    grp.index = grp.index.astype(str)
    problems: list[dict[str, Any]] = []
    utts: list[Utterance] = []
    n_sil = int((ph["phone"] == "sil").fillna(False).sum())
    n_na = int(ph["phone"].isna().sum())
    for rid, rows in ph.groupby("recording_id", sort=True):
        rid = str(rid)
        spk = str(rows["speaker"].iloc[0])
        where = f"recording {rid!r} (speaker {spk!r})"
        if rows["speaker"].nunique() > 1:
            problems.append(_problem(rid, "speaker", f"{where}: several speakers in one recording "
                                     f"{sorted(rows['speaker'].astype(str).unique())}", "skipped utterance"))
            continue
        if spk not in grp.index or pd.isna(grp[spk]):
            problems.append(_problem(rid, "speaker", f"{where}: speaker has no group", "skipped utterance"))
            continue
        splits = rows["split"].dropna().unique()
        if len(splits) != 1:
            problems.append(_problem(rid, "split", f"{where}: split is {list(map(str, splits)) or '<NA>'}; "
                                     "expected exactly one", "skipped utterance"))
            continue
        speech = rows[rows["phone"].notna() & ~rows["phone"].isin(list(NON_SPEECH))]
        if speech.empty:
            problems.append(_problem(rid, "phone", f"{where}: no speech phones after removing 'sil'/<NA>",
                                     "skipped utterance"))
            continue
        utts.append(Utterance(recording_id=rid, speaker=spk, group=str(grp[spk]), split=str(splits[0]),
                              targets=tuple(encode_phones(speech["phone"].astype(str).tolist())),
                              start=float(rows["start"].min()), end=float(rows["end"].max())))
    if n_na:
        problems.append({"severity": "warning", "file": corpus.source or corpus.name, "line": None,
                         "field": "phone", "message": f"{n_na} phone token(s) with <NA> phone are not CTC targets",
                         "action": "dropped phone"})
    return UtteranceSet(utterances=utts, problems=problems_frame(problems), n_sil_removed=n_sil, n_na_removed=n_na)


def _problem(rid: str, fld: str, message: str, action: str) -> dict[str, Any]:
    return {"severity": "error", "file": rid, "line": None, "field": fld, "message": message, "action": action}


class UniformSampler:
    """Batches drawn uniformly (without replacement within a batch) from the utterances.

    Batch ``t`` is a pure function of ``(seed, t)``, so a resumed run sees exactly the batches an uninterrupted one
    would have seen.
    """

    def __init__(self, utterances: Sequence[Utterance], batch_size: int, *, seed: int) -> None:
        if not utterances:
            raise ValueError("no training utterances")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.utterances = list(utterances)
        self.batch_size = batch_size
        self.seed = seed

    def batch(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        n = len(self.utterances)
        return rng.choice(n, size=self.batch_size, replace=self.batch_size > n).tolist()


class GroupBalancedSampler(UniformSampler):
    """Batches with (as nearly as possible) equal numbers of utterances from every group.

    Each batch takes ``batch_size // G`` utterances from every group, and the ``batch_size % G`` remaining slots go
    to groups chosen at random without replacement, so over many batches every group contributes the same expected
    number of utterances regardless of its size. Within a group utterances are drawn uniformly (with replacement
    only when the group has fewer utterances than its quota).
    """

    def __init__(self, utterances: Sequence[Utterance], batch_size: int, *, seed: int) -> None:
        super().__init__(utterances, batch_size, seed=seed)
        groups = np.array([u.group for u in self.utterances])
        self.groups = sorted(set(groups.tolist()))
        self._members = {g: np.flatnonzero(groups == g) for g in self.groups}

    def batch(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, step])
        n_g = len(self.groups)
        quota = np.full(n_g, self.batch_size // n_g)
        quota[rng.choice(n_g, size=self.batch_size % n_g, replace=False)] += 1
        out: list[int] = []
        for g, q in zip(self.groups, quota, strict=True):
            members = self._members[g]
            out.extend(rng.choice(members, size=int(q), replace=int(q) > len(members)).tolist())
        return out

