"""Exchange corpora with lhotse manifests (``RecordingSet`` + ``SupervisionSet``). lhotse is optional:
``pip install 'phonefair[lhotse]'``.

Mapping (one supervision per recording, covering the whole recording):

* ``Recording``: ``id`` = ``recording_id``, one ``AudioSource(type="file")`` with the absolute audio path,
  native ``sampling_rate``, ``num_samples`` and ``duration``.
* ``SupervisionSegment``: ``speaker``; ``gender`` (phonefair's value, e.g. ``"female"``); ``custom`` = the
  speaker's other non-missing attributes (``age``, ``dialect``, ``l1``, ...) plus ``split`` when known;
  ``alignment={"phone": [...], "word": [...]}`` with ``AlignmentItem(symbol, start, duration)``. The phone symbol
  is ``phone_raw`` (the source label), so :func:`from_lhotse` with the corpus' phone scheme reproduces ``phone``.
* **Times.** lhotse alignment times are relative to the *recording*, not to the supervision (lhotse 1.33.0
  ``lhotse/supervision.py``: ``AlignmentItem`` docstring "start time (w.r.t. the start of recording)";
  ``SupervisionSet.with_alignment_from_ctm`` copies CTM times, which are recording times, unchanged), and so are
  phonefair's. No offset is applied in either direction.

Not carried: corpus-specific phone columns (L2-ARCTIC ``canonical``/``error_type``), ``stress`` (recomputed from
``phone_raw``) and the problems table.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from phonefair.corpus.phonesets import normalize_phones
from phonefair.corpus.schema import Corpus, CorpusError, problems_frame
from phonefair.corpus.timit import words_by_midpoint

if TYPE_CHECKING:  # pragma: no cover
    from lhotse import RecordingSet, SupervisionSet

__all__ = ["from_lhotse", "to_lhotse"]

_GENDER = {"m": "male", "male": "male", "f": "female", "female": "female"}


def _lhotse() -> Any:
    try:
        import lhotse
    except ImportError as exc:
        raise ImportError("lhotse is not installed; the lhotse adapter needs it: pip install 'phonefair[lhotse]'"
                          ) from exc
    return lhotse


def _clean(v: Any) -> Any:
    """JSON-friendly scalar (lhotse manifests are serialised as JSON)."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v.item() if hasattr(v, "item") else v


def to_lhotse(corpus: Corpus) -> tuple[RecordingSet, SupervisionSet]:
    """A corpus as lhotse ``(RecordingSet, SupervisionSet)``; see the module docstring for the mapping."""
    lh = _lhotse()
    from lhotse.supervision import AlignmentItem

    spk = corpus.speakers.set_index("speaker")
    recordings, supervisions = [], []
    phones_by_rec = {k: g for k, g in corpus.phones.groupby("recording_id", sort=False)}
    for row in corpus.recordings.itertuples(index=False):
        rid = str(row.recording_id)
        sr = _clean(row.sampling_rate)
        dur = _clean(row.duration)
        nch = _clean(row.num_channels) or 1
        if sr is None or dur is None:
            raise CorpusError(f"recording {rid!r}: sampling_rate and duration are needed for lhotse")
        rec = lh.Recording(id=rid, sources=[lh.AudioSource(type="file", channels=list(range(nch)),
                                                           source=str(corpus.audio_path(rid)))],
                           sampling_rate=int(sr), num_samples=int(round(dur * sr)), duration=float(dur))
        recordings.append(rec)
        ph = phones_by_rec.get(rid)
        phone_ali, word_ali = [], []
        split = None
        if ph is not None:
            for a, b, raw in zip(ph["start"], ph["end"], ph["phone_raw"], strict=True):
                phone_ali.append(AlignmentItem(symbol=str(raw), start=float(a), duration=float(b - a)))
            word_ali = _word_items(ph, AlignmentItem)
            splits = ph["split"].dropna().unique()
            split = str(splits[0]) if len(splits) == 1 else None
        speaker = str(row.speaker)
        attrs = spk.loc[speaker].to_dict() if speaker in spk.index else {}
        custom = {k: _clean(v) for k, v in attrs.items() if k != "gender" and _clean(v) is not None}
        if split is not None:
            custom["split"] = split
        channel = _clean(row.channel)
        supervisions.append(lh.SupervisionSegment(
            id=rid, recording_id=rid, start=0.0, duration=float(dur),
            channel=int(channel) if channel is not None else (0 if nch == 1 else list(range(nch))),
            speaker=speaker, gender=_clean(attrs.get("gender")), custom=custom or None,
            alignment={"phone": phone_ali, "word": word_ali}))
    return lh.RecordingSet.from_recordings(recordings), lh.SupervisionSet.from_segments(supervisions)


