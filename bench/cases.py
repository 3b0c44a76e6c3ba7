"""Each benchmark case in a fresh process, so no case's memory or warm caches touch another.

A script that uses this runs itself with `--case JSON` for one case and prints the case's
result as its last JSON line; run_case_process collects it.
"""
import json
import signal
import subprocess
import sys
import time


def run_case_process(script: str, case: dict, timeout: float) -> dict:
    """`python script --case JSON` -> the last JSON line it printed, with the wall time of the
    whole process; or {"skipped": why} when it timed out or failed."""
    cmd = [sys.executable, script, "--case", json.dumps(case)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s (--case-timeout)"}
    lines = [s for s in done.stdout.splitlines() if s.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        how = (f"killed by {signal.Signals(-done.returncode).name}" if done.returncode < 0
               else f"exit {done.returncode}")
        return {"skipped": f"failed ({how}): {tail}"}
    return {**json.loads(lines[-1]), "case_wall_s": round(time.perf_counter() - t0, 1)}
