"""Shared pieces of the benchmarks: interleaved rounds and medians."""
import os
import platform
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))


def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return "%s, %d cores, %s" % (cpu, os.cpu_count(), platform.platform())


def interleave(rounds, runs):
    """Run each (name, fn) once per round, alternating; return {name: [results]}.

    The machine is shared and noisy, and disk stalls happen: the runs that are
    compared are interleaved, and medians are reported.
    """
    out = {name: [] for name, _ in runs}
    for i in range(rounds):
        for name, fn in runs:
            value = fn()
            out[name].append(value)
            print("  round %d  %-28s %10.0f /s" % (i + 1, name, value), flush=True)
    return out


def report(title, results, baseline):
    base = statistics.median(results[baseline])
    print()
    print(title)
    for name, values in results.items():
        med = statistics.median(values)
        print("  %-28s median %10.0f /s   ratio to %s: %.2f   (runs: %s)"
              % (name, med, baseline, med / base if base else float("nan"),
                 ", ".join("%.0f" % v for v in values)))
    print()


def run(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kw).stdout
