#!/usr/bin/env python
"""The full SMTP pipeline of two checkouts, alternated in one run: did a change make it faster?

Starts `cli smtpd` from checkout A and from checkout B (each with its own .venv), both on one fresh
Postgres database and Redis prefix, pinned to CPU 0 like bench/smtp_throughput.py (its load
generator and set-up are reused; this process runs on CPU 1), and runs 1 KB x 50 connections x
20 messages against each in turn, --reps times. Reports medians: messages/s, our server's CPU per
message, how busy it was, p99 end of DATA -> 250, and the CPU per message Postgres and Redis spent
meanwhile (every postgres / redis-server process on the machine: run it on an otherwise idle one).

    .venv/bin/python bench/smtp_before_after.py /path/to/checkout-before . [--reps 4]
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import smtp_throughput as bench_smtp  # noqa: E402


def service_cpu_seconds():
    """CPU seconds so far of every postgres and redis-server process, by name."""
    totals = {}
    for name, flag in (("postgres", "-f"), ("redis-server", "-x")):
        pids = subprocess.run(["pgrep", flag, name], capture_output=True, text=True).stdout.split()
        seconds = 0.0
        for pid in pids:
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended meanwhile
            seconds += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        totals[name] = seconds
    return totals


def start(bench, root):
    """The full pipeline of the checkout at ``root``, run by its own environment's Python."""
    bench_smtp.ROOT = Path(root).resolve()
    python, sys.executable = sys.executable, str(Path(root).resolve() / ".venv" / "bin" / "python")
    try:
        return bench_smtp.Bench.start(bench, "ours-full")
    finally:
        sys.executable = python


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--reps", type=int, default=4)
    args = parser.parse_args()
    os.sched_setaffinity(0, {bench_smtp.CLIENT_CPU})
    workdir = Path(tempfile.mkdtemp(prefix="smtp-ab-"))
    bench = bench_smtp.Bench(workdir)
    message = bench_smtp.make_message(bench_smtp.KB_MESSAGE_SIZE)
    peers = {}
    try:
        for label, root in (("before", args.before), ("after", args.after)):
            peers[label] = start(bench, root)
            bench_smtp.run_sessions(peers[label], 10, 2, message)  # warm-up
        runs = {label: [] for label in peers}
        for rep in range(args.reps):
            for label in (("before", "after") if rep % 2 == 0 else ("after", "before")):
                services = service_cpu_seconds()
                seconds, latencies = bench_smtp.run_sessions(peers[label], 50, 20, message)
                after = service_cpu_seconds()
                server_cpu = peers[label].last_cpu[0]
                runs[label].append(dict(rate=1000 / seconds, cpu=server_cpu, busy=server_cpu / seconds,
                                        p99=bench_smtp.p99(latencies) * 1000,
                                        **{name: after[name] - services[name] for name in after}))
        print(f"\nfull pipeline, 1 KB x 50 conns x 20 msgs, medians of {args.reps} alternated runs\n")
        print("| checkout | msgs/s | server CPU ms/msg | server busy | p99 end of DATA -> 250 | Postgres CPU ms/msg "
              "| Redis CPU ms/msg |")
        print("|---|---|---|---|---|---|---|")
        medians = {}
        for label, root in (("before", args.before), ("after", args.after)):
            m = medians[label] = {key: statistics.median(run[key] for run in runs[label]) for key in runs[label][0]}
            print(f"| {label}: {root} | {m['rate']:,.0f} | {m['cpu']:.2f} | {m['busy']:.0%} | {m['p99']:.0f} ms | "
                  f"{m['postgres']:.2f} | {m['redis-server']:.2f} |")
        print(f"\nafter/before: msgs/s {medians['after']['rate'] / medians['before']['rate']:.2f}, "
              f"server CPU a message {medians['after']['cpu'] / medians['before']['cpu']:.2f}")
    finally:
        for peer in peers.values():
            peer.stop()
        bench.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
