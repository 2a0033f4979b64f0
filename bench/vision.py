"""TorchServe's image_classifier on a TorchScript ResNet-18, side by side: TorchServe 0.12 runs
its Python handler, ferroserve the native one, on the same archive with the same settings (one
worker, one intra-op thread: OMP_NUM_THREADS=1 and intra_op_threads=1, batch 1 and batch 4
with maxBatchDelay 5 ms), 8 connections posting the same 500 x 375 JPEG. The servers run one
after the other, alternating which goes first, REPS times each; medians with ranges; non-2xx
answers and socket errors counted apart and left out of the throughput; every run's answer
checked against the first one's labels. The in-process limit is measured in the same run:
decode + transforms + raw forward of the same file on one thread (`bench vision`).

Usage: python3 bench/vision.py FERROSERVE BENCH PYTHON   (bench/vision.sh builds and runs it)
"""
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import request, rss_mib, tree, wrk  # noqa: E402

BIN, BENCH, PY = sys.argv[1:4]
DURATION = int(os.environ.get("DURATION", "10"))
REPS = int(os.environ.get("REPS", "3"))
CONNECTIONS = 8
BATCHES = (1, 4)
SERVERS = ("torchserve", "ferroserve")


def prepare(work):
    """The archive (random ResNet-18 weights: the answers only need to agree) and the image."""
    store = os.path.join(work, "store")
    os.makedirs(store)
    script = f'''
import json, numpy as np, torch, torchvision
from PIL import Image
torch.manual_seed(0)
torch.jit.script(torchvision.models.resnet18().eval()).save("{work}/resnet18.pt")
json.dump({{str(i): ["n%08d" % i, "class_%d" % i] for i in range(1000)}}, open("{work}/index_to_name.json", "w"))
rng = np.random.default_rng(0)
y, x = np.mgrid[0:375, 0:500]
rgb = np.stack([np.sin(x / 17) * 80 + 128 + rng.normal(0, 10, x.shape), np.cos(y / 23) * 70 + 120,
                (x * 3 + y * 2) % 256], -1)
Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save("{work}/image.jpg", quality=90)
'''
    subprocess.run([PY, "-c", script], check=True)
    subprocess.run([os.path.join(os.path.dirname(PY), "torch-model-archiver"), "--model-name",
                    "resnet18", "--version", "1.0", "--serialized-file",
                    os.path.join(work, "resnet18.pt"), "--handler", "image_classifier",
                    "--extra-files", os.path.join(work, "index_to_name.json"), "--export-path",
                    store], check=True)
    return store


def config(work, name, base, store, batch):
    models = {"resnet18": {"1.0": {"minWorkers": 1, "maxWorkers": 1, "batchSize": batch,
                                   "maxBatchDelay": 5}}}
    path = os.path.join(work, f"{name}-{batch}.properties")
    with open(path, "w") as f:
        f.write("\n".join([
            f"inference_address=http://127.0.0.1:{base}",
            f"management_address=http://127.0.0.1:{base + 1}",
            f"metrics_address=http://127.0.0.1:{base + 2}",
            f"grpc_inference_port={base + 3}", f"grpc_management_port={base + 4}",
            f"model_store={store}", "load_models=resnet18.mar",
            "disable_token_authorization=true", "intra_op_threads=1",
            "models=" + json.dumps(models)]) + "\n")
    return path


def run(name, work, store, batch):
    base = 18180 if name == "torchserve" else 28180
    cfg = config(work, name, base, store, batch)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TORCH_DEVICE="cpu",
               RUST_LOG="warn", TMPDIR=work)
    env["PATH"] = f"{os.path.dirname(PY)}:{env['PATH']}"
    log = open(os.path.join(work, f"{name}.log"), "a")
    if name == "torchserve":
        subprocess.run(["torchserve", "--start", "--ncs", "--disable-token-auth", "--model-store",
                        store, "--ts-config", cfg], cwd=work, env=env, stdout=log, stderr=log,
                       check=True)
    else:
        proc = subprocess.Popen([BIN, "--foreground", "--python", PY, "--ts-config", cfg],
                                cwd=work, env=env, stdout=log, stderr=log)
    deadline = time.time() + 300
    while '"READY"' not in request(f"http://127.0.0.1:{base + 1}/models/resnet18")[1]:
        assert time.time() < deadline, f"{name} never had its worker ready"
        time.sleep(0.2)
    root = proc.pid if name == "ferroserve" else int(subprocess.run(
        ["pgrep", "-f", "org.pytorch.serve.ModelServer"], capture_output=True,
        text=True).stdout.split()[0])
    url = f"http://127.0.0.1:{base}/predictions/resnet18"
    with open(os.path.join(work, "image.jpg"), "rb") as f:
        image = f.read()
    answers = [request(url, image, "image/jpeg")]
    wrk(work, url, "image.jpg", "image/jpeg", CONNECTIONS, root, 2)
    result = wrk(work, url, "image.jpg", "image/jpeg", CONNECTIONS, root, DURATION)
    answers.append(request(url, image, "image/jpeg"))
    result["rss"] = rss_mib(tree(root))
    result["processes"] = len(tree(root))
    result["answers"] = answers
    if name == "torchserve":
        subprocess.run(["torchserve", "--stop"], cwd=work, env=env, stdout=log, stderr=log)
    else:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    time.sleep(2)
    return result


