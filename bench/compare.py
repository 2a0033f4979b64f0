"""ferroserve vs TorchServe 0.12, side by side in one run (driven by bench/compare.sh).

Both servers get the same archives from one store, one worker per model, the same wrk load
(DURATION seconds per case), and run one after the other on the same cores. Writes a Markdown
report to stdout.

Archives: echo.mar (Python handler on both), sign_py.mar (the sign model through
handlers/sign_handler.py on both), sign.mar and sign_onnx.mar (native TorchScript / ONNX on
ferroserve; on TorchServe their manifest's handler, handlers/sign_handler.py, in Python).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("DURATION", "5"))
CONCURRENCY = [int(c) for c in os.environ.get("CONNECTIONS", "1 8 32").split()]
BIN, BENCH, PY = sys.argv[1], sys.argv[2], sys.argv[3]
VENV_BIN = os.path.dirname(PY)
CLK = os.sysconf("SC_CLK_TCK")

# (model, body file, content type)
CASES = [
    ("echo", "echo.txt", "text/plain"),
    ("sign_py", "sign.json", "application/json"),
    ("sign", "sign.json", "application/json"),
    ("sign_onnx", "sign.json", "application/json"),
]
BATCHED = ["sign", "sign_onnx"]  # also run with batch_size 8 (maxBatchDelay 5 ms)


def prepare_store(work):
    store = os.path.join(work, "store")
    os.makedirs(store)
    for mar in ["model-store/sign.mar", "model-store/sign_onnx.mar", "examples/sign_py.mar"]:
        shutil.copy(os.path.join(ROOT, mar), store)
    import zipfile

    echo = (
        "class Echo:\n    def initialize(self, context):\n        pass\n"
        "    def handle(self, data, context):\n"
        "        return [row.get('body') or row.get('data') for row in data]\n"
    )
    with zipfile.ZipFile(os.path.join(store, "echo.mar"), "w") as z:
        manifest = {"runtime": "python", "model": {"modelName": "echo", "handler": "echo_handler.py", "modelVersion": "1.0"}}
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("echo_handler.py", echo)
    import math

    frames = [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]
    with open(os.path.join(work, "sign.json"), "w") as f:
        json.dump({"landmarks": frames}, f)
    with open(os.path.join(work, "echo.txt"), "w") as f:
        f.write("hello")
    return store


def config(work, name, base, store, batch):
    models = {m: {"1.0": {"minWorkers": 1, "maxWorkers": 1, "batchSize": batch if m in BATCHED else 1, "maxBatchDelay": 5}} for m, _, _ in CASES}
    text = "\n".join([
        f"inference_address=http://127.0.0.1:{base}",
        f"management_address=http://127.0.0.1:{base + 1}",
        f"metrics_address=http://127.0.0.1:{base + 2}",
        f"grpc_inference_port={base + 3}",
        f"grpc_management_port={base + 4}",
        f"model_store={store}",
        "load_models=" + ",".join(f"{m}.mar" for m, _, _ in CASES),
        "disable_token_authorization=true",
        "default_workers_per_model=1",
        "intra_op_threads=1",
        "models=" + json.dumps(models),
    ])
    path = os.path.join(work, f"{name}.properties")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status, r.read().decode()
    except Exception:
        return None, ""


def tree(pid):
    """The pid and its descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except OSError:
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / CLK


def rss_mib(pids):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                m = re.search(r"VmRSS:\s+(\d+)", f.read())
                total += int(m.group(1)) if m else 0
        except OSError:
            pass
    return total / 1024


def wait_ready(base, started):
    """(first /ping, all models READY) seconds after start."""
    ping = None
    deadline = started + 180
    while time.time() < deadline:
        if ping is None and get(f"http://127.0.0.1:{base}/ping")[0] == 200:
            ping = time.time() - started
        ready = 0
        for m, _, _ in CASES:
            _, body = get(f"http://127.0.0.1:{base + 1}/models/{m}")
            ready += '"READY"' in body
        if ping is not None and ready == len(CASES):
            return ping, time.time() - started
        time.sleep(0.05)
    raise SystemExit("a server did not get its workers ready")


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    v = float(m.group(1))
    return {"us": v / 1000, "ms": v, "s": v * 1000}[m.group(2)]


def wrk(work, url, body, ctype, connections, root_pid):
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write(f'local f = assert(io.open("{os.path.join(work, body)}", "rb")); wrk.method = "POST"; wrk.body = f:read("*a"); f:close()\n')
        f.write(f'wrk.headers["Content-Type"] = "{ctype}"\n')
    pids = tree(root_pid)
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(
        ["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{DURATION}s", "--latency", "-s", script, url],
        capture_output=True, text=True, check=True,
    ).stdout
    cpu = cpu_seconds(pids) - cpu0
    total = int(re.search(r"(\d+) requests in", out).group(1))
    pct = {p: to_ms(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M)}
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    errors += sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": pct.get("50"), "p90": pct.get("90"), "p99": pct.get("99"),
        "errors": errors,
        "cpu_per_1k": cpu * 1000 / max(total, 1),
    }


