"""DQM benchmarks: latency to the browser, bounded memory, and what a slow or dead DQM costs the DAQ.

    python benchmarks/bench_dqm.py [--spills 30] [--sessions 20] [--skip-daq]

1. latency: a synthetic DAQ feed stamps each EVENTS batch with its send time; a headless Chromium page
   records (on the next animation frame after the update arrives) now - send time. "DAQ publish ->
   visible in the page".
2. memory: RSS of the DQM process over >= 30 simulated spills (synthetic feed, 2000 events/spill) and
   while browser sessions are opened and closed repeatedly.
3. DAQ cost: real ``na64 simulate`` (max pace) -> ``na64 daq`` runs (a) with no DQM, (b) with a dead
   DQM (connected, then SIGSTOPped: never reads), (c) with a live DQM; DAQ CPU seconds, run wall time,
   events written and events it skipped for monitoring.
Figures are printed; nothing is asserted (see tests/dqm for the checks).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daq.demo import free_port  # noqa: E402
from dqm.synthetic import SynthConfig, publish  # noqa: E402
from tests.conftest import CHROMIUM_ARGS  # noqa: E402


def na64(*args: str) -> list[str]:
    return [sys.executable, "-m", "daq", *args]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_dqm(
    *args: str, cfg: str = "update_ms = 250\nclose_delay_s = 0.3\n"
) -> tuple[subprocess.Popen[str], str]:
    conf = Path(tempfile.mkdtemp()) / "dqm.toml"
    conf.write_text(cfg)
    proc = subprocess.Popen(
        na64("dqm", *args, "--port", "0", "--config", str(conf)),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("DQM at "):
        proc.kill()
        raise RuntimeError(f"DQM did not start: {line!r}")
    return proc, line.split()[2]


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def feed_thread(
    endpoint: str, spills: int, period: float, events: int
) -> tuple[threading.Thread, threading.Event]:
    stop_ev = threading.Event()
    cfg = SynthConfig(events_per_spill=events, batch_size=max(events // 25, 1), spill_length_s=0.5 * period)
    t = threading.Thread(
        target=publish, args=(endpoint, spills, 1, period, 50.0, cfg), kwargs={"stop": stop_ev}, daemon=True
    )
    t.start()
    return t, stop_ev


def bench_latency_and_memory(spills: int, sessions: int) -> None:
    from playwright.sync_api import sync_playwright

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    dqm, url = start_dqm("--source", endpoint)
    period = 0.6
    feeder, stop_feed = feed_thread(endpoint, 0, period, 2000)  # runs until the end of the benchmark
    rss: list[tuple[int, float]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_selector("#na64-eot", timeout=60000)
            t0 = time.monotonic()
            spill = 0
            while spill < spills and feeder.is_alive():
                spill = int(page.evaluate("window.na64 ? window.na64.spill : 0") or 0)
                rss.append((spill, rss_mb(dqm.pid)))
                time.sleep(1.0)
            lat = page.evaluate("window.na64.lat") or []
            print(
                f"[latency] DAQ publish -> visible in the page (update_ms 250): {len(lat)} updates, median "
                f"{statistics.median(lat):.0f} ms, p90 {sorted(lat)[int(0.9 * len(lat))]:.0f} ms, max "
                f"{max(lat):.0f} ms"
                if lat
                else "[latency] no samples"
            )
            print(
                f"[memory] {spills} spills in {time.monotonic() - t0:.0f} s; DQM RSS (spill: MB): "
                + ", ".join(f"{s}: {m:.0f}" for s, m in rss[:: max(len(rss) // 8, 1)])
            )
            tail = [m for _, m in rss[len(rss) // 2 :]]
            print(f"[memory] second half of the run: min {min(tail):.0f} MB, max {max(tail):.0f} MB")
            page.close()
            # sessions opened and closed repeatedly, data still flowing
            page_sizes(browser, url)
            before = rss_mb(dqm.pid)
            samples = []
            for i in range(sessions):
                ctx = browser.new_context()
                pg = ctx.new_page()
                pg.goto(url + ("?tab=physics" if i % 2 else "?tab=ecal"))
                pg.wait_for_selector("#na64-eot", timeout=60000)
                time.sleep(0.5)
                ctx.close()
                samples.append(rss_mb(dqm.pid))
            time.sleep(8)  # unused sessions are discarded after 5 s
            after = rss_mb(dqm.pid)
            print(
                f"[memory] {sessions} sessions opened and closed: RSS before {before:.0f} MB, during "
                f"{min(samples):.0f}-{max(samples):.0f} MB, 8 s after {after:.0f} MB"
            )
            with urllib.request.urlopen(url, timeout=10):
                pass
            browser.close()
    finally:
        stop_feed.set()
        stop(dqm)


def page_sizes(browser: object, url: str) -> None:
    """Websocket bytes per second and largest frame received by a page, for each tab."""
    for tab in ("summary", "physics", "ecal", "hcal", "rates", "waveforms", "checks"):
        page = browser.new_page()  # type: ignore[attr-defined]
        frames: list[int] = []

        def on_ws(ws: object, frames: list[int] = frames) -> None:
            ws.on("framereceived", lambda payload: frames.append(len(payload)))  # type: ignore[attr-defined]

        page.on("websocket", on_ws)
        page.goto(f"{url}?tab={tab}")
        page.wait_for_selector("#na64-eot", timeout=60000)
        page.wait_for_timeout(2000)  # (playwright delivers events only inside its own calls)
        n0 = len(frames)
        page.wait_for_timeout(4000)
        steady = frames[n0:]
        updates = page.evaluate("window.na64 ? window.na64.updates : -1")
        print(
            f"[payload] tab {tab:9s}: first document {sum(frames[:n0]) / 1e3:.0f} kB; then "
            f"{sum(steady) / 4e3:.1f} kB/s, largest frame {max(steady, default=0) / 1e3:.1f} kB ({updates} updates)"
        )
        page.close()


def daq_run(mode: str, spills: int) -> dict[str, float]:
    """One simulate -> daq run; mode: none | dead | live DQM."""
    ep, pub = free_port(), free_port()
    data = tempfile.mkdtemp()
    daq_args = (
        "--endpoint",
        f"tcp://127.0.0.1:{ep}",
        "--publish",
        f"tcp://127.0.0.1:{pub}",
        "--data-dir",
        data,
    )
    with (Path(data) / "daq.log").open("w") as err:  # a file, not a pipe: a full pipe would stall the DAQ
        daq = subprocess.Popen(na64("daq", *daq_args, "--stop-after-run"), stderr=err)
    dqm = None
    try:
        if mode != "none":
            dqm, _ = start_dqm("--source", f"tcp://127.0.0.1:{pub}")
            time.sleep(1.0)
            if mode == "dead":
                dqm.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        sim_args = (
            "--endpoint",
            f"tcp://127.0.0.1:{ep}",
            "--pace",
            "max",
            "--rate",
            "2e6",
            "--spill-length",
            "0.5",
        )
        sim = subprocess.run(
            na64("simulate", *sim_args, "--spills", str(spills)), stderr=subprocess.DEVNULL, timeout=600
        )
        _, status, usage = os.wait4(daq.pid, 0)  # reaps the DAQ and gives its CPU time
        daq.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        wall = time.monotonic() - t0
    finally:
        if dqm is not None:
            stop(dqm)
        if daq.returncode is None:
            daq.kill()
            daq.wait(10)
    assert sim.returncode == 0
    from daq.files import SpillFile, list_spill_files

    written = skipped = 0
    for path in list_spill_files([data]):
        with SpillFile(path) as f:
            written += f.n_events
            skipped += f.losses.get("monitor_skipped", 0)
    return {"wall": wall, "cpu": cpu, "written": written, "skipped": skipped}


def bench_daq_cost(spills: int) -> None:
    for mode in ("none", "dead", "live"):
        r = daq_run(mode, spills)
        print(
            f"[daq cost] DQM {mode:4s}: run wall {r['wall']:.1f} s, DAQ CPU {r['cpu']:.1f} s, events written "
            f"{r['written']:.0f}, events not sent to the DQM {r['skipped']:.0f}"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spills", type=int, default=45)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--daq-spills", type=int, default=3)
    ap.add_argument("--skip-daq", action="store_true")
    ap.add_argument("--skip-browser", action="store_true")
    a = ap.parse_args()
    if not a.skip_browser:
        bench_latency_and_memory(a.spills, a.sessions)
    if not a.skip_daq:
        bench_daq_cost(a.daq_spills)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
