"""A synthetic multi-accent speech corpus from espeak-ng, with exact phone boundaries.

What it is for: an offline demo and test corpus that runs the whole phonefair pipeline on a laptop (no corpus
licence, no download). Speaker "groups" are espeak's rule-based English accent voices crossed with its voice
variants; every speaker gets its own seeded pitch, speaking rate, pitch range and volume, and an accent group can
get a channel (white noise at a given SNR, a low-pass filter). It is **not** a substitute for real speakers: see
``docs/synthetic.md``.

Layout written to ``out_dir``::

    audio/<speaker>/<recording_id>.wav          16 kHz mono PCM_16 (espeak's 22050 Hz resampled with soxr)
    alignments/<speaker>/<recording_id>.TextGrid tiers "phones" (espeak IPA labels) and "words"
    speakers.csv                                 one row per speaker with every synthesis setting
    utterances.csv                               recording_id, speaker, sentence_id, text, round, gain
    phones/speakers/recordings/problems.parquet, manifest.json   (phonefair.corpus.schema.Corpus.save)

Silence policy: the leading and trailing silence of an utterance get **no** phone row (and no TextGrid interval);
pauses inside an utterance (clause boundaries) become rows with ``phone_raw="_"`` and ``phone="sil"``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phonefair.corpus.schema import Corpus, CorpusError, problems_frame
from phonefair.io import dumps_strict
from phonefair.synth.espeak import ACCENT_VOICES, VARIANTS, Synthesis, get_synth, voice_name
from phonefair.synth.sentences import SENTENCES

__all__ = [
    "DEFAULT_ACCENTS",
    "FAMILY_NAMES",
    "SYNTH_SAMPLE_RATE",
    "SpeakerSettings",
    "build_synthetic_corpus",
    "events_to_phones",
    "plan_speakers",
]

#: accents of the default demo corpus: two American/British standards and two clearly different accents
DEFAULT_ACCENTS: tuple[str, ...] = ("en-US", "en-GB-x-rp", "en-GB-scotland", "en-029")
#: espeak voice-variant family -> value of the ``gender`` column (a voice family, NOT a speaker's gender)
FAMILY_NAMES: dict[str, str] = {"m": "male", "f": "female"}
#: sample rate of the written audio
SYNTH_SAMPLE_RATE = 16000
PAUSE_LABEL = "_"

# per-speaker setting ranges (inclusive); volume stays well below espeak's clipping region (>150)
_PITCH = (25, 75)
_RATE = (140, 210)
_RANGE = (30, 80)
_VOLUME = (60, 100)


@dataclass(frozen=True)
class SpeakerSettings:
    """Every setting that defines one synthetic speaker (one row of ``speakers.csv``)."""

    speaker: str
    accent: str
    gender: str  # voice family "male"/"female", not a gender
    voice: str
    variant: str
    pitch: int
    rate: int
    range: int
    volume: int
    snr_db: float | None
    lowpass_hz: float | None
    seed: int


def _per_accent(value: Mapping[str, float] | float | None, accent: str, what: str,
                accents: Sequence[str]) -> float | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        if unknown := sorted(set(value) - set(accents)):
            raise ValueError(f"{what}: accent(s) {unknown} are not among the corpus accents {list(accents)}")
        v = value.get(accent)
        return None if v is None else float(v)
    return float(value)


def plan_speakers(accents: Sequence[str] = DEFAULT_ACCENTS, *, speakers_per_group: int = 5,
                  families: Sequence[str] = ("m", "f"), seed: int = 0,
                  snr_db: Mapping[str, float] | float | None = None,
                  lowpass_hz: Mapping[str, float] | float | None = None) -> list[SpeakerSettings]:
    """The speakers of a synthetic corpus: ``speakers_per_group`` per (accent, voice family) cell.

    Variants are dealt round-robin from a seeded shuffle of the family's variants (m1..m7, f1..f4); pitch, rate,
    range and volume are drawn uniformly from fixed ranges with a per-speaker seed derived from ``seed``.
    """
    if unknown := [a for a in accents if a not in ACCENT_VOICES]:
        raise ValueError(f"unknown accent(s) {unknown}; available: {list(ACCENT_VOICES)}")
    if len(set(accents)) != len(accents) or not accents:
        raise ValueError(f"accents must be a non-empty list without duplicates, got {list(accents)}")
    if unknown := [f for f in families if f not in VARIANTS]:
        raise ValueError(f"unknown voice famil(ies) {unknown}; available: {list(VARIANTS)}")
    if speakers_per_group < 1:
        raise ValueError(f"speakers_per_group must be >= 1, got {speakers_per_group}")
    for what, v in (("snr_db", snr_db), ("lowpass_hz", lowpass_hz)):
        for a in accents:
            x = _per_accent(v, a, what, accents)
            if what == "lowpass_hz" and x is not None and not 50 <= x < SYNTH_SAMPLE_RATE / 2:
                raise ValueError(f"lowpass_hz for {a} must be in [50, {SYNTH_SAMPLE_RATE // 2}) Hz, got {x}")
    out: list[SpeakerSettings] = []
    for ai, accent in enumerate(accents):
        for fi, fam in enumerate(families):
            cell_rng = np.random.default_rng([seed, ai, fi])
            variants = list(cell_rng.permutation(VARIANTS[fam]))
            for k in range(speakers_per_group):
                variant = str(variants[k % len(variants)])
                spk_seed = int(np.random.SeedSequence([seed, ai, fi, k]).generate_state(1)[0])
                r = np.random.default_rng(spk_seed)
                out.append(SpeakerSettings(
                    speaker=f"{accent}_{variant}_s{k + 1:02d}", accent=accent, gender=FAMILY_NAMES[fam],
                    voice=voice_name(accent, variant), variant=variant,
                    pitch=int(r.integers(_PITCH[0], _PITCH[1] + 1)), rate=int(r.integers(_RATE[0], _RATE[1] + 1)),
                    range=int(r.integers(_RANGE[0], _RANGE[1] + 1)),
                    volume=int(r.integers(_VOLUME[0], _VOLUME[1] + 1)),
                    snr_db=_per_accent(snr_db, accent, "snr_db", accents),
                    lowpass_hz=_per_accent(lowpass_hz, accent, "lowpass_hz", accents), seed=spk_seed))
    return out


def events_to_phones(syn: Synthesis) -> pd.DataFrame:
    """espeak onset events -> intervals ``start, end, phone_raw, word`` (seconds).

    A phone ends at the next event. Runs of empty-name events are pauses: inside the utterance they become one
    ``"_"`` row; the leading silence (before the first phone) and the trailing one (after the last) get no row.
    """
    ev = syn.events
    rows: list[tuple[float, float, str, str | None]] = []
    n = len(ev)
    i = 0
    while i < n - 1:
        onset, label = ev[i]
        if label == "":
            j = i + 1
            while j < n - 1 and ev[j].label == "":  # merge a run of pause events
                j += 1
            # ev[j] is a phone (an internal pause) or the final end-of-audio event (the trailing silence)
            if rows and ev[j].label != "":
                rows.append((onset / 1000, ev[j].onset_ms / 1000, PAUSE_LABEL, None))
            i = j
        else:
            rows.append((onset / 1000, ev[i + 1].onset_ms / 1000, label, syn.words[i]))
            i += 1
    rows = [r for r in rows if r[1] > r[0]]  # zero-length events carry no audio
    return pd.DataFrame(rows, columns=["start", "end", "phone_raw", "word"])


def _channel(x: np.ndarray, spk: SpeakerSettings, rng: np.random.Generator) -> np.ndarray:
    """Optional channel effects on float audio in [-1, 1] at 16 kHz: zero-phase low-pass, then white noise."""
    if spk.lowpass_hz is not None:
        from scipy.signal import butter, sosfiltfilt

        # zero-phase so that the filter does not shift the phone boundaries
        sos = butter(6, spk.lowpass_hz, btype="low", fs=SYNTH_SAMPLE_RATE, output="sos")
        x = sosfiltfilt(sos, x)
    if spk.snr_db is not None:
        active = np.abs(x) > 1e-4  # the signal power of speech, not of the surrounding silence
        p_sig = float(np.mean(x[active] ** 2)) if active.any() else 0.0
        x = x + rng.standard_normal(len(x)) * np.sqrt(p_sig / 10 ** (spk.snr_db / 10))
    return x


def _to_int16(x: np.ndarray) -> tuple[np.ndarray, float]:
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    gain = 1.0 if peak <= 0.999 else 0.999 / peak
    return np.round(x * gain * 32767).astype(np.int16), gain


def _write_textgrid(path: Path, utt: pd.DataFrame, duration: float) -> None:
    from praatio import textgrid
    from praatio.utilities.constants import Interval

    tg = textgrid.Textgrid()
    phones = [Interval(float(s), float(e), str(lab)) for s, e, lab in
              zip(utt["start"], utt["end"], utt["phone_raw"], strict=True)]
    words: list[Interval] = []
    for (s, e, w) in zip(utt["start"], utt["end"], utt["word"], strict=True):
        if w is None or pd.isna(w):
            continue
        if words and words[-1].label == w and abs(words[-1].end - s) < 1e-9:
            words[-1] = Interval(words[-1].start, float(e), w)
        else:
            words.append(Interval(float(s), float(e), str(w)))
    tg.addTier(textgrid.IntervalTier("phones", phones, 0.0, duration))
    tg.addTier(textgrid.IntervalTier("words", words, 0.0, duration))
    path.parent.mkdir(parents=True, exist_ok=True)
    tg.save(str(path), format="long_textgrid", includeBlankSpaces=True)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True to replace the corpus there")
        for sub in ("audio", "alignments"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)


def build_synthetic_corpus(out_dir: str | os.PathLike[str], *, accents: Sequence[str] = DEFAULT_ACCENTS,
                           speakers_per_group: int = 5, sentences_per_speaker: int = 4,
                           sentences_per_recording: int = 1,
                           families: Sequence[str] = ("m", "f"), seed: int = 0,
                           snr_db: Mapping[str, float] | float | None = None,
                           lowpass_hz: Mapping[str, float] | float | None = None,
                           max_minutes: float | None = None, progress: bool = True,
                           sentences: Sequence[str] | None = None, name: str = "synthetic",
                           overwrite: bool = False) -> Corpus:
    """Synthesise a multi-accent corpus into ``out_dir`` and return it (also saved there).

    ``speakers_per_group`` speakers per (accent, voice family) cell, each reading ``sentences_per_speaker``
    sentences: speaker *k* of every cell reads the same sentences (a rotation through ``sentences``, default the
    built-in :data:`~phonefair.synth.sentences.SENTENCES`), so groups are compared on identical text.
    ``sentences_per_recording`` consecutive sentences are read in one recording (``sentences_per_speaker`` must be
    a multiple): longer recordings, fewer of them, the same phones. An encoder with a fixed input window (Whisper
    pads every input to 30 s) runs once per recording, so two-sentence recordings halve its cost.
    ``snr_db`` / ``lowpass_hz``: one value for all accents, a dict ``{accent: value}`` (accents not in it stay
    clean) or ``None``. ``max_minutes`` caps the total audio; utterances are synthesised round by round (every
    speaker's first sentence, then every speaker's second, ...) so the cap trims all groups evenly, and what is
    skipped is reported in ``corpus.problems``. Same arguments -> byte-identical wavs and identical tables.
    """
    import soundfile as sf
    import soxr

    from phonefair.corpus.phonesets import normalize_phones

    texts = tuple(SENTENCES if sentences is None else sentences)
    if not texts or any(not str(t).strip() for t in texts):
        raise ValueError("sentences must be a non-empty list of non-empty strings")
    if sentences_per_speaker < 1:
        raise ValueError(f"sentences_per_speaker must be >= 1, got {sentences_per_speaker}")
    if sentences_per_recording < 1 or sentences_per_speaker % sentences_per_recording:
        raise ValueError(f"sentences_per_recording must be >= 1 and divide sentences_per_speaker "
                         f"({sentences_per_speaker}), got {sentences_per_recording}")
    if max_minutes is not None and max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    speakers = plan_speakers(accents, speakers_per_group=speakers_per_group, families=families, seed=seed,
                             snr_db=snr_db, lowpass_hz=lowpass_hz)
    out = Path(out_dir).resolve()
    _prepare_out_dir(out, overwrite)
    synth = get_synth()
    ids = [f"s{i + 1:03d}" for i in range(len(texts))]
    if sentences_per_recording > 1:  # recording j reads sentences j*n ... j*n + n - 1 of the list (wrapping round)
        n, m = sentences_per_recording, -(-len(texts) // sentences_per_recording)
        parts = [[(j * n + i) % len(texts) for i in range(n)] for j in range(m)]
        texts, ids = tuple(" ".join(texts[i] for i in q) for q in parts), ["-".join(ids[i] for i in q) for q in parts]
    recordings_per_speaker = sentences_per_speaker // sentences_per_recording
    cell_index = {s.speaker: int(s.speaker.rsplit("_s", 1)[1]) - 1 for s in speakers}

    # round-robin order: sentence round r of every speaker before round r + 1
    jobs = [(r, spk) for r in range(recordings_per_speaker) for spk in speakers]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="synthesising", unit="utt")
    phone_frames: list[pd.DataFrame] = []
    rec_rows: list[dict[str, Any]] = []
    utt_rows: list[dict[str, Any]] = []  # the text of each utterance (the recordings table has fixed columns)
    problems: list[dict[str, Any]] = []
    total_s = 0.0
    skipped: list[str] = []
    for r, spk in jobs:
        k = (cell_index[spk.speaker] * recordings_per_speaker + r) % len(texts)
        rec_id = f"{spk.speaker}_{ids[k]}"
        if max_minutes is not None and total_s >= max_minutes * 60:
            skipped.append(rec_id)
            continue
        syn = synth.synthesize(texts[k], spk.voice, rate=spk.rate, pitch=spk.pitch, range_=spk.range,
                               volume=spk.volume)
        x = soxr.resample(syn.samples.astype(np.float32) / 32768.0, syn.sample_rate, SYNTH_SAMPLE_RATE,
                          quality="HQ").astype(np.float64)
        rng = np.random.default_rng([spk.seed, r, k])
        pcm, gain = _to_int16(_channel(x, spk, rng))
        if gain < 1.0:
            problems.append({"severity": "warning", "file": f"audio/{spk.speaker}/{rec_id}.wav", "field": "audio",
                             "message": f"{rec_id}: peak above full scale after resampling and channel effects; scaled by "
                                        f"{gain:.3f}", "action": "kept (scaled)"})
        rel = f"audio/{spk.speaker}/{rec_id}.wav"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(out / rel, pcm, SYNTH_SAMPLE_RATE, subtype="PCM_16", format="WAV")
        duration = len(pcm) / SYNTH_SAMPLE_RATE
        total_s += duration
        utt = events_to_phones(syn)
        if utt.empty:
            problems.append({"severity": "error", "file": rel, "field": "phones",
                             "message": f"{rec_id}: espeak emitted no phone events for {texts[k]!r}",
                             "action": "kept recording without phones"})
        # espeak's end-of-audio event is at the last 22050 Hz sample; after resampling the file may be a few
        # tens of microseconds shorter, so clip to the file duration
        utt["end"] = utt["end"].clip(upper=duration)
        utt.insert(0, "recording_id", rec_id)
        utt.insert(1, "speaker", spk.speaker)
        phone_frames.append(utt)
        _write_textgrid(out / "alignments" / spk.speaker / f"{rec_id}.TextGrid", utt, duration)
        utt_rows.append({"recording_id": rec_id, "speaker": spk.speaker, "sentence_id": ids[k], "text": texts[k],
                         "round": r, "gain": gain, "n_samples_22050": len(syn.samples)})
        rec_rows.append({"recording_id": rec_id, "speaker": spk.speaker, "audio_path": rel,
                         "sampling_rate": SYNTH_SAMPLE_RATE, "num_channels": 1, "duration": duration,
                         "channel": pd.NA})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if skipped:
        problems.append({"severity": "warning", "file": None, "field": "max_minutes",
                         "message": f"max_minutes={max_minutes} reached: {len(skipped)} utterance(s) not "
                                    f"synthesised (first: {skipped[0]})", "action": "skipped utterance"})

    raw = pd.concat(phone_frames, ignore_index=True) if phone_frames else pd.DataFrame(
        columns=["recording_id", "speaker", "start", "end", "phone_raw", "word"])
    phones, map_problems = normalize_phones(raw, "espeak_ipa", unknown="keep", multi="split")
    phones["split"] = pd.NA
    problems.extend(map_problems)

    spk_df = pd.DataFrame([asdict(s) for s in speakers])
    spk_df["age"] = np.nan  # synthetic voices have no age (an explicit float column: pd.NA cannot be float64)
    spk_df.to_csv(out / "speakers.csv", index=False)
    pd.DataFrame(utt_rows, columns=["recording_id", "speaker", "sentence_id", "text", "round", "gain",
                                    "n_samples_22050"]).to_csv(out / "utterances.csv", index=False)
    from importlib.metadata import PackageNotFoundError, version

    try:
        loader_version = version("espeakng-loader")
    except PackageNotFoundError:  # pragma: no cover
        loader_version = "unknown"
    options = {
        "generator": "phonefair.synth.corpus.build_synthetic_corpus",
        "accents": list(accents), "speakers_per_group": speakers_per_group,
        "sentences_per_speaker": sentences_per_speaker, "sentences_per_recording": sentences_per_recording,
        "families": list(families), "seed": seed,
        "snr_db": snr_db if not isinstance(snr_db, Mapping) else dict(snr_db),
        "lowpass_hz": lowpass_hz if not isinstance(lowpass_hz, Mapping) else dict(lowpass_hz),
        "max_minutes": max_minutes, "n_sentences": len(texts), "builtin_sentences": sentences is None,
        "espeak_ng_version": synth.version,
        "espeakng_loader_version": loader_version,
        "timing": "phone onsets from espeak phoneme events (sample-exact), resampled 22050 -> 16000 Hz with soxr HQ",
        "silence": "leading/trailing silence: no row; internal pauses: phone_raw '_' -> sil",
        "phone_map": phones.attrs.get("provenance", {}).get("phone_map"),
        "phone_map_sha256": phones.attrs.get("provenance", {}).get("phone_map_sha256"),
        "audio_minutes": round(total_s / 60, 4),
    }
    corpus = Corpus(phones=phones, speakers=spk_df, recordings=pd.DataFrame(rec_rows), name=name,
                    source=str(out), phone_set="arpabet39", loader="synthetic-espeak", loader_version="1",
                    problems=problems_frame(problems), extra=options)
    corpus.phones.attrs["provenance"] = {**options, **phones.attrs.get("provenance", {})}
    corpus.save(out)
    (out / "synth_settings.json").write_text(dumps_strict(options, indent=2))
    if corpus.recordings.empty:
        raise CorpusError(f"{out}: no utterance was synthesised (max_minutes={max_minutes})")
    return corpus
