#!/usr/bin/env python3
"""Runs a command under `perf sched record` and reports how long the machine's cores sat idle while
it ran: in all, and per time bucket, so that idle at the start, in the middle (workers waiting on
each other) and at the end (one last serial stream, the serial write-out) can be told apart.

    tools/bench/sched_idle.py [--bucket 0.1] [--keep FILE] -- COMMAND [ARGS...]

Why: a 1 → 2 thread speed-up short of 2× is either more CPU (the threads' work costs more) or
idle cores (work not there to take). Wall and CPU times of a whole run mix the two and, on a
shared VM, move by several per cent from run to run; the scheduler's switch events say directly
when a core ran nothing. The span is from the first to the last event of the command's threads;
"other" is CPU time of other processes in it (kernel workers flushing an fsync, anything else
running). Needs `perf` with the sched tracepoints (Debian: linux-perf; run as root or with
kernel.perf_event_paranoid ≤ 1). Used for issue 11 (BENCHMARKS.md, "Prep thread scaling").
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bucket", type=float, default=0.1, help="seconds per row [0.1]")
    ap.add_argument("--keep", help="keep perf's data file here")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given")
    if args.keep:
        data = args.keep
    else:
        fd, data = tempfile.mkstemp(prefix="sched-", suffix=".data")
        os.close(fd)
    run = subprocess.run(["perf", "sched", "record", "-q", "-o", data, "--", *command],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if run.returncode != 0:
        sys.exit(f"sched_idle: the command (or perf) failed ({run.returncode}):\n{run.stderr.decode()[-2000:]}")
    hist = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True, text=True, check=True)
    if not args.keep:
        os.remove(data)
    name = os.path.basename(command[0])[:15]  # the kernel's comm is 15 bytes
    # timehist rows: time, [cpu], task[tid], wait time, sch delay, run time (ms); a row is written
    # when the task leaves the CPU, so it ran from time − run time to time.
    rows = []
    for line in hist.stdout.splitlines():
        parts = line.split()
        if len(parts) < 6 or not parts[0][0].isdigit():
            continue
        try:
            end, ran = float(parts[0]), float(parts[-1]) / 1000.0
        except ValueError:
            continue
        rows.append((end - ran, end, " ".join(parts[2:-3])))
    # The command's process: the pid of its main thread (named after the binary); its other
    # threads show as name[tid/pid].
    pids = {task[task.rindex("[") + 1 : -1] for _, _, task in rows if task.startswith(name + "[")}
    if not pids:
        sys.exit(f"sched_idle: no scheduler events of {name} found")
    pid = sorted(pids, key=lambda p: ("/" in p, p))[0].split("/")[-1]

    def is_ours(task: str) -> bool:
        return task.endswith(f"[{pid}]") or task.endswith(f"/{pid}]")

    ours = [r for r in rows if is_ours(r[2])]
    t0, t1 = min(r[0] for r in ours), max(r[1] for r in ours)
    idle, other = collections.defaultdict(float), collections.defaultdict(float)
    for start, end, task in rows:
        start, end = max(start, t0), min(end, t1)
        if end <= start:
            continue
        if "<idle>" in task:
            idle[int((start - t0) / args.bucket)] += end - start
        elif not is_ours(task):
            other[int((start - t0) / args.bucket)] += end - start
    print(f"span {t1 - t0:.3f} s, idle {sum(idle.values()):.3f} core-s, other processes {sum(other.values()):.3f} core-s")
    for k in sorted(set(idle) | set(other)):
        print(f"{k * args.bucket:6.2f}–{(k + 1) * args.bucket:6.2f} s: idle {idle[k] * 1000:6.1f} ms, other {other[k] * 1000:5.1f} ms")


if __name__ == "__main__":
    main()