def _word_items(ph: pd.DataFrame, item: Any) -> list[Any]:
    """Word intervals from runs of consecutive phones with the same ``word`` (a word spans its phones)."""
    out = []
    cur: list[Any] | None = None
    for a, b, w in zip(ph["start"], ph["end"], ph["word"], strict=True):
        w = _clean(w)
        if cur is not None and w == cur[0] and abs(a - cur[2]) < 1e-9:
            cur[2] = float(b)
            continue
        if cur is not None:
            out.append(item(symbol=cur[0], start=cur[1], duration=cur[2] - cur[1]))
        cur = [w, float(a), float(b)] if w is not None else None
    if cur is not None:
        out.append(item(symbol=cur[0], start=cur[1], duration=cur[2] - cur[1]))
    return out


def from_lhotse(recordings: RecordingSet, supervisions: SupervisionSet, *, phone_scheme: str = "arpabet",
                unknown: str = "drop", name: str = "lhotse") -> Corpus:
    """A corpus from lhotse manifests whose supervisions carry ``alignment["phone"]`` (recording-relative times).

    ``phone_scheme`` names the phone map for the alignment symbols (``"arpabet"``, ``"timit"``, ``"mfa_ipa"``,
    ``"espeak_ipa"``). Speakers come from supervision ``speaker`` / ``gender`` (``M``/``F`` -> ``male``/``female``)
    and ``custom`` (every key except ``split``, which goes to the phone table). Recordings that are not plain files,
    supervisions without a phone alignment and conflicting speaker attributes give problem rows.
    """
    _lhotse()
    problems: list[dict[str, Any]] = []

    def problem(severity: str, rid: str, field: str, message: str, action: str) -> None:
        problems.append({"severity": severity, "file": None, "line": None, "field": field,
                         "message": f"recording {rid!r}: {message}", "action": action})

    recs: list[dict[str, Any]] = []
    for r in recordings:
        files = [s for s in r.sources if s.type == "file"]
        if not files:
            problem("error", r.id, "sources", f"no file audio source (types {[s.type for s in r.sources]})",
                    "skipped recording")
            continue
        if len(r.sources) > 1:
            problem("warning", r.id, "sources", f"{len(r.sources)} audio sources; using {files[0].source}", "kept")
        recs.append({"recording_id": r.id, "speaker": None, "audio_path": str(files[0].source),
                     "sampling_rate": r.sampling_rate, "num_channels": len(r.channel_ids),
                     "duration": float(r.duration), "channel": None})
    rec_ids = {r["recording_id"]: r for r in recs}

    rows: list[dict[str, Any]] = []
    speakers: dict[str, dict[str, Any]] = {}
    for s in supervisions:
        if s.recording_id not in rec_ids:
            problem("error", s.recording_id, "recording_id", f"supervision {s.id!r} has no usable recording",
                    "skipped supervision")
            continue
        speaker = s.speaker if s.speaker is not None else s.recording_id
        if s.speaker is None:
            problem("warning", s.recording_id, "speaker", f"supervision {s.id!r} has no speaker", "speaker = "
                    "recording_id")
        rec = rec_ids[s.recording_id]
        if rec["speaker"] not in (None, speaker):
            problem("warning", s.recording_id, "speaker", f"several speakers ({rec['speaker']}, {speaker}); the "
                    "recording table keeps the first", "kept")
        rec["speaker"] = rec["speaker"] or speaker
        if isinstance(s.channel, int) and rec["num_channels"] > 1:
            rec["channel"] = s.channel
        custom = dict(s.custom or {})
        split = custom.pop("split", None)
        attrs = {"gender": _GENDER.get(str(s.gender).lower(), s.gender) if s.gender is not None else None,
                 **{k: v for k, v in custom.items() if isinstance(v, str | int | float | bool) or v is None}}
        known = speakers.setdefault(speaker, {"speaker": speaker})
        for k, v in attrs.items():
            if v is None:
                continue
            if k in known and known[k] != v:
                problem("warning", s.recording_id, k, f"speaker {speaker}: {k}={v!r} conflicts with {known[k]!r}",
                        "kept first")
            known.setdefault(k, v)
        ali = (s.alignment or {}).get("phone")
        if not ali:
            problem("warning", s.recording_id, "alignment", f"supervision {s.id!r} has no phone alignment",
                    "no phones")
            continue
        if s.start > 0 and all(it.start + it.duration <= s.duration + 1e-6 for it in ali) and \
                any(it.start < s.start - 1e-6 for it in ali):
            problem("warning", s.recording_id, "alignment", "phone times look supervision-relative (lhotse "
                    "alignments are recording-relative)", "kept as recording times")
        words = [(it.start, it.start + it.duration, it.symbol) for it in (s.alignment or {}).get("word", [])]
        starts = [float(it.start) for it in ali]
        ends = [float(it.start + it.duration) for it in ali]
        for it, a, b, w in zip(ali, starts, ends, words_by_midpoint(starts, ends, words), strict=True):
            rows.append({"recording_id": s.recording_id, "speaker": speaker, "start": a, "end": b,
                         "phone_raw": it.symbol, "word": w, "split": split})
    for r in recs:
        if r["speaker"] is None:
            problem("warning", r["recording_id"], "speaker", "no supervision", "speaker = recording_id")
            r["speaker"] = r["recording_id"]
            speakers.setdefault(r["speaker"], {"speaker": r["speaker"]})

    raw = pd.DataFrame(rows, columns=["recording_id", "speaker", "start", "end", "phone_raw", "word", "split"])
    phones, prob = normalize_phones(raw, phone_scheme, unknown=unknown)  # type: ignore[arg-type]
    problems.extend(prob)
    attrs_ = dict(phones.attrs)
    spk_table = pd.DataFrame(list(speakers.values()))
    spk_table["age"] = pd.to_numeric(spk_table["age"], errors="coerce") if "age" in spk_table else float("nan")
    for r in recs:  # a supervision over all channels of a multi-channel recording: mix them down
        r["mix"] = r["channel"] is None and r["num_channels"] > 1
    corpus = Corpus(phones=phones, speakers=spk_table,
                    recordings=pd.DataFrame(recs, columns=["recording_id", "speaker", "audio_path", "sampling_rate",
                                                           "num_channels", "duration", "channel", "mix"]),
                    name=name, source="", loader="phonefair.corpus.lhotse_io", loader_version="1",
                    problems=problems_frame(problems),
                    extra={"phone_scheme": phone_scheme, "unknown": unknown,
                           "alignment_times": "recording-relative (lhotse convention)"})
    corpus.phones.attrs["provenance"] = {**attrs_, "loader": "phonefair.corpus.lhotse_io"}
    return corpus


def load_lhotse_dir(root: str | os.PathLike[str], *, phone_scheme: str = "arpabet", unknown: str = "drop",
                    name: str | None = None) -> Corpus:
    """Load a directory holding one lhotse recordings manifest and one supervisions manifest
    (``*recordings*.jsonl[.gz]`` and ``*supervisions*.jsonl[.gz]``, as lhotse recipes write them)."""
    lhotse = _lhotse()
    d = Path(root)
    found = {}
    for kind in ("recordings", "supervisions"):
        cands = sorted(p for p in d.iterdir() if kind in p.name and p.name.endswith((".jsonl", ".jsonl.gz")))
        if len(cands) != 1:
            raise CorpusError(f"{d}: expected exactly one *{kind}*.jsonl[.gz] manifest, found "
                              f"{[p.name for p in cands] or 'none'}")
        found[kind] = cands[0]
    recs = lhotse.RecordingSet.from_file(found["recordings"])
    sups = lhotse.SupervisionSet.from_file(found["supervisions"])
    return from_lhotse(recs, sups, phone_scheme=phone_scheme, unknown=unknown,  # type: ignore[arg-type]
                       name=name or d.name)
