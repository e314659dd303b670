"""Benchmark: build a 20-speaker, ~5-minute synthetic corpus (espeak-ng -> soxr -> wav + TextGrid + parquet).

Run: ``python bench/bench_synth.py [--runs 3]``. Prints the median wall time over the runs, the audio minutes and
the realtime factor (audio seconds per wall second). Single process; espeak-ng itself is single-threaded.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from phonefair.synth.corpus import build_synthetic_corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    # 5 accents x 2 voice families x 2 speakers = 20 speakers, 5 sentences each (about 5 minutes of audio)
    kw = dict(accents=("en-US", "en-GB-x-rp", "en-GB-scotland", "en-029", "en-US-nyc"), speakers_per_group=2,
              sentences_per_speaker=5, seed=0, snr_db={"en-029": 20.0}, lowpass_hz={"en-US-nyc": 3400.0},
              progress=False)
    times: list[float] = []
    minutes = 0.0
    n_phones = 0
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            c = build_synthetic_corpus(Path(d) / "corpus", **kw)  # type: ignore[arg-type]
            times.append(time.perf_counter() - t0)
            minutes = c.hours * 60
            n_phones = c.counts["phones"]
            n_spk = c.counts["speakers"]
    med = statistics.median(times)
    print(f"speakers={n_spk} recordings={c.counts['recordings']} phones={n_phones} audio_minutes={minutes:.2f}")
    print(f"wall_s median={med:.2f} (runs: {', '.join(f'{t:.2f}' for t in times)})")
    print(f"realtime_factor={minutes * 60 / med:.0f}x")


if __name__ == "__main__":
    main()