def run_server(name, work, store, batch):
    base = 18080 if name == "torchserve" else 28080
    cfg = config(work, f"{name}-{batch}", base, store, batch)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_DEVICE="cpu", RUST_LOG="warn", TMPDIR=work)
    log = open(os.path.join(work, f"{name}-{batch}.log"), "w")
    started = time.time()
    if name == "torchserve":
        env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
        subprocess.run(["torchserve", "--start", "--ncs", "--disable-token-auth", "--model-store", store, "--ts-config", cfg],
                       cwd=work, env=env, stdout=log, stderr=log, check=True)
        ping, ready = wait_ready(base, started)
        root = int(subprocess.run(["pgrep", "-f", "org.pytorch.serve.ModelServer"], capture_output=True, text=True).stdout.split()[0])
    else:
        proc = subprocess.Popen([BIN, "--foreground", "--python", PY, "--ts-config", cfg], cwd=work, env=env, stdout=log, stderr=log)
        ping, ready = wait_ready(base, started)
        root = proc.pid
    time.sleep(1)
    rss = rss_mib(tree(root))
    results = {}
    cases = [c for c in CASES if batch == 1 or c[0] in BATCHED]
    for model, body, ctype in cases:
        for c in CONCURRENCY if batch == 1 else [c for c in CONCURRENCY if c > 1]:
            url = f"http://127.0.0.1:{base}/predictions/{model}"
            results[(model, c)] = wrk(work, url, body, ctype, c, root)
    if name == "torchserve":
        subprocess.run(["torchserve", "--stop"], cwd=work, env=env, stdout=log, stderr=log)
    else:
        os.kill(root, signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(2)
    return {"ping": ping, "ready": ready, "rss": rss, "results": results}


def main():
    work = tempfile.mkdtemp(prefix="ferroserve-compare-")
    try:
        store = prepare_store(work)
        raw = subprocess.run([BENCH, BIN, "raw", "1"], capture_output=True, text=True, check=True).stdout.split()
        raw8 = subprocess.run([BENCH, BIN, "raw", "8"], capture_output=True, text=True, check=True).stdout.split()
        decode = subprocess.run([BENCH, BIN, "decode"], capture_output=True, text=True, check=True).stdout.strip()
        runs = {}
        for batch in (1, 8):
            for name in ("torchserve", "ferroserve"):
                runs[(name, batch)] = run_server(name, work, store, batch)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    print(f"# ferroserve vs TorchServe 0.12 — {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {os.uname().machine}, loopback; wrk and the server share the cores. "
          f"One worker per model, 1 intra-op thread (OMP_NUM_THREADS=1 for TorchServe's workers), "
          f"wrk -t2 for {DURATION} s per case, servers run one after the other. Command: `bench/compare.sh`.\n")
    print("Baselines, in process, 1 thread (p50): "
          f"raw forward batch 1: TorchScript {raw[0]} µs, ONNX {raw[1]} µs; batch 8: {raw8[0]} µs / {raw8[1]} µs; "
          f"JSON body decode (64×469): {decode} µs.\n")
    print("| server | start → first /ping | start → all models ready | RSS after start (server + workers) |")
    print("|---|---|---|---|")
    for name in ("torchserve", "ferroserve"):
        r = runs[(name, 1)]
        print(f"| {name} | {r['ping']:.2f} s | {r['ready']:.2f} s | {r['rss']:.0f} MiB |")
    print()
    print("| model (TorchServe side → ferroserve side) | batch | conns | TorchServe req/s | ferroserve req/s | ratio | TorchServe p50 / p90 / p99 ms | ferroserve p50 / p90 / p99 ms | p50 ratio | errors TS / fs | server CPU s per 1k req TS / fs |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    sides = {"echo": "Python → Python", "sign_py": "Python → Python", "sign": "Python → native TorchScript", "sign_onnx": "Python → native ONNX"}
    for batch in (1, 8):
        ts, fs = runs[("torchserve", batch)]["results"], runs[("ferroserve", batch)]["results"]
        for key in ts:
            a, b = ts[key], fs[key]
            model, c = key
            fmt = lambda r: f"{r['p50']:.2f} / {r['p90']:.2f} / {r['p99']:.2f}"
            print(f"| {model} ({sides[model]}) | {batch} | {c} | {a['rps']:.0f} | {b['rps']:.0f} | {b['rps'] / max(a['rps'], 1e-9):.1f}× "
                  f"| {fmt(a)} | {fmt(b)} | {a['p50'] / max(b['p50'], 1e-9):.1f}× | {a['errors']} / {b['errors']} "
                  f"| {a['cpu_per_1k']:.2f} / {b['cpu_per_1k']:.2f} |")


if __name__ == "__main__":
    main()
