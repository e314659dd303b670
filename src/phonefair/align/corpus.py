"""``align_corpus``: audio + transcripts -> one TextGrid per utterance, laid out as a phonefair corpus.

Output layout (``out_dir``), readable by ``phonefair.load_corpus("textgrid", out_dir, speakers=...)``::

    <speaker>/<stem>.<ext>             the utterance's audio (a symbolic link to the input file, or a copy)
    <speaker>/<stem>.TextGrid          tiers "words" and "phones"; silence = empty intervals
    speakers.csv | speakers.tsv        speaker metadata (Common Voice: its own columns, read by the CV rules)
    alignment_utterances.parquet       one row per input utterance: status, confidence, counts
    alignment_quality.parquet          one row per aligned phone: times, label, word, confidence
    alignment_problems.parquet (.csv)  one row per problem (kind: see phonefair.align.base.PROBLEM_KINDS)
    .phonefair-align/records/...       one record per utterance (resume state)

Resume: an utterance whose record carries the same key — backend identity, transcript, audio file path, size and
modification time — is not aligned again (failures included: change the input or pass ``resume=False`` to retry
them). Outputs are written to temporary files and renamed, so an interrupted run leaves no half-written file; the
TextGrid is written last and marks the utterance as done.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from phonefair.align.base import PROBLEM_KINDS, AlignedUtterance, Aligner, AlignmentFailure
from phonefair.align.inputs import AlignInput, InputKind, detect_kind, read_common_voice, read_folder, read_table
from phonefair.align.text import normalize_transcript
from phonefair.align.textgrid_out import write_textgrid
from phonefair.corpus.audio import AudioError, audio_problems, read_audio
from phonefair.corpus.phonesets import UnknownPhoneError, map_label
from phonefair.corpus.schema import PROBLEM_COLUMNS, Corpus
from phonefair.errors import ConfigError

__all__ = ["BACKENDS", "AlignResult", "BackendSpec", "align_corpus", "make_aligner", "read_alignment_tables"]

BACKENDS: tuple[str, ...] = ("pocketsphinx", "ctc")
SAMPLE_RATE = 16000
#: shortest audio worth aligning (seconds); backends check their own per-phone minimum on top
MIN_DURATION = 0.1
WORK_DIR = ".phonefair-align"
#: bump when the text normalisation or the record format changes (invalidates resume records)
RECORD_VERSION = 1
PROBLEM_TABLE_COLUMNS = ["severity", "kind", "recording_id", "speaker", *[c for c in PROBLEM_COLUMNS
                                                                          if c != "severity"]]
UTTERANCE_TABLE_COLUMNS = ["recording_id", "speaker", "status", "problem", "duration", "n_words", "n_phones",
                           "confidence", "text", "audio_source", "textgrid"]
QUALITY_TABLE_COLUMNS = ["recording_id", "speaker", "phone_index", "start", "end", "phone_raw", "phone", "word",
                         "word_index", "confidence"]


@dataclass(frozen=True)
class BackendSpec:
    """Everything a worker process needs to build its own aligner (picklable)."""

    backend: str = "pocketsphinx"
    model: str | None = None
    language: str = "en-US"
    device: str = "cpu"
    seed: int = 0


def make_aligner(spec: BackendSpec) -> Aligner:
    """Build the aligner ``spec`` names (:class:`ConfigError` for an unknown backend or a missing model)."""
    if spec.backend == "pocketsphinx":
        if spec.model is not None:
            raise ConfigError("backend 'pocketsphinx' uses its bundled US-English model; --model is for backend 'ctc'")
        from phonefair.align.sphinx import PocketsphinxAligner

        return PocketsphinxAligner(language=spec.language, seed=spec.seed)
    if spec.backend == "ctc":
        if spec.model is None:
            raise ConfigError("backend 'ctc' needs a model: a local CTC checkpoint folder or a phonefair finetune "
                              "output folder (--model DIR)")
        from phonefair.align.ctc import CTCAligner

        return CTCAligner(spec.model, language=spec.language, device=spec.device, seed=spec.seed)
    raise ConfigError(f"unknown alignment backend {spec.backend!r}; choose one of {BACKENDS}")


@dataclass
class AlignResult:
    """What :func:`align_corpus` produced (everything is also on disk under ``out_dir``)."""

    out_dir: Path
    utterances: pd.DataFrame  # alignment_utterances
    quality: pd.DataFrame  # alignment_quality (phone rows)
    problems: pd.DataFrame  # alignment_problems
    speakers_path: Path
    phone_scheme: str
    backend: dict[str, Any]
    counts: dict[str, int] = field(default_factory=dict)  # aligned / failed / resumed / input_problems

    def load(self, **options: Any) -> Corpus:
        """The aligned corpus through the generic TextGrid loader (``phonefair.load_corpus("textgrid", ...)``)."""
        from phonefair.corpus import load_corpus

        opts = {"speakers": self.speakers_path, "phone_scheme": self.phone_scheme, **options}
        return load_corpus("textgrid", self.out_dir, **opts)

    def quality_by_group(self, groups: pd.Series, **kwargs: Any) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        """:func:`phonefair.align.quality.alignment_quality_by_group` on this result's tables."""
        from phonefair.align.quality import alignment_quality_by_group

        return alignment_quality_by_group(self.quality, self.utterances, groups, **kwargs)


