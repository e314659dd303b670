"""The corpus data model: three tidy tables and a JSON manifest.

Every loader (TIMIT, L2-ARCTIC, Buckeye, generic TextGrid folders, Common Voice, lhotse manifests, the synthetic
corpus) produces a :class:`Corpus`; every later stage reads one. Field names follow lhotse where they fit
(``recording_id``, ``speaker``, ``gender``, ``custom``). Times are seconds relative to the recording start.

Tables
------
``phones``      one row per aligned phone token, in a stable order (sorted by recording, then start time).
                The row position *is* the token id: embedding stores keep rows aligned with this table.
                Loaders may add corpus-specific columns after the standard ones (e.g. L2-ARCTIC's
                ``canonical`` phone and ``error_type``).
``speakers``    one row per speaker: ``speaker`` plus every demographic attribute the corpus has. The standard
                attributes have fixed names (``gender``, ``age``, ``age_band``, ``dialect``, ``accent``, ``l1``);
                any other column is a free-form corpus-specific attribute and is kept as is.
``recordings``  one row per recording: where the audio is and what it is.
``problems``    every problem a loader or :func:`phonefair.corpus.validate.validate_corpus` found
                (file, line, field, message, action taken) — nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from phonefair.errors import DataError

SCHEMA_VERSION = 1

#: phone-token table: column -> pandas dtype
PHONE_COLUMNS: dict[str, str] = {
    "recording_id": "string",
    "speaker": "string",
    "start": "float64",  # seconds from recording start
    "end": "float64",  # seconds, exclusive
    "phone_raw": "string",  # the label exactly as in the source
    "phone": "string",  # normalised ARPABET-39 (lower case, e.g. "iy", "sil"); <NA> if unmappable
    "stress": "Int8",  # ARPABET stress digit 0/1/2 when the source has one, else <NA>
    "word": "string",  # word containing the phone when known, else <NA>
    "split": "string",  # "train" / "dev" / "test" (or a loader's extra split such as "test_other") / <NA>
}

#: speaker table: the standard attribute names (all optional except ``speaker``)
SPEAKER_COLUMNS: dict[str, str] = {
    "speaker": "string",
    "gender": "string",
    "age": "float64",
    "age_band": "string",
    "dialect": "string",
    "accent": "string",
    "l1": "string",
}

RECORDING_COLUMNS: dict[str, str] = {
    "recording_id": "string",
    "speaker": "string",
    "audio_path": "string",  # absolute path, or relative to the manifest's ``source``
    "sampling_rate": "Int64",  # native rate of the file (audio is resampled to 16 kHz on read)
    "num_channels": "Int64",
    "duration": "float64",  # seconds
    "channel": "Int64",  # which channel to use for multi-channel files (<NA>: mono, or mixed down when ``mix``)
    # average all channels of a multi-channel file: set by the loader that admitted the file with mix=True, so
    # every stage that reads audio (extraction, validation, fine-tuning) mixes exactly when the loader was told to
    "mix": "boolean",
    # size / content hash of the audio file when a run loaded the corpus (phonefair.pipeline.inputs): extraction
    # stores are keyed by it, so replaced audio is re-extracted
    "audio_fingerprint": "string",
}

PROBLEM_COLUMNS: dict[str, str] = {
    "severity": "string",  # "error" (item excluded) / "warning" (kept, look at it) / "info" (expected, counted)
    "file": "string",
    "line": "Int64",
    "field": "string",
    "message": "string",
    "action": "string",  # what was done: "skipped utterance", "dropped phone", "kept", ...
}


class CorpusError(DataError):
    """A corpus could not be loaded or is invalid. The message names the file and field."""


def _typed(df: pd.DataFrame, columns: dict[str, str], table: str, *, extra_ok: bool) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns]
    required = {"phones": ["recording_id", "speaker", "start", "end", "phone_raw"],
                "speakers": ["speaker"], "recordings": ["recording_id", "speaker", "audio_path"],
                "problems": ["message"]}[table]
    if absent := [c for c in required if c not in df.columns]:
        raise CorpusError(f"{table} table lacks required column(s) {absent}; has {list(df.columns)}")
    out = df.copy()
    for c in missing:
        # float64 has no pd.NA: a missing float column is NaN
        fill = float("nan") if columns[c] == "float64" else pd.NA
        out[c] = pd.Series(fill, index=out.index, dtype=columns[c])
    if not extra_ok and (extra := [c for c in out.columns if c not in columns]):
        raise CorpusError(f"{table} table has unexpected column(s) {extra}")
    for c, dtype in columns.items():
        try:
            out[c] = out[c].astype(dtype)
        except (TypeError, ValueError) as exc:
            raise CorpusError(f"{table} table: column {c!r} cannot be read as {dtype}: {exc}") from exc
    ordered = list(columns) + [c for c in out.columns if c not in columns]
    return out[ordered].reset_index(drop=True)


def corpus_root(root: str | os.PathLike[str], corpus: str) -> Path:
    """The resolved corpus folder, or a :class:`CorpusError` naming it when it is not a directory."""
    path = Path(root)
    if not path.is_dir():
        raise CorpusError(f"{corpus} root {path} is not a directory")
    return path.resolve()


def empty_problems() -> pd.DataFrame:
    return _typed(pd.DataFrame({"message": pd.Series([], dtype="string")}), PROBLEM_COLUMNS, "problems",
                  extra_ok=False)


def problems_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Build a typed problems table from dicts with any subset of :data:`PROBLEM_COLUMNS`."""
    if not rows:
        return empty_problems()
    return _typed(pd.DataFrame(rows), PROBLEM_COLUMNS, "problems", extra_ok=False)


