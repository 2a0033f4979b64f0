"""Start-up of ferroserve and TorchServe 0.12 side by side, with the same two Python-handler
start-up models (the suite's squeezenet1_1 and mnist archives, one worker each): seconds from
the process start to the first answer of /ping, to the first `Healthy`, and to both models
answering a prediction. Alternating order, repetitions, median and spread.

  python bench/compare-startup.py --python PY --bin FERROSERVE [--runs 3]
(PY: the interpreter of scripts/python-env.sh; the fixtures are built with it.)
"""
import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "suite"))
from run import free_port  # noqa: E402

MODELS = ["squeezenet1_1", "mnist"]
INPUT = {"squeezenet1_1": "kitten.jpg", "mnist": "0.png"}


def status(url, body=None):
    try:
        req = urllib.request.Request(url, data=body, method="POST" if body else "GET")
        if body:
            req.add_header("Content-Type", "application/octet-stream")
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return None, b""


def one(kind, args, fixtures):
    work = tempfile.mkdtemp(prefix=f"startup-{kind}-")
    store = os.path.join(work, "store")
    os.makedirs(store)
    for m in MODELS:
        shutil.copy(os.path.join(fixtures, f"{m}.mar"), store)
    i, mg, x = free_port(), free_port(), free_port()
    with open(os.path.join(work, "config.properties"), "w") as f:
        f.write(f"inference_address=http://127.0.0.1:{i}\nmanagement_address=http://127.0.0.1:{mg}\n"
                f"metrics_address=http://127.0.0.1:{x}\nmodel_store={store}\n"
                f"load_models={','.join(m + '.mar' for m in MODELS)}\ndefault_workers_per_model=1\n"
                f"disable_token_authorization=true\ngrpc_inference_port={free_port()}\n"
                f"grpc_management_port={free_port()}\n")
    env = dict(os.environ, TORCH_DEVICE="cpu", TMPDIR=work, RUST_LOG="warn")
    env["PATH"] = os.path.dirname(args.python) + os.pathsep + env["PATH"]
    cmd = (["torchserve", "--start", "--foreground", "--ncs"] if kind == "torchserve"
           else [args.bin, "--foreground", "--ncs", "--python", args.python])
    cmd += ["--model-store", store, "--ts-config", os.path.join(work, "config.properties")]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    first = healthy = ready = None
    inputs = {m: open(os.path.join(fixtures, INPUT[m]), "rb").read() for m in MODELS}
    try:
        while time.monotonic() - t0 < 180 and ready is None:
            code, body = status(f"http://127.0.0.1:{i}/ping")
            now = time.monotonic() - t0
            if code is not None and first is None:
                first = now
            if code == 200 and b"Healthy" in body and healthy is None:
                healthy = now
            if healthy is not None and all(
                    status(f"http://127.0.0.1:{i}/predictions/{m}", inputs[m])[0] == 200
                    for m in MODELS):
                ready = time.monotonic() - t0
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    return first, healthy, ready


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--python", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    fixtures = tempfile.mkdtemp(prefix="startup-fixtures-")
    subprocess.run([args.python, os.path.join(HERE, "..", "tests", "suite", "fixtures.py"),
                    fixtures], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = {"ferroserve": [], "torchserve": []}
    for r in range(args.runs):
        order = ["ferroserve", "torchserve"] if r % 2 == 0 else ["torchserve", "ferroserve"]
        for kind in order:
            results[kind].append(one(kind, args, fixtures))
            print(f"run {r + 1} {kind}: {results[kind][-1]}", file=sys.stderr, flush=True)
    shutil.rmtree(fixtures, ignore_errors=True)
    print("| server | first /ping answer (s) | first Healthy (s) | both models predict (s) |")
    print("|---|---|---|---|")
    for kind, runs in results.items():
        cells = []
        for col in range(3):
            vals = [x[col] for x in runs if x[col] is not None]
            missing = len(runs) - len(vals)
            cell = (f"{statistics.median(vals):.2f} ({min(vals):.2f}–{max(vals):.2f})"
                    if vals else "none")
            cells.append(cell + (f", {missing} runs without" if missing else ""))
        print(f"| {kind} | " + " | ".join(cells) + " |")
    print(f"\n{args.runs} runs each, alternating order; median (min–max)")


if __name__ == "__main__":
    main()
