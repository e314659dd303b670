"""Extraction benchmark.

(1) Pipeline overhead = end-to-end ``extract()`` time / time of the bare model forward passes on the same audio
    (same utterances, one at a time as extract does for group-norm models, same threads, all hidden states
    requested). Measured for a BASE-sized random wav2vec2 (12 x 768) and the tiny one (with a breakdown:
    audio read, forward, pooling, writing). Target <= 1.15.
    Both wall-clock and CPU-time (all threads) ratios are reported: on a shared machine the CPU-time ratio is the
    more stable one.
(2) Peak RSS (VmHWM, reset after model loading) of a fresh process extracting a 1x and a 4x corpus (a "wide"
    random wav2vec2, 12 x 768 with a small CNN and FFN so it runs in seconds, float16 store of 13 layers) must not
    grow with corpus size.

    python bench/bench_extraction.py                      # everything (a few minutes on 2 CPU cores)
    python bench/bench_extraction.py --skip-base --repeats 3
    python bench/bench_extraction.py --device cuda --half  # GPU path (unmeasured here: no GPU on the dev box)

Medians are printed; ``--json PATH`` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from phonefair.corpus.schema import Corpus


def make_corpus(root: Path, total_seconds: float, utt_seconds: float, phones_per_s: float = 12.0,
                seed: int = 0, jitter: float = 0.2) -> Corpus:
    """Tone + noise wavs of ``utt_seconds`` (± ``jitter``) with random phone boundaries."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    n_utt = max(1, int(round(total_seconds / utt_seconds)))
    recs, phones = [], []
    for i in range(n_utt):
        dur = float(utt_seconds * rng.uniform(1 - jitter, 1 + jitter))
        n = int(dur * 16000)
        t = np.arange(n) / 16000
        x = (0.2 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n)).astype(np.float32)
        p = root / f"u{i:04d}.wav"
        sf.write(p, x, 16000)
        recs.append(dict(recording_id=f"u{i:04d}", speaker=f"s{i % 4}", audio_path=str(p), sampling_rate=16000,
                         num_channels=1, duration=n / 16000))
        edges = np.sort(rng.uniform(0, dur, int(dur * phones_per_s)))
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            phones.append(dict(recording_id=f"u{i:04d}", speaker=f"s{i % 4}", start=a, end=b, phone_raw="aa",
                               phone="aa"))
    spk = pd.DataFrame({"speaker": [f"s{i}" for i in range(4)], "age": [np.nan] * 4})
    return Corpus(phones=pd.DataFrame(phones), speakers=spk, recordings=pd.DataFrame(recs), name="bench")


def bare_forward_seconds(enc: Any, waves: list[np.ndarray]) -> tuple[float, float]:
    """The model alone: same utterances, same order, one forward pass each, all hidden states requested."""
    import torch

    model = enc.model
    dev, dt = enc.device, enc._torch_dtype()
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for x in waves:
            out = model(torch.from_numpy(x)[None].to(dev, dt), output_hidden_states=True)
            _ = out.hidden_states[-1].float().cpu()
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0, time.process_time() - c0


def overhead(model_dir: Path, corpus: Corpus, repeats: int, device: str, half: bool) -> dict[str, Any]:
    from phonefair.corpus.audio import read_audio
    from phonefair.encoders import load_encoder
    from phonefair.extraction import extract

    enc = load_encoder(model_dir, device=device, dtype="float16" if half else "float32")
    waves = [read_audio(corpus.audio_path(r)) for r in corpus.recordings["recording_id"]]
    waves = [(w - w.mean()) / np.sqrt(w.var() + 1e-7) if enc.do_normalize else w for w in waves]
    bare_forward_seconds(enc, waves[:1])  # warm-up (weights loaded, kernels chosen)
    bare, e2e, parts, cbare, ce2e = [], [], [], [], []
    for _ in range(repeats):  # interleaved, so background load hits both alike
        wall, cpu = bare_forward_seconds(enc, waves)
        bare.append(wall)
        cbare.append(cpu)
        with tempfile.TemporaryDirectory() as d:
            t0, c0 = time.perf_counter(), time.process_time()
            st = extract(corpus, enc, store_root=d, progress=False, batch_size=8)
            e2e.append(time.perf_counter() - t0)
            ce2e.append(time.process_time() - c0)
            parts.append(st.provenance["last_run_timings_s"])
    ratios = [e / b for e, b in zip(e2e, bare, strict=True)]
    cratios = [e / b for e, b in zip(ce2e, cbare, strict=True)]
    return {
        "model": str(model_dir.name), "audio_seconds": round(corpus.hours * 3600, 1),
        "n_phones": len(corpus.phones), "layers": len(enc.layers), "repeats": repeats,
        "bare_forward_s_median": round(statistics.median(bare), 3),
        "extract_s_median": round(statistics.median(e2e), 3),
        "overhead_ratio_median": round(statistics.median(ratios), 4),
        "overhead_ratios": [round(r, 4) for r in ratios],
        # CPU time (all threads) is less sensitive to other processes sharing the machine than wall time
        "cpu_overhead_ratio_median": round(statistics.median(cratios), 4),
        "cpu_overhead_ratios": [round(r, 4) for r in cratios],
        "breakdown_s_median": {k: round(statistics.median(p[k] for p in parts), 4) for k in parts[0]},
    }


