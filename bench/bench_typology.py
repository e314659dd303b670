"""Benchmark: typology of one layer of 1,000,000 tokens × 768 dims from a float16 memmapped .npy.

Builds the store in a temp dir (not timed), then times ``phonefair.analysis.analyze`` on it with the default
settings (``spaces=("raw", "lda")``, ``n_perm=999``, ``n_boot=500``), and reports wall time and peak memory:
peak RSS, and peak *anonymous* RSS (= memory beyond the page-cached memory-mapped store), sampled every 20 ms.

    python bench/bench_typology.py [--tokens 1000000] [--dim 768] [--speakers 500] [--groups 4] [--phones 40]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


class MemmapSource:
    """Minimal EmbeddingSource over one memmapped ``.npy`` per layer."""

    def __init__(self, tokens: pd.DataFrame, files: dict[str, Path]) -> None:
        self.tokens = tokens
        self.layers = list(files)
        self.provenance: dict[str, Any] = {"source": "bench memmap"}
        self._mm = {k: np.load(v, mmap_mode="r") for k, v in files.items()}

    def read(self, layer: str, rows: Any = None) -> np.ndarray:
        a = self._mm[layer]
        if rows is None:
            return np.asarray(a, dtype=np.float32)
        rows = np.asarray(rows)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):  # contiguous: a slice, no fancy-index copy
            return np.asarray(a[rows[0]:rows[-1] + 1], dtype=np.float32)
        return np.asarray(a[rows], dtype=np.float32)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon = 0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            self.peak_anon = max(self.peak_anon, _status_kb("RssAnon"))
            time.sleep(0.02)


def build(tmp: Path, n_tokens: int, dim: int, n_speakers: int, n_groups: int, n_phones: int,
          seed: int = 0) -> tuple[pd.DataFrame, Path, pd.Series]:
    rng = np.random.default_rng(seed)
    per = n_tokens // n_speakers
    speakers = [f"g{s % n_groups}_s{s:04d}" for s in range(n_speakers)]
    groups = pd.Series([f"g{s % n_groups}" for s in range(n_speakers)], index=speakers, name="group")
    split = np.where(rng.random(n_speakers) < 0.7, "train", "test")
    mu = rng.normal(0, 1.0, size=(n_phones, dim)).astype(np.float32)
    shift = np.zeros((n_groups, n_phones, dim), np.float32)
    shift[n_groups - 1, : n_phones // 4] = rng.normal(0, 0.15, size=(n_phones // 4, dim))  # group 3 shifted
    path = tmp / "layer_0.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(per * n_speakers, dim))
    spk_col, ph_col, split_col = [], [], []
    for s in range(n_speakers):
        g = s % n_groups
        ph = rng.integers(0, n_phones, size=per)
        u = rng.normal(0, 0.3, size=(n_phones, dim)).astype(np.float32)
        x = mu[ph] + shift[g, ph] + u[ph] + rng.standard_normal((per, dim), dtype=np.float32) * (1.0 + 0.2 * (g == 2))
        mm[s * per:(s + 1) * per] = x.astype(np.float16)
        spk_col.append(np.full(per, s))
        ph_col.append(ph)
        split_col.append(np.full(per, split[s]))
    mm.flush()
    del mm
    sp = np.concatenate(spk_col)
    tokens = pd.DataFrame({"speaker": np.asarray(speakers)[sp], "phone": [f"p{i:02d}" for i in np.concatenate(ph_col)],
                           "split": np.concatenate(split_col)})
    return tokens, path, groups


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--speakers", type=int, default=500)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--phones", type=int, default=40)
    ap.add_argument("--n-perm", type=int, default=999)
    ap.add_argument("--n-boot", type=int, default=500)
    args = ap.parse_args()
    from phonefair.analysis import analyze
    from phonefair.audit.design import Design
    from phonefair.settings import AnalysisSettings

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        tokens, path, groups = build(Path(d), args.tokens, args.dim, args.speakers, args.groups, args.phones)
        t_build = time.perf_counter() - t0
        src = MemmapSource(tokens, {"0": path})
        anon0 = _status_kb("RssAnon")
        sampler = PeakSampler()
        sampler.start()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        design = Design.build(src, groups, min_speakers=2)
        res = analyze(src, design, AnalysisSettings(n_perm=args.n_perm, n_boot=args.n_boot), progress=False)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        sampler.stop = True
        sampler.join()
        out = {"tokens": len(tokens), "dim": args.dim, "speakers": args.speakers, "groups": args.groups,
               "phones": args.phones, "n_perm": args.n_perm, "n_boot": args.n_boot, "build_s": round(t_build, 1),
               "analyze_wall_s": round(wall, 1), "analyze_cpu_s": round(cpu, 1),
               "load_avg_1min": round(os.getloadavg()[0], 2),
               "peak_rss_mb_incl_page_cache": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
               "peak_anon_rss_mb": round(sampler.peak_anon / 1024),
               "anon_rss_before_mb": round(anon0 / 1024),
               "peak_anon_beyond_start_mb": round((sampler.peak_anon - anon0) / 1024)}
        print(json.dumps(out, indent=1))
        tests = res.table_map["shift_tests"]
        print(tests[tests["phone"] == "*"].head(12).to_string())


if __name__ == "__main__":
    main()
