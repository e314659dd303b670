"""Throughput of scale-out extraction: local extract vs the Ray backend with 1 and 2 workers (and, with a GPU,
per-GPU throughput). Every run writes a fresh store; the stores are checked to be bit-identical.

    python bench/bench_scaleout.py --family wav2vec2 --speakers 2 --sentences 4 --cpus 2
    python bench/bench_scaleout.py --family wav2vec2-base --device cuda --gpus 1     # on a GPU node

Throughput = seconds of audio per wall-clock second (x real time), after the model is loaded once per process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="wav2vec2", help="tiny model family (phonefair.encoders.tiny.FAMILIES)")
    ap.add_argument("--speakers", type=int, default=2, help="speakers per (accent, voice) cell")
    ap.add_argument("--sentences", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs given to the local Ray runtime")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs: run one actor per GPU as well")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import numpy as np
    import ray
    import torch

    from phonefair.encoders import load_encoder, save_tiny_model
    from phonefair.extraction import extract
    from phonefair.extraction.ray_backend import extract_ray
    from phonefair.synth.corpus import build_synthetic_corpus

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scaleout_"))
    corpus = build_synthetic_corpus(tmp / "c", accents=["en-US", "en-GB-x-rp"], speakers_per_group=args.speakers,
                                    sentences_per_speaker=args.sentences, seed=0, progress=False)
    model = save_tiny_model(args.family, tmp / "m")
    audio_s = float(corpus.recordings["duration"].sum())
    res: dict[str, object] = {"audio_seconds": round(audio_s, 2), "n_utterances": len(corpus.recordings),
                              "family": args.family, "batch_size": args.batch_size, "torch_threads": 1}

    enc = load_encoder(model, device=args.device)
    enc.frames(np.zeros(16000, dtype=np.float32))  # load weights outside the timing
    t = time.perf_counter()
    ref = extract(corpus, enc, store_root=tmp / "local", batch_size=args.batch_size, progress=False)
    res["local_s"] = round(time.perf_counter() - t, 2)

    ray.init(num_cpus=args.cpus, num_gpus=args.gpus, include_dashboard=False, log_to_driver=False)
    runs = [(k, dict(num_workers=k, cpus_per_worker=min(1.0, (args.cpus - 0.25) / k), read_num_cpus=0.25))
            for k in (1, 2)]
    if args.gpus:
        runs.append((f"{args.gpus}gpu", dict(num_workers=args.gpus, num_gpus_per_worker=1.0, cpus_per_worker=1.0,
                                              read_num_cpus=0.5)))
    for name, kw in runs:
        t = time.perf_counter()
        st = extract_ray(corpus, load_encoder(model, device=args.device if "gpu" in str(name) else "cpu"),
                         store_root=tmp / f"ray{name}", batch_size=args.batch_size, progress=False, **kw)
        res[f"ray_{name}_s"] = round(time.perf_counter() - t, 2)
        same = all(np.asarray(ref.array(layer)).tobytes() == np.asarray(st.array(layer)).tobytes()
                   for layer in ref.layers)
        res[f"ray_{name}_identical_to_local"] = same
    ray.shutdown()
    for k in [k for k in res if k.endswith("_s") and k != "audio_seconds"]:
        res[k.replace("_s", "_xRT")] = round(audio_s / float(res[k]), 1)  # type: ignore[arg-type]
    res["speedup_2_vs_1_workers"] = round(float(res["ray_1_s"]) / float(res["ray_2_s"]), 2)  # type: ignore[arg-type]
    if not args.gpus:
        res["gpu"] = "none available: per-GPU throughput not measured"
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
