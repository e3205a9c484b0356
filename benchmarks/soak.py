"""Soak test: does a long training run grow its memory?

    python benchmarks/soak.py                      # 20,000 steps of each model
    python benchmarks/soak.py --steps 2000 --models digits

Each model (the digits MLP of ``benchmarks/models.py``, batch 64, and its CNN on 16x16
images, batch 8) is compiled with Adam and trained on a cycle of 8 fixed batches. After
``--warmup`` steps, the resident set size (RSS, from /proc/self/statm; the peak RSS from
``resource`` where there is no /proc) is sampled every ``--every`` steps. Printed per model:
steps, RSS at the first and last sample, and the least-squares slope of RSS against the
step number, in bytes per step and KiB per 1,000 steps. A step that allocates nothing that
outlives it has a slope of about 0 (page-granular noise: the allocator returns and takes
pages as it likes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402

import graphc as gc  # noqa: E402
from benchmarks.models import cnn, digits_mlp  # noqa: E402

BATCHES = 8
MODELS = {"digits": lambda: digits_mlp(batch=64), "cnn": lambda: cnn(16, batch=8)}


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def cycle_of_batches(feeds: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """BATCHES different batches shaped like `feeds` (the step sees new data each time)."""
    rng = np.random.default_rng(1)
    batches = []
    for _ in range(BATCHES):
        batch = {}
        for name, a in feeds.items():
            if a.dtype.kind == "f":
                batch[name] = rng.standard_normal(a.shape).astype(a.dtype)
            else:
                batch[name] = rng.integers(0, int(a.max()) + 1, a.shape).astype(a.dtype)
        batches.append(batch)
    return batches


def soak(name: str, steps: int, warmup: int, every: int) -> dict[str, float]:
    """Train model `name` for `warmup` + `steps` steps, sampling RSS every `every` steps."""
    loss, feeds = MODELS[name]()
    step = gc.compile(loss, optimizer=gc.optim.Adam(1e-3))
    batches = cycle_of_batches(feeds)
    for k in range(warmup):
        step(**batches[k % BATCHES])
    at, rss = [0], [rss_bytes()]
    start = time.perf_counter()
    for k in range(1, steps + 1):
        step(**batches[k % BATCHES])
        if k % every == 0:
            at.append(k)
            rss.append(rss_bytes())
    seconds = time.perf_counter() - start
    slope = float(np.polyfit(np.array(at, float), np.array(rss, float), 1)[0]) \
        if len(at) > 1 else 0.0
    return {"steps": steps, "warmup": warmup, "samples": len(at), "rss_start": rss[0],
            "rss_end": rss[-1], "rss_max": max(rss), "slope_bytes_per_step": slope,
            "kib_per_1000_steps": slope * 1000 / 1024, "ms_per_step": 1e3 * seconds / steps,
            "final_loss": float(step(**batches[0])), "samples_at": at, "rss_samples": rss}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--warmup", type=int, default=2000)
    ap.add_argument("--every", type=int, default=200, help="steps between RSS samples")
    ap.add_argument("--models", default=",".join(MODELS),
                    help=f"comma-separated subset of {','.join(MODELS)}")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    results = {}
    print(f"{'model':<8} {'steps':>7} {'RSS start':>11} {'RSS end':>11} {'bytes/step':>11} "
          f"{'KiB/1k steps':>13} {'ms/step':>8}")
    for name in args.models.split(","):
        r = results[name] = soak(name, args.steps, args.warmup, args.every)
        print(f"{name:<8} {r['steps']:>7} {r['rss_start'] / 2**20:>8.1f} MiB "
              f"{r['rss_end'] / 2**20:>8.1f} MiB {r['slope_bytes_per_step']:>11.3f} "
              f"{r['kib_per_1000_steps']:>13.3f} {r['ms_per_step']:>8.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