def med(values):
    return statistics.median(values)


def main():
    work = tempfile.mkdtemp(prefix="bench-vision-")
    store = prepare(work)
    limit = subprocess.run([BENCH, BIN, "vision", os.path.join(work, "resnet18.pt"),
                            os.path.join(work, "image.jpg")], capture_output=True, text=True,
                           check=True).stdout.split()
    decode_us, forward_us = float(limit[0]), float(limit[1])
    runs = {(s, b): [] for s in SERVERS for b in BATCHES}
    for rep in range(REPS):
        order = SERVERS if rep % 2 == 0 else SERVERS[::-1]
        for batch in BATCHES:
            for name in order:
                runs[(name, batch)].append(run(name, work, store, batch))
    reference = json.loads(runs[("torchserve", 1)][0]["answers"][0][1])
    wrong = [(k, a) for k, rs in runs.items() for r in rs for a in r["answers"]
             if a[0] != 200 or list(json.loads(a[1])) != list(reference)]
    print(f"# image_classifier, TorchScript ResNet-18 (random weights), {time.strftime('%Y-%m-%d')}\n")
    print(f"{os.cpu_count()} cores, loopback, wrk -t2 -c{CONNECTIONS} for {DURATION} s after a 2 s "
          f"warm-up, {REPS} runs per server alternating; one worker, one intra-op thread on both. "
          f"Answers checked: {sum(len(r['answers']) for rs in runs.values() for r in rs)}, "
          f"wrong: {len(wrong)}.\n")
    print(f"In process, one thread: decode + transforms {decode_us / 1000:.2f} ms, raw forward "
          f"{forward_us / 1000:.2f} ms: the limit is {(decode_us + forward_us) / 1000:.2f} ms of CPU "
          f"per request.\n")
    print("| batch | TorchServe req/s | ferroserve req/s | ratio | errors (TS / fs) | p50 ms (TS / fs) "
          "| server CPU ms per request (TS / fs) | fs CPU / limit | RSS MiB after load (TS / fs) "
          "| processes (TS / fs) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for batch in BATCHES:
        ts, fs = runs[("torchserve", batch)], runs[("ferroserve", batch)]

        def col(rs, key, fmt="{:.1f}"):
            values = [r[key] for r in rs]
            return fmt.format(med(values)) + f" ({fmt.format(min(values))}–{fmt.format(max(values))})"
        ratio = med([r["rps"] for r in fs]) / med([r["rps"] for r in ts])
        cpu_fs = med([r["cpu_per_1k"] for r in fs])
        print(f"| {batch} | {col(ts, 'rps')} | {col(fs, 'rps')} | **{ratio:.2f}×** | "
              f"{sum(r['errors'] for r in ts)} / {sum(r['errors'] for r in fs)} | "
              f"{med([r['p50'] for r in ts]):.1f} / {med([r['p50'] for r in fs]):.1f} | "
              f"{med([r['cpu_per_1k'] for r in ts]):.1f} / {cpu_fs:.1f} | "
              f"{cpu_fs * 1000 / (decode_us + forward_us):.2f} | "
              f"{med([r['rss'] for r in ts]):.0f} / {med([r['rss'] for r in fs]):.0f} | "
              f"{ts[0]['processes']} / {fs[0]['processes']} |")
    if wrong:
        print(f"\nWrong answers: {wrong[:3]}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
