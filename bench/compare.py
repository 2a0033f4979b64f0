"""ferroserve vs TorchServe 0.12, side by side in one run (driven by bench/compare.sh).

Both servers get the same archives from one store and the same settings: one worker per
model, one intra-op thread (OMP_NUM_THREADS=1 and intra_op_threads=1), the same batch size
and delay for every model (batch 1, then batch 8 with maxBatchDelay 5 ms). They run one
after the other on the same cores, alternating which goes first, REPS times each; every
case is measured once per repetition after a warm-up, and the tables give the median and
the range. wrk's non-2xx answers and socket errors are counted as errors and left out of
the throughput. Each case's answer is checked before and after its load.

Archives: echo (a Python handler on both), sign_py (the sign model through
handlers/sign_handler.py on both), sign and sign_onnx (native TorchScript / ONNX on
ferroserve; their manifest's handler, handlers/sign_handler.py, on TorchServe), noop and
noop_onnx (an identity model: native json_tensor on ferroserve, TorchServe's BaseHandler
contract in handlers/tensor_handler.py on TorchServe) with 64-byte bodies. A bare actix-web
echo server (bench/bare_echo.rs) answers the same 64-byte body in the same run: the limit of
the HTTP stack itself.
"""
import json
import math
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import cpu_seconds, request, rss_mib, to_ms, tree  # noqa: E402
from harness import wrk as measure  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DURATION = int(os.environ.get("DURATION", "4"))
REPS = int(os.environ.get("REPS", "3"))
CONNECTIONS = {1: [1, 8, 32], 8: [8, 32]}
# BATCHES ("1,8") and CONNS ("8,32") narrow the run to some batch sizes and connection counts.
CONNECTIONS = {b: c for b, c in CONNECTIONS.items() if str(b) in os.environ.get("BATCHES", "1,8").split(",")}
if os.environ.get("CONNS"):
    CONNECTIONS = {b: [int(c) for c in os.environ["CONNS"].split(",")] for b in CONNECTIONS}
BATCH_DELAY_MS = 5
BIN, BENCH, BARE, PY = sys.argv[1:5]
VENV_BIN = os.path.dirname(PY)
SERVERS = ("torchserve", "ferroserve")
# Other ferroserve binaries by server name (bench/before_after.py compares two builds).
BINARIES = {}

# model → (archive in the repository, body file, content type, TorchServe side, ferroserve side)
MODELS = {
    "echo": (None, "echo.txt", "text/plain", "Python", "Python"),
    "sign_py": ("examples/sign_py.mar", "sign.json", "application/json", "Python", "Python"),
    "sign": ("model-store/sign.mar", "sign.json", "application/json", "Python", "native TorchScript"),
    "sign_onnx": ("model-store/sign_onnx.mar", "sign.json", "application/json", "Python", "native ONNX"),
    "noop": ("tests/fixtures/noop.mar", "noop.json", "application/json", "Python BaseHandler", "native TorchScript"),
    "noop_onnx": ("tests/fixtures/noop_onnx.mar", "noop.json", "application/json", "Python BaseHandler", "native ONNX"),
}
# ONLY ("sign,sign_py") serves just those models (the no-op table needs noop and noop_onnx).
if os.environ.get("ONLY"):
    MODELS = {m: v for m, v in MODELS.items() if m in os.environ["ONLY"].split(",")}
NOOP_TABLE = {"noop", "noop_onnx"} <= MODELS.keys() and 1 in CONNECTIONS
# Twelve numbers, 64 bytes of JSON.
NOOP_VALUES = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3]


def prepare(work):
    store = os.path.join(work, "store")
    os.makedirs(store)
    for model, (mar, *_rest) in MODELS.items():
        if mar:
            shutil.copy(os.path.join(ROOT, mar), os.path.join(store, f"{model}.mar"))
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
    # The reference case of seed 0, 64 frames: the sign model's expected best label.
    frames = [[math.sin((f * 469 + j) * 0.001) * 0.5 for j in range(469)] for f in range(64)]
    with open(os.path.join(work, "sign.json"), "w") as f:
        json.dump({"landmarks": frames}, f)
    with open(os.path.join(work, "echo.txt"), "w") as f:
        f.write("hello")
    noop = json.dumps(NOOP_VALUES)
    assert len(noop) == 64, len(noop)
    with open(os.path.join(work, "noop.json"), "w") as f:
        f.write(noop)
    with open(os.path.join(ROOT, "tests/fixtures/sign_reference.json")) as f:
        ref = json.load(f)
    case = next(c for c in ref["cases"] if c["seed"] == 0 and c["frames"] == 64)
    best = max(range(len(case["logits"])), key=lambda i: case["logits"][i])
    f32 = [struct.unpack("f", struct.pack("f", v))[0] for v in NOOP_VALUES]
    expected = {
        "echo": lambda body: body == "hello",
        "noop": lambda body: body == json.dumps(f32, indent=2),
    }
    label = ref["labels"][str(best)]
    for m in ("sign", "sign_py", "sign_onnx"):
        expected[m] = lambda body, label=label: json.loads(body)["predictions"][0]["label"] == label
    expected["noop_onnx"] = expected["noop"]
    return store, expected


