"""Idle cost of the app: the server's CPU time over 20 s with one page open and nobody touching it,
and how long it takes to stop on SIGTERM.

Usage::

    .venv/bin/python bench/idle_cpu.py [--seconds 20]

Starts the app exactly as the README does (``bash run_app.sh --port N``), opens the home page in
headless Debian chromium (playwright, ``/usr/bin/chromium``), waits until it has rendered, then
reads the server's CPU time (user + system, from ``/proc/<pid>/stat``) before and after the idle
window. Aim: under 0.5 CPU-s per 20 s (issue 13), and a prompt exit on SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="cellannot_idle_"))
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(["bash", "run_app.sh", "--port", str(port)], cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, CELLANNOT_RUNS=str(tmp / "runs")))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(url + "/_stcore/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"error: the server did not start (log: {tmp / 'server.log'})")
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH)
            page = browser.new_page()
            page.goto(url)
            page.get_by_text("Try the demo").first.wait_for(timeout=120_000)
            time.sleep(3)  # let the first render settle
            c0, t0 = cpu_seconds(proc.pid), time.time()
            time.sleep(args.seconds)
            c1, t1 = cpu_seconds(proc.pid), time.time()
            browser.close()
        lines = (tmp / "server.log").read_text(errors="replace").splitlines()
        print(f"server CPU time over {t1 - t0:.1f} s idle with one page open: {c1 - c0:.2f} CPU-s "
              f"(aim < 0.5); server log lines: {len(lines)}, 'Inotify' lines: {sum('Inotify' in x for x in lines)}")
    finally:
        t_term = time.time()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
            print(f"exit after SIGTERM: {time.time() - t_term:.2f} s (code {proc.returncode})")
        except subprocess.TimeoutExpired:
            proc.kill()
            print("the server ignored SIGTERM for 30 s (killed)")


if __name__ == "__main__":
    main()
