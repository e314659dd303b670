"""Speaker groups and speaker-disjoint splits.

A group is defined from speaker attributes: one attribute (``gender``), several crossed (``gender × dialect``),
a binned numeric attribute (``age`` → bands), with optional value mappings (merge rare accents) and an explicit
reference group. Groups with fewer than ``min_speakers`` speakers are *excluded from inference* with a reason; they
are never silently dropped: :attr:`GroupAssignment.excluded` lists them, and :func:`group_summary` counts them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, CorpusError
from phonefair.errors import ConfigError
from phonefair.settings import Settings, setting

MISSING = "<missing>"
#: how the labels of crossed attributes are joined into one group label (the only place this is decided)
GROUP_JOIN = " × "


@dataclass(frozen=True)
class GroupSpec(Settings):
    """``[groups]``: how speakers are grouped (the Python API and the TOML section share this class).

    Parameters
    ----------
    attributes:
        One or more speaker-table columns; several are crossed into an intersection (labels joined by ``" × "``).
        TOML: ``attribute = "dialect"`` or ``attributes = ["gender", "dialect"]``.
    bins:
        Per attribute, numeric bin edges (left-closed, right-open; e.g. ``{"age": [0, 30, 50, 120]}`` → ``"[0,30)"``).
        TOML may give a plain list when there is one attribute.
    mapping:
        Per attribute, a value → value map applied before crossing (e.g. merge ``{"accent": {"wales": "uk"}}``).
        Values not in a mapping keep their value. TOML may give a flat table when there is one attribute.
    reference:
        The reference group label (gaps and shifts are measured against it); ``None`` → the other groups.
    min_speakers:
        Groups with fewer speakers are excluded from inference (reported, with the reason); 2 is the floor for any
        between-speaker statistic (a pilot run: wide intervals, warnings).
    missing:
        What to do with speakers whose attribute is missing: ``"exclude"`` (reported) or ``"group"`` (they form a
        group labelled ``"<missing>"``).
    """

    section: ClassVar[str] = "[groups]"

    attributes: tuple[str, ...] = setting((), "speaker-table column(s) defining the groups", nonempty=False)
    bins: Mapping[str, Any] = setting({}, "per attribute: numeric bin edges (e.g. age bands)")
    mapping: Mapping[str, Any] = setting({}, "per attribute: raw value -> group label (merge or rename)")
    reference: str | None = setting(None, "reference group for gaps and shifts (default: the other groups)")
    min_speakers: int = setting(5, "smaller groups are excluded from inference and reported", min=1)
    missing: Literal["exclude", "group"] = setting("exclude", "speakers lacking the attribute")

    def __post_init__(self) -> None:
        if isinstance(self.attributes, str):
            object.__setattr__(self, "attributes", (self.attributes,))
        super().__post_init__()

    def validate(self) -> None:
        if not self.attributes:
            raise self.fail("attribute", "give exactly one of 'attribute' (one speaker attribute) or 'attributes' "
                                         "(a list, for intersectional groups)")
        bins = {}
        for a, edges in self.bins.items():
            if a not in self.attributes:
                raise self.fail("bins", f"{a!r} is not one of the attributes {list(self.attributes)}")
            ok = isinstance(edges, (list, tuple)) and len(edges) >= 2 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in edges)
            if not ok or any(b <= a_ for a_, b in zip(edges, edges[1:], strict=False)):
                raise self.fail("bins", f"expected at least two strictly increasing bin edges, got {list(edges)!r}"
                                if isinstance(edges, (list, tuple)) else f"expected a list of bin edges, got {edges!r}")
            bins[a] = tuple(float(x) for x in edges)
        mapping = {}
        for a, m in self.mapping.items():
            if a not in self.attributes:
                raise self.fail("mapping", f"{a!r} is not one of the attributes {list(self.attributes)}")
            if not isinstance(m, Mapping) or not all(isinstance(v, str) for v in m.values()):
                raise self.fail(f"mapping.{a}", f"expected a table of value = group label, got {m!r}")
            mapping[a] = {str(k): v for k, v in m.items()}
        object.__setattr__(self, "bins", bins)
        object.__setattr__(self, "mapping", mapping)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, where: str = "", base_dir: Any = None,
                     required: tuple[str, ...] = ()) -> GroupSpec:
        """TOML ``[groups]``: ``attribute`` or ``attributes``; ``bins`` / ``mapping`` per attribute, or (with one
        attribute) given directly."""
        prefix = f"{where}: " if where else ""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{prefix}[groups]: expected a table, got {data!r}")
        d = {k: v for k, v in data.items() if v is not None}
        if ("attribute" in d) == ("attributes" in d):
            raise ConfigError(f"{prefix}[groups] attribute: give exactly one of 'attribute' (one speaker attribute) "
                              "or 'attributes' (a list, for intersectional groups)")
        if "attribute" in d:
            a = d.pop("attribute")
            if not isinstance(a, str) or not a.strip():
                raise ConfigError(f"{prefix}[groups] attribute: expected a non-empty string, got {a!r}")
            d["attributes"] = (a,)
        attrs = d.get("attributes")
        if isinstance(attrs, list):
            attrs = tuple(attrs)
            d["attributes"] = attrs
        for key in ("bins", "mapping"):
            v = d.get(key)
            if not v or not isinstance(attrs, tuple):
                continue
            nested = isinstance(v, Mapping) and all(k in attrs for k in v) and all(
                isinstance(x, (Mapping, list)) for x in v.values())
            if nested:
                continue
            if len(attrs) != 1:
                raise ConfigError(f"{prefix}[groups] {key}: with several attributes give one entry per attribute "
                                  f"({', '.join(attrs)}), got {v!r}")
            d[key] = {attrs[0]: v}
        return super().from_mapping(d, where=where, base_dir=base_dir, required=required)

    @property
    def columns(self) -> tuple[str, ...]:
        """The speaker attributes that define the groups (alias of ``attributes``)."""
        return self.attributes

    @property
    def name(self) -> str:
        return GROUP_JOIN.join(self.attributes)


@dataclass
class GroupAssignment:
    """Result of :func:`assign_groups`.

    ``groups``: speaker → group label for speakers *included* in inference. ``excluded``: one row per excluded
    speaker with ``speaker``, ``group`` (label or <NA>) and ``reason``. ``all_groups``: speaker → label for every
    speaker with a label (including those in too-small groups), for descriptive tables.
    """

    spec: GroupSpec
    groups: pd.Series
    excluded: pd.DataFrame
    all_groups: pd.Series

    @property
    def reference(self) -> str | None:
        return self.spec.reference

    @property
    def labels(self) -> list[str]:
        return sorted(self.groups.unique().tolist())


def _bin_label(lo: float, hi: float) -> str:
    fmt = (lambda v: f"{v:g}")
    return f"[{fmt(lo)},{fmt(hi)})"


def _column(speakers: pd.DataFrame, attr: str, spec: GroupSpec) -> pd.Series:
    if attr not in speakers.columns:
        raise CorpusError(f"group attribute {attr!r} is not a speaker-table column; available: "
                          f"{[c for c in speakers.columns if c != 'speaker']}")
    col = speakers[attr]
    if attr in spec.bins:
        edges = list(spec.bins[attr])
        num = pd.to_numeric(col, errors="coerce")
        labels = [_bin_label(a, b) for a, b in zip(edges, edges[1:], strict=False)]
        out = pd.cut(num, bins=edges, right=False, labels=labels).astype("string")
    else:
        out = col.astype("string").str.strip().replace("", pd.NA)
    if attr in spec.mapping:
        m = {str(k): str(v) for k, v in spec.mapping[attr].items()}
        out = out.map(lambda v: m.get(v, v) if isinstance(v, str) else v).astype("string")
    return out


def assign_groups(speakers: pd.DataFrame | Corpus, spec: GroupSpec | str | Sequence[str]) -> GroupAssignment:
    """Assign every speaker to a group and decide which groups are large enough for inference."""
    if isinstance(speakers, Corpus):
        speakers = speakers.speakers
    if not isinstance(spec, GroupSpec):
        spec = GroupSpec(attributes=(spec,) if isinstance(spec, str) else tuple(spec))
    cols = [_column(speakers, a, spec) for a in spec.attributes]
    frame = pd.concat(cols, axis=1)
    has_missing = frame.isna().any(axis=1)
    if spec.missing == "group":
        frame = frame.fillna(MISSING)
        has_missing[:] = False
    label = frame.fillna("").astype(object).agg(lambda r: GROUP_JOIN.join(map(str, r)), axis=1).astype("string")
    label[has_missing] = pd.NA
    label.index = speakers["speaker"].astype(str).to_numpy()
    label.name = spec.name

    excluded: list[dict[str, Any]] = []
    for spk in label.index[label.isna()]:
        excluded.append({"speaker": spk, "group": pd.NA,
                         "reason": f"missing value for {'/'.join(spec.attributes)}"})
    all_groups = label.dropna()
    sizes = all_groups.value_counts()
    small = sizes[sizes < spec.min_speakers]
    for g, n in small.items():
        for spk in all_groups.index[all_groups == g]:
            excluded.append({"speaker": spk, "group": g,
                             "reason": f"group {g!r} has {n} speaker(s) < min_speakers={spec.min_speakers}"})
    groups = all_groups[~all_groups.isin(small.index)]
    if spec.reference is not None and spec.reference not in set(all_groups):
        raise CorpusError(f"reference group {spec.reference!r} does not exist; groups are "
                          f"{sorted(set(all_groups))}")
    if spec.reference is not None and spec.reference not in set(groups):
        raise CorpusError(f"reference group {spec.reference!r} is excluded (fewer than "
                          f"{spec.min_speakers} speakers)")
    exc = pd.DataFrame(excluded, columns=["speaker", "group", "reason"]).astype("string")
    return GroupAssignment(spec=spec, groups=groups.astype(str), excluded=exc, all_groups=all_groups.astype(str))


def group_summary(corpus: Corpus, assignment: GroupAssignment) -> pd.DataFrame:
    """Speakers, recordings, hours and phone tokens per group (every labelled group, with inclusion status)."""
    g = assignment.all_groups
    phones = corpus.phones.assign(group=corpus.phones["speaker"].map(g))
    rec = corpus.recordings.assign(group=corpus.recordings["speaker"].map(g))
    out = pd.DataFrame({
        "speakers": g.value_counts(),
        "recordings": rec.groupby("group")["recording_id"].nunique(),
        "hours": rec.groupby("group")["duration"].sum() / 3600,
        "phones": phones.groupby("group").size(),
        "phone_classes": phones.groupby("group")["phone"].nunique(),
    }).fillna(0)
    out.index.name = "group"
    for c in ("speakers", "recordings", "phones", "phone_classes"):
        out[c] = out[c].astype(int)
    included = set(assignment.groups.unique())
    out["included"] = [i in included for i in out.index]
    reasons = assignment.excluded.dropna(subset=["group"]).drop_duplicates("group").set_index("group")["reason"]
    out["reason"] = [reasons.get(i, "") for i in out.index]
    out["reference"] = [i == assignment.reference for i in out.index]
    out = out.reset_index()
    out.attrs["provenance"] = {"groups": assignment.spec.to_dict()}
    return out


def split_speakers(
    groups: pd.Series,
    *,
    test_fraction: float = 0.3,
    seed: int = 0,
    min_test: int = 2,
    min_train: int = 2,
) -> pd.Series:
    """Speaker-disjoint train/test split stratified by group, seeded and reproducible.

    Within each group, ``round(test_fraction * n)`` speakers (at least ``min_test``, leaving at least
    ``min_train``) go to ``"test"``. Returns speaker → ``"train"``/``"test"``. Raises when a group is too small
    to leave both sides non-empty.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    out = pd.Series("train", index=groups.index, dtype="string", name="split")
    for g in sorted(groups.unique()):
        spk = np.sort(groups.index[groups == g].to_numpy().astype(str))
        n = len(spk)
        n_test = max(min_test, int(round(test_fraction * n)))
        if n - n_test < min_train:
            raise CorpusError(f"group {g!r} has {n} speakers: cannot split into >= {min_train} train and "
                              f">= {min_test} test speakers")
        out[rng.permutation(spk)[:n_test]] = "test"
    return out


def apply_split(corpus: Corpus, split: pd.Series) -> Corpus:
    """Write a speaker → split mapping into the phone table's ``split`` column (other speakers get <NA>)."""
    phones = corpus.phones.assign(split=corpus.phones["speaker"].map(split).astype("string"))
    return corpus.with_tables(phones=phones)
