"""How this machine treats memory a process keeps but leaves untouched: a diagnostic for reading the other benches.

Copies a block into a buffer kept since the last touch, after 0 / 5 / 20 / 40 s idle, and into freshly allocated
memory, one thread. On an ordinary machine the kept buffer is the fastest at every idle time; on the VM where the
probe benchmarks of docs/probes.md ran, a kept buffer idle for a few seconds was 5-6x slower to write than right
after its last touch and ~2x slower than fresh memory (most likely the host reclaiming idle guest memory). Fits
that reuse buffers (``phonefair.probes.Workspace``) gain on the first kind of machine and can lose on the second
when the buffers idle between calls; run this before comparing the two variants ``bench_probes.py`` times.

    python bench/bench_idle_memory.py [--mb 400] [--idle 0,5,20,40]
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=400, help="block size in MB")
    ap.add_argument("--idle", default="0,5,20,40", help="idle times in seconds, comma-separated")
    a = ap.parse_args()
    torch.set_num_threads(1)
    n = a.mb * 2**20 // 4
    src = torch.ones(n)
    kept = torch.empty(n)
    kept.copy_(src)

    def ms(fn) -> float:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        fn()
        return 1e3 * (time.perf_counter() - t)

    print(f"{a.mb} MB per copy, one thread")
    for idle in (float(s) for s in a.idle.split(",")):
        time.sleep(idle)
        t_kept = ms(lambda: kept.copy_(src))
        t_fresh = ms(lambda: torch.empty(n).copy_(src))
        t_again = ms(lambda: kept.copy_(src))
        print(f"  idle {idle:4.0f} s: into the kept buffer {t_kept:6.0f} ms, into fresh memory {t_fresh:6.0f} ms, "
              f"kept buffer again at once {t_again:6.0f} ms", flush=True)


if __name__ == "__main__":
    main()
