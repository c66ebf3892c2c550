#!/usr/bin/env python3
"""Runs a command and reports the CPU seconds (user + system) each of its threads used.

    tools/bench/thread_cpu.py -- COMMAND [ARGS...]

Polls /proc/PID/task/*/stat every 20 ms while the command runs (the last poll before it exits
counts, so up to 20 ms per thread can be missed) and prints the command's last output line, then
the main thread's CPU time and the other threads'. Why: on a machine loaded by other work, wall
times say little, while the CPU each thread spends moves less; with a rayon pool the main thread
sleeps while the pool works, so its CPU time is the serial part of a step (BENCHMARKS.md, "The
2-thread step"). Per step: run N+1 and 1 steps and take (difference) / N, which removes the setup:

    RAYON_NUM_THREADS=2 tools/bench/thread_cpu.py -- target/release/examples/qwen3_lora_bench --steps 21 --warmup 0
    RAYON_NUM_THREADS=2 tools/bench/thread_cpu.py -- target/release/examples/qwen3_lora_bench --steps 1 --warmup 0
"""
import argparse
import os
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run (after --)")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}  # tid -> (name, seconds)
    while proc.poll() is None:
        try:
            for tid in os.listdir(f"/proc/{proc.pid}/task"):
                stat = open(f"/proc/{proc.pid}/task/{tid}/stat").read()
                name = stat[stat.index("(") + 1 : stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / tick)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass  # a thread or the process ended between listing and reading
        time.sleep(0.02)
    lines = proc.stdout.read().decode(errors="replace").strip().splitlines()
    print(lines[-1] if lines else "(no output)")
    main_cpu = cpu.get(proc.pid, ("?", 0.0))[1]
    others = sum(s for tid, (_, s) in cpu.items() if tid != proc.pid)
    print(f"cpu main {main_cpu:.2f} s, other threads {others:.2f} s: "
          + ", ".join(f"{name}:{s:.2f}" for _, (name, s) in sorted(cpu.items())))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