@dataclass
class Corpus:
    """A loaded corpus: phone tokens, speakers, recordings, problems and a manifest.

    Construct through a loader (``phonefair.corpus.load_corpus``) or directly; the constructor types and orders
    the tables, so every stage can rely on the column names and dtypes above.
    """

    phones: pd.DataFrame
    speakers: pd.DataFrame
    recordings: pd.DataFrame
    name: str = "corpus"
    source: str = ""
    phone_set: str = "arpabet39"
    loader: str = ""
    loader_version: str = "1"
    problems: pd.DataFrame = field(default_factory=empty_problems)
    extra: dict[str, Any] = field(default_factory=dict)  # loader options etc., kept in the manifest

    def __post_init__(self) -> None:
        self.phones = _typed(self.phones, PHONE_COLUMNS, "phones", extra_ok=True)
        self.phones = self.phones.sort_values(["recording_id", "start"], kind="stable").reset_index(drop=True)
        self.speakers = _typed(self.speakers, SPEAKER_COLUMNS, "speakers", extra_ok=True)
        self.recordings = _typed(self.recordings, RECORDING_COLUMNS, "recordings", extra_ok=False)
        self.problems = _typed(self.problems, PROBLEM_COLUMNS, "problems", extra_ok=False)
        if self.speakers["speaker"].duplicated().any():
            dup = self.speakers.loc[self.speakers["speaker"].duplicated(), "speaker"].tolist()[:5]
            raise CorpusError(f"speakers table: duplicated speaker id(s) {dup}")
        if self.recordings["recording_id"].duplicated().any():
            dup = self.recordings.loc[self.recordings["recording_id"].duplicated(), "recording_id"].tolist()[:5]
            raise CorpusError(f"recordings table: duplicated recording_id(s) {dup}")

    # ------------------------------------------------------------------ views
    @property
    def counts(self) -> dict[str, int]:
        return {
            "speakers": int(self.speakers["speaker"].nunique()),
            "recordings": int(len(self.recordings)),
            "phones": int(len(self.phones)),
            "problems": int(len(self.problems)),
        }

    @property
    def hours(self) -> float:
        return float(self.recordings["duration"].fillna(0).sum() / 3600)

    def manifest(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "source": self.source,
            "phone_set": self.phone_set,
            "loader": self.loader,
            "loader_version": self.loader_version,
            "counts": self.counts,
            "hours": round(self.hours, 6),
            "fingerprint": self.fingerprint(),
            "options": self.extra,
        }

    def fingerprint(self) -> str:
        """Content hash of the phone and recording tables (what extraction depends on)."""
        h = hashlib.sha256()
        cols = ["recording_id", "speaker", "start", "end", "phone_raw", "phone"]
        h.update(pd.util.hash_pandas_object(self.phones[cols], index=False).values.tobytes())
        rec = self.recordings[["recording_id", "audio_path", "channel", "audio_fingerprint"]]
        h.update(pd.util.hash_pandas_object(rec, index=False).values.tobytes())
        mix = self.recordings["mix"].fillna(False).astype(bool)
        if mix.any():  # hashed only when used, so the fingerprints of mono corpora stay what they were
            h.update(pd.util.hash_pandas_object(mix, index=False).values.tobytes())
        return h.hexdigest()[:16]

    def audio_path(self, recording_id: str) -> Path:
        """Absolute path of a recording's audio (relative paths are resolved against ``source``)."""
        row = self.recordings.loc[self.recordings["recording_id"] == recording_id]
        if row.empty:
            raise CorpusError(f"unknown recording_id {recording_id!r}")
        p = Path(str(row["audio_path"].iloc[0]))
        return p if p.is_absolute() else Path(self.source) / p

    def with_tables(self, **tables: pd.DataFrame) -> Corpus:
        """A copy with some tables replaced (e.g. ``corpus.with_tables(phones=...)``)."""
        kw = dict(phones=self.phones, speakers=self.speakers, recordings=self.recordings, problems=self.problems)
        kw.update(tables)
        return Corpus(**kw, name=self.name, source=self.source, phone_set=self.phone_set, loader=self.loader,
                      loader_version=self.loader_version, extra=dict(self.extra))

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``phones/speakers/recordings/problems.parquet`` and ``manifest.json`` atomically-ish
        (tables first, manifest last: a directory without a manifest is incomplete)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        man = d / "manifest.json"
        man.unlink(missing_ok=True)  # another writer may remove it between a check and the unlink
        from phonefair.io import write_json, write_table

        for name in ("phones", "speakers", "recordings", "problems"):
            write_table(getattr(self, name), d / name, csv=False)  # unique temporary names: concurrent runs
        write_json(man, self.manifest())  # strict JSON: NaN / inf become null
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Corpus:
        d = Path(directory)
        man_path = d / "manifest.json"
        if not man_path.exists():
            raise CorpusError(f"{d}: no manifest.json (not a saved phonefair corpus, or an interrupted save)")
        man = json.loads(man_path.read_text())
        if man.get("schema_version") != SCHEMA_VERSION:
            raise CorpusError(f"{man_path}: schema_version {man.get('schema_version')} != {SCHEMA_VERSION}")
        tables = {n: pd.read_parquet(d / f"{n}.parquet") for n in ("phones", "speakers", "recordings", "problems")}
        return cls(**tables, name=man["name"], source=man["source"], phone_set=man["phone_set"],
                   loader=man["loader"], loader_version=man["loader_version"], extra=man.get("options", {}))

    def __repr__(self) -> str:
        c = self.counts
        return (f"Corpus({self.name!r}: {c['speakers']} speakers, {c['recordings']} recordings, "
                f"{c['phones']} phones, {self.hours:.2f} h, {c['problems']} problems)")