def config(work, name, base, store, batch):
    models = {m: {"1.0": {"minWorkers": 1, "maxWorkers": 1, "batchSize": batch, "maxBatchDelay": BATCH_DELAY_MS}} for m in MODELS}
    text = "\n".join([
        f"inference_address=http://127.0.0.1:{base}",
        f"management_address=http://127.0.0.1:{base + 1}",
        f"metrics_address=http://127.0.0.1:{base + 2}",
        f"grpc_inference_port={base + 3}",
        f"grpc_management_port={base + 4}",
        f"model_store={store}",
        "load_models=" + ",".join(f"{m}.mar" for m in MODELS),
        "disable_token_authorization=true",
        "default_workers_per_model=1",
        "intra_op_threads=1",
        "models=" + json.dumps(models),
    ])
    path = os.path.join(work, f"{name}-{batch}.properties")
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def wait_ready(base, started):
    """(first /ping, all models READY) seconds after start."""
    ping = None
    deadline = started + 300
    while time.time() < deadline:
        if ping is None and request(f"http://127.0.0.1:{base}/ping")[0] == 200:
            ping = time.time() - started
        ready = sum('"READY"' in request(f"http://127.0.0.1:{base + 1}/models/{m}")[1] for m in MODELS)
        if ping is not None and ready == len(MODELS):
            return ping, time.time() - started
        time.sleep(0.05)
    raise SystemExit("a server did not get its workers ready")


def wrk(work, url, body, ctype, connections, root_pid, seconds=DURATION):
    return measure(work, url, body, ctype, connections, root_pid, seconds)


def start(name, work, store, batch):
    base = 18080 if name == "torchserve" else 28080
    cfg = config(work, name, base, store, batch)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_DEVICE="cpu", RUST_LOG="warn", TMPDIR=work)
    log = open(os.path.join(work, f"{name}-{batch}.log"), "a")
    started = time.time()
    if name == "torchserve":
        env["PATH"] = f"{VENV_BIN}:{env['PATH']}"
        subprocess.run(["torchserve", "--start", "--ncs", "--disable-token-auth", "--model-store", store, "--ts-config", cfg],
                       cwd=work, env=env, stdout=log, stderr=log, check=True)
        ping, ready = wait_ready(base, started)
        root = int(subprocess.run(["pgrep", "-f", "org.pytorch.serve.ModelServer"], capture_output=True, text=True).stdout.split()[0])
        stop = lambda: subprocess.run(["torchserve", "--stop"], cwd=work, env=env, stdout=log, stderr=log)
    else:
        binary = BINARIES.get(name, BIN)
        proc = subprocess.Popen([binary, "--foreground", "--python", PY, "--ts-config", cfg], cwd=work, env=env, stdout=log, stderr=log)
        ping, ready = wait_ready(base, started)
        root = proc.pid

        def stop():
            os.kill(root, signal.SIGTERM)
            proc.wait(timeout=60)
    return base, root, stop, ping, ready


def run_server(name, work, store, batch, expected):
    base, root, stop, ping, ready = start(name, work, store, batch)
    rss_start = rss_mib(tree(root))
    front_start = rss_mib([root])
    # Warm-up: every model under the heaviest load of the run.
    for model, (_, body, ctype, *_sides) in MODELS.items():
        wrk(work, f"http://127.0.0.1:{base}/predictions/{model}", body, ctype, max(CONNECTIONS[batch]), root, seconds=1)
    results, checked, wrong = {}, 0, []
    for model, (_, body, ctype, *_sides) in MODELS.items():
        url = f"http://127.0.0.1:{base}/predictions/{model}"
        with open(os.path.join(work, body), "rb") as f:
            payload = f.read()

        def check():
            nonlocal checked
            checked += 1
            status, text = request(url, payload, ctype)
            if status != 200 or not expected[model](text):
                wrong.append(f"{model}: {status} {text[:200]!r}")

        for c in CONNECTIONS[batch]:
            check()
            results[(model, c)] = wrk(work, url, body, ctype, c, root)
            check()
    rss_load = rss_mib(tree(root))
    front_load = rss_mib([root])
    stop()
    time.sleep(2)
    return {"ping": ping, "ready": ready, "rss_start": rss_start, "rss_load": rss_load,
            "front_start": front_start, "front_load": front_load,
            "results": results, "checked": checked, "wrong": wrong}


