#!/usr/bin/env python3
"""Per-call latency of the calls a small-file workload makes, as an application sees them.

    scripts/fuse-op-latency.py DIR [--files 300] [--writes 20000]

In DIR (a fresh directory on the mount is created inside it), for each of --files files:
stat of a missing name (a negative lookup), open(O_CREAT|O_WRONLY|O_TRUNC), a 4 KiB write,
close, stat of the file; then --writes 4 KiB pwrites into one open file (a FUSE WRITE each,
no metaserver call). Prints p50/p90/p99 per call in ms. Run it on local disk too for scale.
"""
import argparse
import os
import time


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--files", type=int, default=300)
    ap.add_argument("--writes", type=int, default=20000)
    a = ap.parse_args()
    work = os.path.join(a.dir, "fuse-op-latency.%d" % os.getpid())
    os.mkdir(work)
    data = os.urandom(4096)
    phases = {name: [] for name in ("lookup_missing", "open_creat", "write_4k", "close", "stat")}
    for i in range(a.files):
        path = os.path.join(work, "f%d" % i)
        t0 = time.perf_counter()
        try:
            os.stat(path + ".missing")
        except FileNotFoundError:
            pass
        t1 = time.perf_counter()
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        t2 = time.perf_counter()
        os.write(fd, data)
        t3 = time.perf_counter()
        os.close(fd)
        t4 = time.perf_counter()
        os.stat(path)
        t5 = time.perf_counter()
        for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            phases[name].append(dt)
    fd = os.open(os.path.join(work, "pwrite"), os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    pwrites = []
    for i in range(a.writes):
        t0 = time.perf_counter()
        os.pwrite(fd, data, (i % 256) * 4096)
        pwrites.append(time.perf_counter() - t0)
    os.close(fd)
    phases["pwrite_4k_loop"] = pwrites
    for name, values in phases.items():
        print("%-16s p50 %7.3f ms  p90 %7.3f ms  p99 %7.3f ms" % (name, pct(values, 0.5), pct(values, 0.9), pct(values, 0.99)))
    for name in os.listdir(work):
        os.unlink(os.path.join(work, name))
    os.rmdir(work)


if __name__ == "__main__":
    main()
