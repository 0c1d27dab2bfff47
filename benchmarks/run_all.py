"""Run the Goldkey benchmarks in sequence and print a summary table (``make bench``).

Each benchmark runs as its own process (a fresh temp data dir each, servers on 127.0.0.1 only),
its output streamed as it goes; the figures each one reports in its summary line are gathered
into one table at the end. Targets are reported, never asserted: the exit status is non-zero only
when a benchmark itself failed.

Usage::

    python benchmarks/run_all.py [--quick] [--only ingest import profile_read writer segments rules_memory]

``--quick`` runs every benchmark with small sizes (the whole run takes under 3 minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import SUMMARY_TAG, machine_line  # noqa: E402

# name -> (script, timeout in quick mode, timeout in full mode), in running order
BENCHES = {
    "ingest": ("bench_ingest.py", 150, 900),
    "import": ("bench_import.py", 150, 3600),
    "profile_read": ("bench_profile_read.py", 150, 1800),
    "writer": ("bench_writer.py", 90, 900),
    "segments": ("bench_segments.py", 180, 1200),
    "rules_memory": ("bench_rules_memory.py", 60, 300),
    "traits": ("bench_traits.py", 180, 1800),
    "rfm": ("bench_rfm.py", 60, 300),
}


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """Stop the benchmark we started and everything it started (its own process group)."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)


def run(name: str, quick: bool) -> tuple[int, list[dict[str, object]], float, list[str]]:
    script, t_quick, t_full = BENCHES[name]
    cmd = [sys.executable, str(HERE / script)] + (["--quick"] if quick else [])
    print(f"\n$ {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rows: list[dict[str, object]] = []
    noise: list[str] = []
    # its own process group, so a time-out stops its server and load generators too
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True
    )
    limit = t_quick if quick else t_full
    timed_out = threading.Event()

    def watchdog() -> None:
        timed_out.set()
        _stop_group(proc)

    timer = threading.Timer(limit, watchdog)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(SUMMARY_TAG):
                summary = json.loads(line[len(SUMMARY_TAG) :])
                rows, noise = summary.get("rows", []), summary.get("noise", [])
                continue
            print(line, end="", flush=True)
        rc = proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        raise
    finally:
        timer.cancel()
    if timed_out.is_set():
        print(f"!! {name} exceeded its {limit} s limit and was stopped", flush=True)
    return rc, rows, time.perf_counter() - t0, noise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes; the whole run takes < 3 minutes")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=list(BENCHES))
    args = ap.parse_args()

    t0 = time.perf_counter()
    print(f"Goldkey benchmarks ({'quick' if args.quick else 'full'} mode)")
    print(machine_line())
    results = []
    for name in [n for n in BENCHES if n in args.only]:
        rc, rows, secs, noise = run(name, args.quick)
        results.append((name, rc, rows, secs, noise))

    print("\n" + "=" * 110)
    print(f"SUMMARY ({'quick' if args.quick else 'full'} mode; {machine_line()})")
    header = f"{'bench':13s} {'metric':36s} {'value':>18s} {'unit':9s} {'target':12s} {'status':7s} note"
    print(header)
    print("-" * len(header))
    failed = 0
    for name, rc, rows, secs, noise in results:
        if rc != 0:
            failed += 1
        if not rows:
            print(f"{name:13s} {'(no figures: exit code ' + str(rc) + ')':36s}")
            continue
        for r in rows:
            if "metric" not in r or "value" not in r:  # a benchmark's own row shape: shown as it is
                print(f"{name:13s} {json.dumps(r, ensure_ascii=False)[:200]}")
                continue
            met = r.get("met")
            status = "-" if met is None else ("met" if met else "MISSED")
            value = r["value"]
            value_s = f"{value:,}" if isinstance(value, (int, float)) else str(value)
            print(
                f"{name:13s} {str(r['metric']):36s} {value_s:>18s} {str(r['unit']):9s} {str(r['target']):12s} "
                f"{status:7s} {r.get('note', '')}"
            )
        print(f"{'':13s} (ran {secs:.0f} s, exit {rc})")
        for msg in noise:
            if msg.startswith("WARNING"):
                print(f"{'':13s} {msg}")
    print(f"total {time.perf_counter() - t0:.0f} s; targets are reported, not asserted")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
