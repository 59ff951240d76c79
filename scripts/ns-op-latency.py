#!/usr/bin/env python3
"""Per-call latency of stat, rename and unlink of existing files, as an application sees them.

    scripts/ns-op-latency.py DIR [--files 1000]

Creates --files empty files in DIR (made if missing) and waits 0.3 s (closes are batched);
then, for each file, a stat and a rename to NAME.r; then an unlink of every NAME.r. Prints
p50/p90/p99/mean per call in ms. Run it on local disk too for scale.
"""
import argparse
import os
import time


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def timed(samples, call, *args):
    t0 = time.perf_counter()
    call(*args)
    samples.append(time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=1000)
    a = ap.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    paths = [os.path.join(a.dir, "f%d" % i) for i in range(a.files)]
    for path in paths:
        open(path, "wb").close()
    time.sleep(0.3)
    phases = {"stat": [], "rename": [], "unlink": []}
    for path in paths:
        timed(phases["stat"], os.stat, path)
        timed(phases["rename"], os.rename, path, path + ".r")
    for path in paths:
        timed(phases["unlink"], os.unlink, path + ".r")
    for name, v in phases.items():
        print("%-7s p50 %.3f p90 %.3f p99 %.3f mean %.3f ms"
              % (name, pct(v, 0.5), pct(v, 0.9), pct(v, 0.99), 1000 * sum(v) / len(v)))


if __name__ == "__main__":
    main()