def bare_echo(work, port=38080):
    proc = subprocess.Popen([BARE, str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while request(f"http://127.0.0.1:{port}/", b"x", "text/plain")[0] != 200:
            if time.time() > deadline:
                raise SystemExit("the bare echo server did not answer")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/"
        wrk(work, url, "noop.json", "application/json", 32, proc.pid, seconds=1)
        with open(os.path.join(work, "noop.json"), "rb") as f:
            payload = f.read()
        out = {}
        for c in CONNECTIONS[1]:
            out[c] = wrk(work, url, "noop.json", "application/json", c, proc.pid)
            assert request(url, payload, "application/json") == (200, payload.decode())
        return out
    finally:
        proc.kill()
        proc.wait()


def med(values):
    return statistics.median(values)


def spread(values, fmt="{:.0f}"):
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main():
    work = tempfile.mkdtemp(prefix="ferroserve-compare-")
    runs = {(s, b): [] for s in SERVERS for b in CONNECTIONS}
    bare = []
    orders = []
    try:
        store, expected = prepare(work)
        sign_kb = os.path.getsize(os.path.join(work, "sign.json")) // 1000
        raw = subprocess.run([BENCH, BIN, "raw", "1"], capture_output=True, text=True, check=True).stdout.split()
        decode = subprocess.run([BENCH, BIN, "decode", os.path.join(work, "sign.json")],
                                capture_output=True, text=True, check=True).stdout.strip()
        for batch in CONNECTIONS:
            for rep in range(REPS):
                order = SERVERS if rep % 2 == 0 else SERVERS[::-1]
                orders.append(f"batch {batch}, run {rep + 1}: {' then '.join(order)}")
                for name in order:
                    print(f"batch {batch} run {rep + 1}: {name}", file=sys.stderr)
                    runs[(name, batch)].append(run_server(name, work, store, batch, expected))
                if batch == 1 and NOOP_TABLE:
                    bare.append(bare_echo(work))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    narrowed = "".join(f"{k}={os.environ[k]} " for k in ("ONLY", "BATCHES", "CONNS", "REPS", "DURATION") if os.environ.get(k))
    first = min(CONNECTIONS)
    python_here = [m for m, v in MODELS.items() if v[4] == "Python"]
    print(f"# ferroserve vs TorchServe 0.12 — {time.strftime('%Y-%m-%d')}\n")
    print(f"Machine: {os.cpu_count()} cores ({cpu}), {os.uname().machine}, loopback; wrk and the server share the cores. "
          f"Both servers: the same archives, one worker per model, 1 intra-op thread (OMP_NUM_THREADS=1, "
          f"intra_op_threads=1; handlers/sign_handler.py and handlers/tensor_handler.py give ONNX Runtime the same count), "
          + " then ".join(f"every model at batch {b}" + (f" with maxBatchDelay {BATCH_DELAY_MS} ms" if b > 1 else "") for b in CONNECTIONS)
          + f". Models: {', '.join(MODELS)}. "
          f"wrk -t2 (-t1 at 1 connection), {DURATION} s per case after a 1 s warm-up of every model; "
          f"{REPS} runs per server, alternating which starts first; cells are the median (min–max) of the runs. "
          f"Throughput counts 2xx answers only; errors are non-2xx answers and socket errors, summed over the runs. "
          f"Command: `{narrowed}bench/compare.sh`.\n")
    print("Run order: " + "; ".join(orders) + ".\n")
    print("In-process baselines, 1 thread (p50): "
          f"raw forward batch 1: TorchScript {raw[0]} µs, ONNX {raw[1]} µs; JSON body decode (64×469): {decode} µs.\n")
    wrong = [w for runs_ in runs.values() for r in runs_ for w in r["wrong"]]
    checked = sum(r["checked"] for runs_ in runs.values() for r in runs_)
    print(f"Answers checked before and after every case: {checked - len(wrong)} of {checked} as expected"
          + (": " + "; ".join(wrong[:5]) if wrong else "") + ".\n")
    print(f"## Start-up and memory (all {len(MODELS)} models, batch-{first} runs)\n")
    print("RSS of the whole process tree (the server and its Python workers) and of the front end alone "
          f"(TorchServe's JVM, ferroserve's process): all {len(MODELS)} models run in Python workers on TorchServe, "
          f"{len(python_here)} ({', '.join(python_here) or 'none'}) on ferroserve.\n")
    print("| server | start → first /ping s | start → all models ready s | RSS after start MiB: all / front end | RSS after the load MiB: all / front end |")
    print("|---|---|---|---|---|")
    for name in SERVERS:
        rs = runs[(name, first)]
        print(f"| {name} | {spread([r['ping'] for r in rs], '{:.2f}')} | {spread([r['ready'] for r in rs], '{:.2f}')} "
              f"| {spread([r['rss_start'] for r in rs])} / {spread([r['front_start'] for r in rs])} "
              f"| {spread([r['rss_load'] for r in rs])} / {spread([r['front_load'] for r in rs])} |")
    print()
    print("## Throughput and latency\n")
    print("| model (TorchServe side → ferroserve side) | batch | conns | TorchServe req/s | ferroserve req/s | ratio | TorchServe p50 ms | ferroserve p50 ms | errors TS / fs | server CPU s per 1k req TS / fs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in CONNECTIONS:
        for model, (_, _, _, ts_side, fs_side) in MODELS.items():
            for c in CONNECTIONS[batch]:
                ts = [r["results"][(model, c)] for r in runs[("torchserve", batch)]]
                fs = [r["results"][(model, c)] for r in runs[("ferroserve", batch)]]
                ratio = med([x["rps"] for x in fs]) / max(med([x["rps"] for x in ts]), 1e-9)
                print(f"| {model} ({ts_side} → {fs_side}) | {batch} | {c} | {spread([x['rps'] for x in ts])} | {spread([x['rps'] for x in fs])} "
                      f"| {ratio:.1f}× | {spread([x['p50'] for x in ts], '{:.2f}')} | {spread([x['p50'] for x in fs], '{:.2f}')} "
                      f"| {sum(x['errors'] for x in ts)} / {sum(x['errors'] for x in fs)} "
                      f"| {med([x['cpu_per_1k'] for x in ts]):.2f} / {med([x['cpu_per_1k'] for x in fs]):.2f} |")
    print()
    ceiling(raw, decode, sign_kb, runs)
    if NOOP_TABLE:
        noop_table(runs, bare)
    if wrong:
        sys.exit(1)


def ceiling(raw, decode, sign_kb, runs):
    """The native sign models against the work no server can skip: decoding the body and the
    forward pass, both measured in process in the same run."""
    native = [(m, us) for m, us in (("sign", raw[0]), ("sign_onnx", raw[1])) if m in MODELS]
    if not native:
        return
    print("## The native sign models against their ceiling\n")
    print(f"Work no server can skip, measured in process in this run (one thread, p50): decoding the "
          f"64×469 JSON body (Python's float spelling, {sign_kb} KB) {decode} µs, the forward pass "
          f"(TorchScript {raw[0]} µs, ONNX {raw[1]} µs). The server's CPU per request against that sum is "
          f"the share of its work that is the ceiling's; one worker cannot pass 1 / forward requests per second.\n")
    print("| model | batch | conns | ferroserve req/s | server CPU ms/request | decode + forward ms | share of CPU that is decode + forward | 1 / forward req/s | req/s against it |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in CONNECTIONS:
        for model, forward in native:
            for c in CONNECTIONS[batch]:
                fs = [r["results"][(model, c)] for r in runs[("ferroserve", batch)]]
                rps = med([x["rps"] for x in fs])
                cpu = med([x["cpu_per_1k"] for x in fs])
                need = (float(decode) + float(forward)) / 1000
                bound = 1e6 / float(forward)
                print(f"| {model} | {batch} | {c} | {rps:.0f} | {cpu:.2f} | {need:.2f} | {need / cpu:.0%} | {bound:.0f} | {rps / bound:.0%} |")
    print()


def noop_table(runs, bare):
    print("## The no-op model against the HTTP stack's limit\n")
    print("64-byte JSON bodies at batch 1: ferroserve's native identity model (json_tensor) next to a bare actix-web "
          "server that returns the body (bench/bare_echo.rs), measured in the same run.\n")
    print("| conns | bare actix-web echo req/s | ferroserve noop TorchScript req/s | ferroserve / bare | ferroserve noop ONNX req/s | ferroserve / bare | TorchServe noop TorchScript req/s |")
    print("|---|---|---|---|---|---|---|")
    for c in CONNECTIONS[1]:
        b = [x[c]["rps"] for x in bare]
        fs_ts = [r["results"][("noop", c)]["rps"] for r in runs[("ferroserve", 1)]]
        fs_onnx = [r["results"][("noop_onnx", c)]["rps"] for r in runs[("ferroserve", 1)]]
        ts = [r["results"][("noop", c)]["rps"] for r in runs[("torchserve", 1)]]
        print(f"| {c} | {spread(b)} | {spread(fs_ts)} | {med(fs_ts) / med(b):.2f} | {spread(fs_onnx)} | {med(fs_onnx) / med(b):.2f} | {spread(ts)} |")


if __name__ == "__main__":
    main()
