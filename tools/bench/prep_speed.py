#!/usr/bin/env python3
"""Prep throughput against the Python peer, side by side (issue 11; method in BENCHMARKS.md).

Runs, in alternating order over ROUNDS rounds, on one synthetic ScanNet set with real-sized frames
(synth: 1296×968 JPEG colour, 640×480 zlib depth, raw .sens):

  rust first  t1/t2   prep-scanqa, a fresh (empty) hash cache: every raw byte is hashed
  rust again  t1/t2   prep-scanqa with other arguments (--num-views 12 --image-width 392) on the
                      same raw data, the hash cache filled by an earlier run
  py          first/again   tools/bench/prep_scanqa_py.py (Pillow decode + bicubic resize, numpy
                      histograms, pyarrow, hashlib sha256 of every raw input), with both argument sets
  py draft    first/again   the same with Pillow's draft mode (DCT-scaled decoding)

and reports medians of wall time and CPU time (user + system, from wait4's rusage of each child),
views per second per CPU-second, ratios against the Python peer, and peak RSS. Each run's output
folder is removed after it. With --others, prep-sqa3d and prep-arkit are timed too (first and
again, 1 and 2 threads; no Python peer); with --memory, peak RSS of prep-scanqa on 10 and on 40
scenes (2 threads). With --pair, also "rust first 2×t1 halves": two single-thread prep-scanqa
processes at once, each on half the scenes (--num-shards 2), whose CPU time against one
single-thread process on all scenes measures what running both cores costs the machine itself
(shared caches, memory bandwidth, clocks), apart from anything in prep-scanqa's threading.

usage: python3 tools/bench/prep_speed.py [--scenes 20] [--frames 300] [--rounds 3] [--work DIR]
       [--scratch DIR] [--python /work/venv-bench/bin/python] [--others] [--memory] [--pair] [--no-build]
       [--baseline DIR]
The raw set is generated once into WORK/raw-SCENESxFRAMES (kept between invocations; delete it to
start over); outputs and hash caches go to SCRATCH (default WORK), so WORK can be a shared,
read-only set.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIRST_ARGS = ["--num-views", "8"]
AGAIN_ARGS = ["--num-views", "12", "--image-width", "392"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def timed(cmd, env=None):
    """Runs cmd; returns wall s, CPU s (user + sys), max RSS MiB; stdout/stderr kept for errors."""
    start = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = b"", b""
    # communicate() would reap the child itself; read the pipes, then wait4 for its rusage.
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    if p.returncode not in (0,):
        log(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{err.decode()[-3000:]}")
        sys.exit(1)
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, out.decode()


def count_views(out_dir):
    with open(os.path.join(out_dir, "manifest.json")) as f:
        return json.load(f)["counts"]["views"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "roomplan_prep_speed"))
    ap.add_argument("--scratch", help="folder for outputs and hash caches [default: --work]")
    ap.add_argument("--python", default="/work/venv-bench/bin/python")
    ap.add_argument("--others", action="store_true", help="also prep-sqa3d and prep-arkit")
    ap.add_argument("--memory", action="store_true", help="peak RSS on 10 vs 40 scenes")
    ap.add_argument("--pair", action="store_true",
                    help="also two single-thread processes at once on half the scenes each")
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--baseline", metavar="DIR",
                    help="also time the prep-scanqa in DIR (e.g. a build of an older commit) as 'base'")
    args = ap.parse_args()

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = lambda name: os.path.join(target, "release", name)
    if not args.no_build:
        log("building release binaries (synth, prep-*) ...")
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "roomplan-synth", "-p", "roomplan-prep", "--bins"],
                       cwd=ROOT, check=True)
    os.makedirs(args.work, exist_ok=True)
    raw = os.path.join(args.work, f"raw-{args.scenes}x{args.frames}")
    if not os.path.isdir(raw):
        log(f"generating {args.scenes} scenes × {args.frames} full-size frames into {raw} ...")
        subprocess.run([binary("synth"), "--out", raw, "--scenes", str(args.scenes), "--frames", str(args.frames),
                        "--color-size", "1296x968", "--depth-size", "640x480", "--scannet-format", "sens"],
                       check=True, stdout=subprocess.DEVNULL)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(os.path.join(raw, "scannet")) for f in fs)
    log(f"raw ScanNet: {size / 2**20:.0f} MiB; load before: {os.getloadavg()}")

    scratch = args.scratch or args.work
    os.makedirs(scratch, exist_ok=True)
    caches = os.path.join(scratch, "caches")
    warm_cache = os.path.join(caches, "warm")
    shutil.rmtree(caches, ignore_errors=True)
    os.makedirs(warm_cache)

    def rust(tool, extra, threads, cache_dir, roots, exe=None):
        out = tempfile.mkdtemp(dir=scratch, prefix="out-")
        env = dict(os.environ, ROOMPLAN_CACHE_DIR=cache_dir)
        cmd = [exe or binary(tool), *roots, "--out", out, "--overwrite", "--threads", str(threads), *extra]
        wall, cpu, rss, _ = timed(cmd, env)
        views = count_views(out)
        shutil.rmtree(out)
        return wall, cpu, rss, views

    scanqa_roots = ["--scannet", os.path.join(raw, "scannet"), "--scanqa", os.path.join(raw, "scanqa")]

    def fresh_cache():
        d = tempfile.mkdtemp(dir=caches, prefix="empty-")
        return d

    # Fill the warm cache once (the "earlier run" of a re-preparation).
    rust("prep-scanqa", FIRST_ARGS, 2, warm_cache, scanqa_roots)

    def py(extra, draft):
        out = tempfile.mkdtemp(dir=scratch, prefix="py-")
        cmd = [args.python, os.path.join(ROOT, "tools/bench/prep_scanqa_py.py"), *scanqa_roots, "--out", out, *extra]
        if draft:
            cmd.append("--draft")
        wall, cpu, rss, stdout = timed(cmd)
        views = json.loads(stdout.strip().splitlines()[-1])["views"]
        shutil.rmtree(out)
        return wall, cpu, rss, views

    variants = {
        "rust first t1": lambda: rust("prep-scanqa", FIRST_ARGS, 1, fresh_cache(), scanqa_roots),
        "rust first t2": lambda: rust("prep-scanqa", FIRST_ARGS, 2, fresh_cache(), scanqa_roots),
        "rust again t1": lambda: rust("prep-scanqa", AGAIN_ARGS, 1, warm_cache, scanqa_roots),
        "rust again t2": lambda: rust("prep-scanqa", AGAIN_ARGS, 2, warm_cache, scanqa_roots),
        "py first": lambda: py(FIRST_ARGS, False),
        "py again": lambda: py(AGAIN_ARGS, False),
        "py draft first": lambda: py(FIRST_ARGS, True),
        "py draft again": lambda: py(AGAIN_ARGS, True),
    }
    def rust_pair():
        """Two single-thread processes at once, each on half the scenes (a fresh cache each)."""
        start = time.monotonic()
        procs, outs = [], []
        for part in (0, 1):
            out = tempfile.mkdtemp(dir=scratch, prefix="out-")
            env = dict(os.environ, ROOMPLAN_CACHE_DIR=fresh_cache())
            cmd = [binary("prep-scanqa"), *scanqa_roots, "--out", out, "--overwrite", "--threads", "1",
                   "--num-shards", "2", "--shard-index", str(part), *FIRST_ARGS]
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            outs.append(out)
        cpu, rss = 0.0, 0.0
        for p in procs:
            err = p.stderr.read()
            _, status, ru = os.wait4(p.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                log(f"FAILED: prep-scanqa half\n{err.decode()[-3000:]}")
                sys.exit(1)
            cpu += ru.ru_utime + ru.ru_stime
            rss = max(rss, ru.ru_maxrss / 1024.0)
        wall = time.monotonic() - start
        views = sum(count_views(o) for o in outs)
        for o in outs:
            shutil.rmtree(o)
        return wall, cpu, rss, views

    if args.pair:
        variants["rust first 2×t1 halves"] = rust_pair
    if args.baseline:
        base = os.path.join(args.baseline, "prep-scanqa")
        variants["base first t1"] = lambda: rust("prep-scanqa", FIRST_ARGS, 1, fresh_cache(), scanqa_roots, base)
        variants["base again t1"] = lambda: rust("prep-scanqa", AGAIN_ARGS, 1, warm_cache, scanqa_roots, base)
    results = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        if r % 2 == 1:
            order.reverse()
        for name in order:
            res = variants[name]()
            results[name].append(res)
            log(f"round {r + 1}/{args.rounds} {name:15s} wall {res[0]:6.2f} s  cpu {res[1]:6.2f} s  "
                f"views {res[3]}  rss {res[2]:.0f} MiB")

    def med(name, i):
        return statistics.median(x[i] for x in results[name])

    print(f"\nprep-scanqa, {args.scenes} scenes × {args.frames} frames (1296×968 / 640×480), "
          f"medians of {args.rounds} rounds; load after: {os.getloadavg()}")
    print("| run | views | wall s | CPU s | views/s | views per CPU-s | × py (per CPU-s) | max RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    per_cpu = {}
    for name in names:
        views = results[name][0][3]
        wall, cpu, rss = med(name, 0), med(name, 1), max(x[2] for x in results[name])
        per_cpu[name] = views / cpu
    for name in names:
        views = results[name][0][3]
        wall, cpu, rss = med(name, 0), med(name, 1), max(x[2] for x in results[name])
        peer = "py first" if "first" in name else "py again"
        print(f"| {name} | {views} | {wall:.2f} | {cpu:.2f} | {views / wall:.1f} | {per_cpu[name]:.2f} | "
              f"{per_cpu[name] / per_cpu[peer]:.2f} | {rss:.0f} |")
    for phase in ("first", "again"):
        t1, t2 = med(f"rust {phase} t1", 0), med(f"rust {phase} t2", 0)
        print(f"rust {phase}: 1 → 2 threads wall speed-up {t1 / t2:.2f}×")
    if args.pair:
        t1, pair = med("rust first t1", 1), med("rust first 2×t1 halves", 1)
        print(f"rust first: CPU of two single-thread halves at once / one single-thread run: "
              f"{pair / t1:.3f} (with 2 threads: {med('rust first t2', 1) / t1:.3f})")
    for phase in ("first", "again"):
        r = per_cpu[f"rust {phase} t1"]
        print(f"rust {phase} t1 per CPU-s: {r / per_cpu[f'py {phase}']:.2f}× py, "
              f"{r / per_cpu[f'py draft {phase}']:.2f}× py draft")

    if args.others:
        other_rounds = max(1, args.rounds - 1)
        sqa_roots = ["--scannet", os.path.join(raw, "scannet"), "--sqa3d", os.path.join(raw, "sqa3d")]
        ark_roots = ["--arkitscenes", os.path.join(raw, "arkitscenes")]
        for tool, roots in (("prep-sqa3d", sqa_roots), ("prep-arkit", ark_roots)):
            warm = tempfile.mkdtemp(dir=caches, prefix="warm-")
            rust(tool, FIRST_ARGS, 2, warm, roots)
            rows = {}
            for r in range(other_rounds):
                for phase, extra in (("first", FIRST_ARGS), ("again", AGAIN_ARGS)):
                    for t in (1, 2):
                        cache = fresh_cache() if phase == "first" else warm
                        rows.setdefault((phase, t), []).append(rust(tool, extra, t, cache, roots))
            print(f"\n{tool}, medians of {other_rounds} rounds; load after: {os.getloadavg()}")
            print("| run | views | wall s | CPU s | views per CPU-s | max RSS MiB |")
            print("|---|---|---|---|---|---|")
            for (phase, t), xs in rows.items():
                wall = statistics.median(x[0] for x in xs)
                cpu = statistics.median(x[1] for x in xs)
                print(f"| {phase} t{t} | {xs[0][3]} | {wall:.2f} | {cpu:.2f} | {xs[0][3] / cpu:.2f} | "
                      f"{max(x[2] for x in xs):.0f} |")

    if args.memory:
        print("\npeak RSS of prep-scanqa (2 threads, 60 frames per scene) by number of scenes")
        for n in (10, 40):
            mraw = os.path.join(args.work, f"raw-{n}x60")
            if not os.path.isdir(mraw):
                subprocess.run([binary("synth"), "--out", mraw, "--scenes", str(n), "--frames", "60",
                                "--color-size", "1296x968", "--depth-size", "640x480"],
                               check=True, stdout=subprocess.DEVNULL)
            roots = ["--scannet", os.path.join(mraw, "scannet"), "--scanqa", os.path.join(mraw, "scanqa")]
            wall, cpu, rss, views = rust("prep-scanqa", FIRST_ARGS, 2, fresh_cache(), roots)
            print(f"{n} scenes: {views} views, wall {wall:.2f} s, max RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
