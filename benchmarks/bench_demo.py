"""Wall time of what a newcomer waits for: `diffaudit demo` end to end, and the README's test commands.

    python benchmarks/bench_demo.py [--demo] [--tests] [--slow-tests]

Each runs as a fresh subprocess with one torch thread per process (`OMP_NUM_THREADS=1`) and its
own defaults for processes: `diffaudit demo --out TMP --no-progress` (the shipped digits model, so
the audit is the wait; its audit in one process per usable core, at most 4), `python -m pytest`
(slow tests deselected; pytest-xdist, one worker per core) and `python -m pytest -m slow`. Reported per command:
wall seconds, the children's CPU seconds (≈ wall on idle cores: the gap is other work on the
machine), the load average before and after, and whether the target is met (demo ≤ 240 s,
default tests ≤ 180 s, both on 2 idle cores). Writes benchmarks/results/times-<utc>.json.
These are absolute times, so read them beside the load average; they are not ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"demo": 240.0, "tests": 180.0, "slow_tests": None}


def timed(cmd: list[str], cwd: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = list(os.getloadavg())
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": " ".join(cmd), "returncode": proc.returncode, "wall_s": wall, "cpu_s": cpu,
            "load_average": [load0, list(os.getloadavg())], "tail": proc.stdout[-1500:] + proc.stderr[-600:]}


def slowest_test_s(output: str) -> float | None:
    """The longest single-test duration in pytest's `--durations` listing, None if absent."""
    import re

    got = [float(m.group(1)) for m in re.finditer(r"^\s*(\d+(?:\.\d+)?)s (?:call|setup|teardown)\s", output, re.M)]
    return max(got) if got else None


def bench_row(name: str, quick: bool) -> dict:
    """The demo or the default tests as one row of benchmarks/run.py (full mode only: minutes)."""
    if quick:
        return {"skipped": "not in --quick (minutes of wall time): run without --quick, or benchmarks/bench_demo.py",
                "target": f"wall <= {TARGETS_S[name]:.0f} s on 2 idle cores", "target_met": None}
    with tempfile.TemporaryDirectory() as tmp:
        if name == "demo":
            r = timed(["diffaudit", "demo", "--out", str(Path(tmp) / "demo"), "--no-progress"], Path(tmp))
        else:
            r = timed([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--durations=3"], ROOT)
            r["slowest_test_s"] = slowest_test_s(r["tail"])
    ok = r["returncode"] in (0, 5) and r["wall_s"] <= TARGETS_S[name]
    if name == "tests":
        r["target"] = f"wall <= {TARGETS_S[name]:.0f} s on 2 idle cores, no test over 60 s"
        ok = ok and r["slowest_test_s"] is not None and r["slowest_test_s"] <= 60
    else:
        r["target"] = f"wall <= {TARGETS_S[name]:.0f} s on 2 idle cores"
    r["target_met"] = ok
    return r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--tests", action="store_true")
    ap.add_argument("--slow-tests", action="store_true")
    args = ap.parse_args()
    chosen = [k for k in ("demo", "tests", "slow_tests") if getattr(args, k)] or ["demo", "tests"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {"demo": (["diffaudit", "demo", "--out", str(Path(tmp) / "demo"), "--no-progress"], Path(tmp)),
                "tests": ([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"], ROOT),
                "slow_tests": ([sys.executable, "-m", "pytest", "-m", "slow", "-p", "no:cacheprovider"], ROOT)}
        for name in chosen:
            r = timed(*cmds[name])
            target = TARGETS_S[name]
            r["target_s"] = target
            r["met"] = None if target is None else (r["returncode"] in (0, 5) and r["wall_s"] <= target)
            rows[name] = r
            print(f"{name:10s} wall {r['wall_s']:6.1f} s  cpu {r['cpu_s']:6.1f} s  target "
                  f"{'-' if target is None else f'{target:.0f} s'}  met {r['met']}  rc {r['returncode']}  "
                  f"load {r['load_average'][0][0]:.1f}->{r['load_average'][1][0]:.1f}", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = ROOT / "benchmarks" / "results" / f"times-{stamp}.json"
    out.write_text(json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=1))
    print("wrote", out)
    return 0 if all(r["returncode"] in (0, 5) for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