_RSS_CHILD = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from bench_extraction import make_corpus
from phonefair.extraction import extract
from phonefair.encoders import load_encoder
root = Path(sys.argv[1])
# fixed-length utterances: peak RSS otherwise tracks the longest utterance, which grows with corpus size
corpus = make_corpus(root / "audio", float(sys.argv[2]), 5.0, phones_per_s=15.0, jitter=0.0)
enc = load_encoder(sys.argv[3])
enc.model  # load the weights before the baseline
def hwm():  # peak RSS of this process image in KiB (ru_maxrss would include the parent's pre-exec peak)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
with open("/proc/self/clear_refs", "w") as f:  # reset the peak to the current RSS
    f.write("5")
base = hwm()
st = extract(corpus, enc, store_root=root / "store", progress=False, batch_size=8)
size = sum(p.stat().st_size for p in st.path.glob("layer_*.npy"))
print(base, hwm(), size, len(corpus.phones))
"""


def wide_model(directory: Path) -> Path:
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(0)
    cfg = Wav2Vec2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=64,
                         conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16)
    Wav2Vec2Model(cfg).eval().save_pretrained(directory)
    Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(directory)
    return directory


def peak_rss(seconds: float, scales: list[int], repeats: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model = wide_model(Path(tmp) / "wide")
        for s in scales:
            runs = []
            for r in range(repeats):
                d = Path(tmp) / f"x{s}_{r}"
                res = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(d), str(seconds * s), str(model),
                                      str(Path(__file__).parent)], capture_output=True, text=True, check=True,
                                     env=dict(os.environ))
                base, peak, size, n = (int(v) for v in res.stdout.split()[-4:])
                runs.append((base, peak, size, n))
            out[f"{s}x"] = {"audio_seconds": seconds * s, "n_phones": runs[0][3],
                            "store_MB": round(runs[0][2] / 2**20, 1),
                            "rss_before_extract_MB_median": round(statistics.median(r[0] for r in runs) / 1024, 1),
                            "peak_rss_MB_median": round(statistics.median(r[1] for r in runs) / 1024, 1),
                            "peak_growth_during_extract_MB_median":
                                round(statistics.median(r[1] - r[0] for r in runs) / 1024, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audio-seconds", type=float, default=150.0, help="audio for the base-model overhead run")
    ap.add_argument("--utt-seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3, help="repeats for the tiny-model and RSS runs")
    ap.add_argument("--base-repeats", type=int, default=2)
    ap.add_argument("--rss-seconds", type=float, default=60.0, help="audio of the 1x RSS corpus")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for both timings (1: robust when other processes share the CPU)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--half", action="store_true", help="float16 model weights (GPU)")
    ap.add_argument("--skip-base", action="store_true")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from phonefair.encoders import save_tiny_model

    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the RSS subprocesses

    results: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "device": args.device, "half": args.half}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        tiny = save_tiny_model("wav2vec2", t / "tiny")
        corpus = make_corpus(t / "audio", args.audio_seconds, args.utt_seconds)
        results["tiny_overhead"] = overhead(tiny, corpus, args.repeats, args.device, args.half)
        print(json.dumps({"tiny_overhead": results["tiny_overhead"]}, indent=1), flush=True)
        if not args.skip_base:
            base = save_tiny_model("wav2vec2-base", t / "base")
            results["base_overhead"] = overhead(base, corpus, args.base_repeats, args.device, args.half)
            print(json.dumps({"base_overhead": results["base_overhead"]}, indent=1), flush=True)
    if not args.skip_rss:
        results["peak_rss"] = peak_rss(args.rss_seconds, [1, 4], args.repeats)
        print(json.dumps({"peak_rss": results["peak_rss"]}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
