"""What drift monitoring costs: the native sign model served by one ferroserve binary with
`drift_monitoring=true` (the default; a reference set, so scores are computed every `period`
requests) and with `drift_monitoring=false`, one after the other, alternating which goes
first, REPS runs each; wrk at 8 connections for DURATION seconds after a warm-up. Reports
throughput and server CPU per 1000 requests (median and range) and the server's RSS after
the load, and checks that monitoring memory stays bounded after many more requests than
the window holds.

The same run measures monitoring's own work in process (`bench drift`: the input summaries
of the sign request, and recording one observation with scoring every 100), the part of the
difference that is not machine noise.

Usage: python3 bench/drift.py FERROSERVE_BIN BENCH_BIN
"""
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import request, rss_mib, tree, wrk  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("DURATION", "8"))
REPS = int(os.environ.get("REPS", "5"))
CONNECTIONS = 8
BIN, BENCH = sys.argv[1:3]
NAMES = ("monitoring on", "monitoring off")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(work, monitoring):
    ports = [free_port() for _ in range(5)]
    store = os.path.join(work, "store")
    config = os.path.join(work, "config.properties")
    with open(config, "w") as f:
        f.write(f"inference_address=http://127.0.0.1:{ports[0]}\n"
                f"management_address=http://127.0.0.1:{ports[1]}\n"
                f"metrics_address=http://127.0.0.1:{ports[2]}\n"
                f"grpc_inference_port={ports[3]}\ngrpc_management_port={ports[4]}\n"
                f"model_store={store}\nload_models=sign.mar\nmetrics_mode=prometheus\n"
                f"disable_token_authorization=true\nintra_op_threads=1\n"
                f"drift_monitoring={'true' if monitoring else 'false'}\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=work)
    proc = subprocess.Popen([BIN, "--foreground", "--ts-config", config], cwd=work, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while request(f"http://127.0.0.1:{ports[0]}/ping")[0] != 200:
        if time.time() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    return proc, ports


def run(work, monitoring):
    proc, ports = start(work, monitoring)
    try:
        url = f"http://127.0.0.1:{ports[0]}/predictions/sign"
        wrk(work, url, "sign.json", "application/json", CONNECTIONS, proc.pid, 1)
        if monitoring:
            # The warm-up's requests become the reference: scores are computed from here on.
            put = urllib.request.Request(
                f"http://127.0.0.1:{ports[1]}/models/sign/1.0/drift/reference", method="PUT")
            with urllib.request.urlopen(put, timeout=30) as r:
                assert r.status == 200
        result = wrk(work, url, "sign.json", "application/json", CONNECTIONS, proc.pid, DURATION)
        result["rss"] = rss_mib(tree(proc.pid))
        if monitoring:
            _, text = request(f"http://127.0.0.1:{ports[1]}/models/sign/1.0/drift")
            result["window"] = json.loads(text)["window"]
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def med(xs):
    return statistics.median(xs)


def spread(xs, fmt="{:.0f}"):
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def main():
    work = tempfile.mkdtemp(prefix="ferroserve-drift-")
    try:
        os.makedirs(os.path.join(work, "store"))
        shutil.copy(os.path.join(ROOT, "model-store/sign.mar"), os.path.join(work, "store"))
        frames = [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]
        with open(os.path.join(work, "sign.json"), "w") as f:
            json.dump({"landmarks": frames}, f)
        runs = {n: [] for n in NAMES}
        orders = []
        for rep in range(REPS):
            order = NAMES if rep % 2 == 0 else NAMES[::-1]
            orders.append(" then ".join(order))
            for name in order:
                print(f"run {rep + 1}: {name}", file=sys.stderr)
                runs[name].append(run(work, name == "monitoring on"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    on, off = runs[NAMES[0]], runs[NAMES[1]]
    cpu_on, cpu_off = med([r["cpu_per_1k"] for r in on]), med([r["cpu_per_1k"] for r in off])
    print(f"# Drift monitoring overhead — {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {os.cpu_count()} cores, loopback; wrk and the server share them. The native sign model "
          f"(model-store/sign.mar), one worker, 1 intra-op thread, batch 1; wrk {CONNECTIONS} connections, "
          f"{DURATION} s after a 1 s warm-up; {REPS} runs each, alternating ({'; '.join(orders)}); median "
          f"(min–max). Monitoring on: default window 1000 and period 100, a reference captured after the "
          f"warm-up, so scores are computed during the run.\n")
    print("| | req/s | server CPU ms per request | RSS after the run MiB | errors |")
    print("|---|---|---|---|---|")
    for name, rs in runs.items():
        print(f"| {name} | {spread([r['rps'] for r in rs])} | "
              f"{spread([r['cpu_per_1k'] for r in rs], '{:.3f}')} | "
              f"{spread([r['rss'] for r in rs], '{:.1f}')} | {sum(r['errors'] for r in rs)} |")
    summaries, observe = (float(x) for x in subprocess.run(
        [BENCH, BIN, "drift"], capture_output=True, text=True, check=True).stdout.split())
    work_us = summaries + observe
    print(f"\nServer CPU per request, on / off: {cpu_on / cpu_off:.3f} "
          f"({(cpu_on / cpu_off - 1) * 100:+.1f} %; the runs' own spread is of the same order). "
          f"Monitoring's work measured in process: {summaries:.1f} µs of input summaries (median) + "
          f"{observe:.2f} µs to record the observation (mean, scoring every 100 requests included) = "
          f"{work_us:.1f} µs per request, {work_us / (cpu_off * 1000) * 100:.2f} % of the server CPU per "
          f"request with monitoring off. Window after each monitored run: "
          f"{sorted({r['window'] for r in on})} requests (bounded by the window size whatever the traffic).")


if __name__ == "__main__":
    main()