# ---------------------------------------------------------------------------------------------------- worker side
_ALIGNER: Aligner | None = None


def _init_worker(spec: BackendSpec, torch_threads: int | None) -> None:
    global _ALIGNER
    if torch_threads is not None:
        try:
            import torch

            torch.set_num_threads(torch_threads)
        except ImportError:  # pragma: no cover
            pass
    _ALIGNER = make_aligner(spec)


def _problem(kind: str, message: str, *, rid: str, speaker: str, file: str | None, severity: str = "error",
             action: str = "skipped utterance", line: int | None = None) -> dict[str, Any]:
    fld = ("audio" if kind.startswith("audio") else "transcript" if kind.startswith(("oov", "empty"))
           else "alignment")
    return {"severity": severity, "kind": kind, "recording_id": rid, "speaker": speaker, "file": file,
            "line": line, "field": fld, "message": message, "action": action}


def _atomic_parquet(df: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def _link_audio(src: Path, dst: Path, mode: str) -> None:
    """Place the input audio at ``dst``: a symbolic link (falls back to a copy where links are not allowed)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() and mode == "link" and Path(os.readlink(dst)) == src:
        return
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    if mode == "link":
        try:
            os.symlink(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    else:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)


def _remove_outputs(out: Path, task: dict[str, Any]) -> None:
    (out / f"{task['recording_id']}.TextGrid").unlink(missing_ok=True)
    audio_out = out / f"{task['recording_id']}{Path(task['audio']).suffix}"
    if audio_out.is_symlink() or audio_out.is_file():
        audio_out.unlink()


def _align_one(task: dict[str, Any]) -> dict[str, Any]:
    """Align one utterance and write its outputs; returns its record summary (status + problems)."""
    assert _ALIGNER is not None, "worker not initialised"
    out = Path(task["out_dir"])
    rid, spk, audio_path = task["recording_id"], task["speaker"], task["audio"]
    words = normalize_transcript(task["text"])
    base = {"recording_id": rid, "speaker": spk, "key": task["key"], "text": task["text"], "words": words,
            "audio_source": audio_path}
    problems: list[dict[str, Any]] = []

    def fail(kind: str, message: str, notes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        for n in notes or []:
            problems.append(_problem(n["kind"], n["message"], rid=rid, speaker=spk, file=audio_path,
                                     severity=n["severity"], action="kept word" if n["severity"] != "error" else
                                     "skipped utterance"))
        problems.append(_problem(kind, message, rid=rid, speaker=spk, file=audio_path))
        _remove_outputs(out, task)
        rec = {**base, "status": "failed", "problem": kind, "duration": duration, "problems": problems}
        _write_record(out, task, rec, None)
        return rec

    duration = float("nan")
    if not words:
        return fail("empty_transcript", f"no words in {task['text']!r} after normalisation")
    try:
        audio = read_audio(audio_path, target_sr=SAMPLE_RATE)
    except AudioError as exc:
        return fail("audio_unreadable", str(exc))
    duration = len(audio) / SAMPLE_RATE
    for q in audio_problems(audio_path, audio):
        if q["message"].startswith("silent audio"):
            return fail("audio_silent", q["message"])
        if q["message"].startswith("clipping"):
            problems.append(_problem("audio_clipping", q["message"], rid=rid, speaker=spk, file=audio_path,
                                     severity="warning", action="kept"))
    if duration < MIN_DURATION:
        return fail("audio_too_short", f"{duration:.3f} s of audio (minimum {MIN_DURATION} s)")
    try:
        result = _ALIGNER.align(audio, words)
    except AlignmentFailure as exc:
        return fail(exc.kind, exc.message, exc.notes)
    for n in result.notes:
        problems.append(_problem(n["kind"], n["message"], rid=rid, speaker=spk, file=audio_path,
                                 severity=n["severity"], action="kept"))
    phones = _phone_rows(result, rid, spk, _ALIGNER.phone_scheme)
    audio_out = out / f"{rid}{Path(audio_path).suffix}"
    _link_audio(Path(audio_path), audio_out, task["audio_mode"])
    conf = float(np.mean(phones["confidence"])) if len(phones) else float("nan")
    rec = {**base, "status": "aligned", "problem": None, "duration": duration, "problems": problems,
           "confidence": conf if math.isfinite(conf) else None}
    _write_record(out, task, rec, phones)
    write_textgrid(out / f"{rid}.TextGrid", _tiers(result), duration)  # last: marks the utterance done
    return rec


def _phone_rows(result: AlignedUtterance, rid: str, spk: str, scheme: str) -> pd.DataFrame:
    rows = []
    for i, p in enumerate(result.phones):
        try:
            targets, _ = map_label(p.label, scheme)
            cls = targets[0] if len(targets) == 1 else None  # multi-segment labels have no single class
        except UnknownPhoneError:
            cls = None
        rows.append({"recording_id": rid, "speaker": spk, "phone_index": i, "start": p.start, "end": p.end,
                     "phone_raw": p.label, "phone": cls, "word": result.words[p.word_index],
                     "word_index": p.word_index, "confidence": p.confidence})
    df = pd.DataFrame(rows, columns=QUALITY_TABLE_COLUMNS)
    return df.astype({"recording_id": "string", "speaker": "string", "phone_raw": "string", "phone": "string",
                      "word": "string", "phone_index": "int64", "word_index": "int64", "start": "float64",
                      "end": "float64", "confidence": "float64"})


def _tiers(result: AlignedUtterance) -> dict[str, list[tuple[float, float, str]]]:
    words: list[tuple[float, float, str]] = []
    for k, w in enumerate(result.words):
        mine = [p for p in result.phones if p.word_index == k]
        if mine:
            words.append((mine[0].start, mine[-1].end, w))
    return {"words": words, "phones": [(p.start, p.end, p.label) for p in result.phones]}


def _record_path(out: Path, rid: str) -> Path:
    return out / WORK_DIR / "records" / f"{rid}.parquet"


def _write_record(out: Path, task: dict[str, Any], rec: dict[str, Any], phones: pd.DataFrame | None) -> None:
    df = phones if phones is not None else pd.DataFrame(columns=QUALITY_TABLE_COLUMNS)
    df = df.copy()
    df.attrs = {"record": json.loads(json.dumps(rec, default=str))}
    _atomic_parquet(df, _record_path(out, task["recording_id"]))


def _read_record(out: Path, rid: str) -> tuple[dict[str, Any], pd.DataFrame] | None:
    p = _record_path(out, rid)
    if not p.is_file():
        return None
    try:
        df = pd.read_parquet(p)
    except (OSError, ValueError):  # a damaged record (ArrowInvalid is a ValueError) is redone, not trusted
        return None
    rec = df.attrs.get("record")
    return (rec, df) if isinstance(rec, dict) else None


# ---------------------------------------------------------------------------------------------------- main side
def _utterance_key(identity: dict[str, Any], row: pd.Series) -> str:
    try:
        st = os.stat(str(row["audio"]))
        audio_id = [str(row["audio"]), st.st_size, st.st_mtime_ns]
    except OSError:
        audio_id = [str(row["audio"]), None, None]
    blob = json.dumps({"v": RECORD_VERSION, "backend": identity, "text": str(row["text"]), "audio": audio_id},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_input(source: Path, kind: InputKind, speakers: str | os.PathLike[str] | None,
                columns: dict[str, str] | None) -> AlignInput:
    k = detect_kind(source) if kind == "auto" else kind
    cols = dict(columns or {})
    if unknown := set(cols) - {"audio", "text", "speaker"}:
        raise ConfigError(f"columns: unknown key(s) {sorted(unknown)}; use 'audio', 'text', 'speaker'")
    if k == "table":
        return read_table(source, audio_column=cols.get("audio"), text_column=cols.get("text"),
                          speaker_column=cols.get("speaker"))
    if cols:
        raise ConfigError(f"columns= applies to input kind 'table', not {k!r}")
    if k == "common_voice":
        if speakers is not None:
            raise ConfigError("Common Voice input carries its own speaker metadata; do not pass speakers=")
        return read_common_voice(source)
    if k == "folder":
        return read_folder(source, speakers=speakers)
    raise ConfigError(f"unknown input kind {kind!r}; choose 'auto', 'table', 'common_voice' or 'folder'")


def _write_metadata(out: Path, inp: AlignInput) -> Path:
    path = out / inp.metadata_name
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".tsv":
        import csv

        inp.metadata.to_csv(tmp, sep="\t", index=False, quoting=csv.QUOTE_NONE)
    else:
        inp.metadata.to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def _run_tasks(tasks: list[dict[str, Any]], spec: BackendSpec, aligner: Aligner, jobs: int, progress: bool
               ) -> Iterator[dict[str, Any]]:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc=f"aligning ({spec.backend})", unit="utt", disable=not progress)
    try:
        if jobs == 1 or len(tasks) <= 1:
            global _ALIGNER
            _ALIGNER = aligner
            for t in tasks:
                yield _guarded(t)
                bar.update(1)
            return
        import multiprocessing

        # spawn: the aligners hold C state (pocketsphinx, espeak-ng) and torch threads that must not be forked
        threads = 1 if spec.backend == "ctc" else None
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(spec, threads)) as pool:
            futures = {pool.submit(_guarded, t): t for t in tasks}
            for fut in as_completed(futures):
                yield fut.result()
                bar.update(1)
    finally:
        bar.close()


def _guarded(task: dict[str, Any]) -> dict[str, Any]:
    """:func:`_align_one`, with an unexpected exception turned into a reported (not persisted) failure so that one
    broken file cannot stop a long run and a rerun retries it."""
    try:
        return _align_one(task)
    except Exception as exc:  # noqa: BLE001 - reported as a problem row naming the exception
        return {"recording_id": task["recording_id"], "speaker": task["speaker"], "status": "failed",
                "problem": "internal_error", "duration": None, "text": task["text"], "audio_source": task["audio"],
                "words": [], "problems": [_problem("internal_error", f"{type(exc).__name__}: {exc}",
                                                   rid=task["recording_id"], speaker=task["speaker"],
                                                   file=task["audio"], action="skipped utterance (retried on "
                                                   "rerun)")]}


def align_corpus(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, kind: InputKind = "auto",
                 backend: Literal["pocketsphinx", "ctc"] = "pocketsphinx", model: str | os.PathLike[str] | None = None,
                 language: str = "en-US", speakers: str | os.PathLike[str] | None = None,
                 columns: dict[str, str] | None = None, jobs: int = 1, resume: bool = True, seed: int = 0,
                 device: str = "cpu", audio: Literal["link", "copy"] = "link", progress: bool = True) -> AlignResult:
    """Force-align every utterance of ``source`` and write a phonefair corpus to ``out_dir``.

    ``source`` / ``kind``: a CSV/TSV table, a Common Voice folder or clip TSV, or a folder of audio + ``.lab``/
    ``.txt`` (``phonefair.align.inputs``; ``"auto"`` detects it). ``speakers``: speaker table for folder input.
    ``columns``: for table input, ``{"audio": ..., "text": ..., "speaker": ...}`` column names.
    ``backend``: ``"pocketsphinx"`` (English, offline, bundled model) or ``"ctc"`` (``model`` = a local CTC phoneme
    checkpoint or a ``phonefair.finetune`` output folder; ``language`` = the espeak-ng voice used for G2P).
    ``jobs``: worker processes (1 = in this process). ``resume``: skip utterances already done with the same
    inputs and settings. ``audio``: ``"link"`` (symbolic links to the input audio) or ``"copy"``.

    Nothing is dropped silently: every input row that is not aligned has a row in ``result.problems``. Raises
    :class:`ConfigError` for bad settings (unknown backend or language, missing model, unreadable input table).
    """
    if jobs < 1:
        raise ConfigError(f"jobs must be >= 1, got {jobs}")
    if audio not in ("link", "copy"):
        raise ConfigError(f"audio must be 'link' or 'copy', got {audio!r}")
    src = Path(source).resolve()
    out = Path(out_dir).resolve()
    if out == src or (src.is_dir() and out in src.parents):
        raise ConfigError(f"--out {out} must not be the input folder {src} or contain it; choose a new folder")
    spec = BackendSpec(backend=backend, model=None if model is None else str(Path(model).resolve()),
                       language=language, device=device, seed=seed)
    aligner = make_aligner(spec)  # fails early on a bad setting, before any input is read
    identity = aligner.identity()
    inp = _read_input(src, kind, speakers, columns)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        shutil.rmtree(out / WORK_DIR, ignore_errors=True)

    utts = inp.utterances
    tasks: list[dict[str, Any]] = []
    records: dict[str, dict[str, Any]] = {}
    phone_frames: dict[str, pd.DataFrame] = {}
    n_resumed = 0
    for _, row in utts.iterrows():
        rid = str(row["recording_id"])
        key = _utterance_key(identity, row)
        old = _read_record(out, rid) if resume else None
        done = (out / f"{rid}.TextGrid").is_file() and (out / f"{rid}{Path(str(row['audio'])).suffix}").exists()
        if old is not None and old[0].get("key") == key and (old[0]["status"] == "failed" or done):
            records[rid], phone_frames[rid] = old
            n_resumed += 1
            continue
        tasks.append({"recording_id": rid, "speaker": str(row["speaker"]), "audio": str(row["audio"]),
                      "text": str(row["text"]), "key": key, "out_dir": str(out), "audio_mode": audio})
    for rec in _run_tasks(tasks, spec, aligner, jobs, progress):
        records[rec["recording_id"]] = rec
        got = _read_record(out, rec["recording_id"]) if rec.get("key") else None
        phone_frames[rec["recording_id"]] = got[1] if got is not None else pd.DataFrame(columns=QUALITY_TABLE_COLUMNS)

    speakers_path = _write_metadata(out, inp)
    return _finish(out, inp, utts, records, phone_frames, aligner, identity, speakers_path, n_resumed)


def _finish(out: Path, inp: AlignInput, utts: pd.DataFrame, records: dict[str, dict[str, Any]],
            phone_frames: dict[str, pd.DataFrame], aligner: Aligner, identity: dict[str, Any], speakers_path: Path,
            n_resumed: int) -> AlignResult:
    order = [str(r) for r in utts["recording_id"]]
    line_of = dict(zip(order, utts["line"], strict=True))
    utt_rows = []
    problems = list(inp.problems)
    for rid in order:
        rec = records[rid]
        ph = phone_frames.get(rid)
        n_ph = 0 if ph is None else len(ph)
        utt_rows.append({"recording_id": rid, "speaker": rec["speaker"], "status": rec["status"],
                         "problem": rec.get("problem"), "duration": rec.get("duration"),
                         "n_words": len(rec.get("words") or []), "n_phones": n_ph,
                         "confidence": rec.get("confidence"), "text": rec.get("text"),
                         "audio_source": rec.get("audio_source"),
                         "textgrid": f"{rid}.TextGrid" if rec["status"] == "aligned" else None})
        for q in rec.get("problems", []):
            problems.append({**q, "line": q.get("line") or line_of.get(rid)})
    utterances = pd.DataFrame(utt_rows, columns=UTTERANCE_TABLE_COLUMNS).astype(
        {"recording_id": "string", "speaker": "string", "status": "string", "problem": "string",
         "duration": "float64", "confidence": "float64", "text": "string", "audio_source": "string",
         "textgrid": "string"})
    frames = [phone_frames[r] for r in order if r in phone_frames and len(phone_frames[r])]
    quality = (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=QUALITY_TABLE_COLUMNS))
    quality = quality[QUALITY_TABLE_COLUMNS].astype(
        {"recording_id": "string", "speaker": "string", "phone_raw": "string", "phone": "string", "word": "string",
         "start": "float64", "end": "float64", "confidence": "float64", "phone_index": "int64",
         "word_index": "int64"})
    prob = pd.DataFrame(problems, columns=PROBLEM_TABLE_COLUMNS)
    for c in PROBLEM_TABLE_COLUMNS:
        prob[c] = prob[c].astype("Int64" if c == "line" else "string")
    counts = {"utterances": len(order), "aligned": int((utterances["status"] == "aligned").sum()),
              "failed": int((utterances["status"] != "aligned").sum()), "resumed": n_resumed,
              "input_problems": len(inp.problems)}
    prov = {"tool": "phonefair.align.align_corpus", "input_kind": inp.kind, "source": str(inp.source),
            "backend": identity, "phone_scheme": aligner.phone_scheme, "record_version": RECORD_VERSION,
            "text_normalisation": "NFKC + casefold; words = runs of letters/marks/digits with inner apostrophes; "
                                  "digits kept and pronounced by espeak-ng", "counts": counts,
            "problem_kinds": PROBLEM_KINDS, "speakers": speakers_path.name}
    for df in (utterances, quality, prob):
        df.attrs["provenance"] = prov
    _atomic_parquet(utterances, out / "alignment_utterances.parquet")
    _atomic_parquet(quality, out / "alignment_quality.parquet")
    _atomic_parquet(prob, out / "alignment_problems.parquet")
    prob.to_csv(out / "alignment_problems.csv", index=False)
    return AlignResult(out_dir=out, utterances=utterances, quality=quality, problems=prob,
                       speakers_path=speakers_path, phone_scheme=aligner.phone_scheme, backend=identity, counts=counts)


def read_alignment_tables(out_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(quality, utterances, problems)`` written by :func:`align_corpus` in ``out_dir`` (for the report)."""
    out = Path(out_dir)
    names = ("alignment_quality", "alignment_utterances", "alignment_problems")
    missing = [n for n in names if not (out / f"{n}.parquet").is_file()]
    if missing:
        raise ConfigError(f"{out}: no alignment tables {missing}; was it written by 'phonefair align'?")
    q, u, p = (pd.read_parquet(out / f"{n}.parquet") for n in names)
    return q, u, p
