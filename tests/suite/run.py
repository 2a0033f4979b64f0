"""Runs TorchServe 0.12's regression suite (cases.py) against a real server: ferroserve, or
TorchServe itself to check the table and record its answers, or both side by side.

  run.py --server ferroserve --bin target/debug/ferroserve --python PY [--suite NAME ...]
  run.py --server torchserve --python PY --record tests/suite/expected.json
  run.py --server both --bin ... --python PY

Each suite gets a fresh server, model store and configuration, as TorchServe's api_utils.py
sets them up. With `both`, every request goes to TorchServe and to ferroserve: ferroserve's
answer must pass the table's assertion and equal TorchServe's (status and body, with the
fields of cases.DYNAMIC left out and numbers within 1e-4), and after each suite the two
/metrics texts must list the same TorchServe samples in the same form, values masked.
Prints one line per request and closes with 'suite: N passed, N failed' (with `both`, also
'differential: N passed, N failed'); exits non-zero on any failure.
"""
import argparse
import functools
import http.server
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import cases as table  # noqa: E402

# Archives TorchServe's collections find in the model store (their `mar_path_*` names); the
# others are fetched by URL during the run.
IN_STORE = ["squeezenet1_1", "mnist", "densenet161", "resnet-152-batch", "resnet-18",
            "alexnet", "vgg16", "fastrcnn", "maskrcnn", "fcn_resnet_101",
            "deeplabv3_resnet_101_eager", "oip_echo"]


def free_ports(n):
    """`n` distinct free ports: each socket stays bound until all are chosen, so the kernel
    cannot hand one port out twice."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def serve_folder(folder):
    """A loopback HTTP server for the fixtures, standing in for TorchServe's model zoo."""
    handler = functools.partial(QuietHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def tls_pair(folder):
    """A 2048-bit RSA key (PKCS#1, as TorchServe's test key) and a self-signed certificate."""
    key, cert = os.path.join(folder, "key.pem"), os.path.join(folder, "certs.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", key, "-out", key, "-traditional"],
                   check=True, capture_output=True)
    return key, cert


class Target:
    """One server started for one suite."""

    def __init__(self, kind, args, suite, fixtures, work):
        self.kind, self.work = kind, work
        os.makedirs(work)
        store = os.path.join(work, "store")
        os.makedirs(store)
        for name in IN_STORE:
            shutil.copy(os.path.join(fixtures, f"{name}.mar"), store)
        scheme = "https" if suite.get("tls") else "http"
        i, m, x, g1, g2 = free_ports(5)
        self.base = {k: f"{scheme}://127.0.0.1:{p}" for k, p in zip("imx", (i, m, x))}
        self.grpc_ports = (g1, g2)
        self.grpc = None
        lines = [f"inference_address={self.base['i']}", f"management_address={self.base['m']}",
                 f"metrics_address={self.base['x']}", f"model_store={store}",
                 f"grpc_inference_port={self.grpc_ports[0]}",
                 f"grpc_management_port={self.grpc_ports[1]}", *suite["config"]]
        if suite.get("tls"):
            key, cert = tls_pair(work)
            lines += [f"private_key_file={key}", f"certificate_file={cert}"]
        config = os.path.join(work, "config.properties")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ, TORCH_DEVICE="cpu", TMPDIR=work)
        env["PATH"] = os.path.dirname(args.python) + os.pathsep + env["PATH"]
        if kind == "torchserve":
            cmd = ["torchserve", "--start", "--foreground", "--ncs", "--model-store", store,
                   "--ts-config", config]
        else:
            cmd = [args.bin, "--foreground", "--ncs", "--model-store", store, "--ts-config",
                   config, "--python", args.python]
            env.setdefault("RUST_LOG", "warn")
        if suite.get("workflow_store"):
            cmd += ["--workflow-store", store]
        self.log = open(os.path.join(work, "server.log"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} exited: {self.log_tail()}")
            try:
                # Any answer (a 400 when tokens are on): the listener is up.
                self.call("GET", "m", "/models", None)
                self.first_keys = self.keys()
                return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{kind} did not answer: {self.log_tail()}")

    def keys(self):
        path = os.path.join(self.work, "key_file.json")
        if not os.path.exists(path):
            return {}
        with open(path) as f:
            return {name: v["key"] for name, v in json.load(f).items()}

    def key(self, name, first=False):
        """One of this server's keys: as its key_file.json has it now, or at start-up."""
        return (self.first_keys if first else self.keys())[name]

    def log_tail(self, size=3000):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read()[-size:].decode(errors="replace")

    def call(self, method, port, path, body, content_type=None, headers=None):
        req = urllib.request.Request(self.base[port] + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            req.add_header(k, re.sub(r"\{(key0?):(\w+)\}",
                                     lambda m: self.key(m.group(2), m.group(1) == "key0"), v))
        try:
            with urllib.request.urlopen(req, timeout=300, context=self.tls) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def settle(self, path):
        """Waits (up to five minutes: TorchServe unregisters in the background, slowly on a
        busy machine) until `path` on the management API answers 404."""
        deadline = time.monotonic() + 300
        while self.call("GET", "m", path, None)[0] != 404:
            if time.monotonic() > deadline:
                message = f"{self.kind}: {path} still there after five minutes"
                raise ReferenceStuck(message) if self.kind == "torchserve" \
                    else RuntimeError(message)
            time.sleep(0.1)

    def grpc_call(self, case, fixtures, dl):
        """A gRPC case: its parameters ({dl} and fixture names filled in) sent over gRPC."""
        if self.grpc is None:
            client, modules = grpc_stubs()
            self.grpc = client.Client(modules, *self.grpc_ports)
        rpc, params = case["grpc"]
        params = dict(params)
        if isinstance(params.get("url"), str):
            params["url"] = params["url"].replace("{dl}", dl)
        if "input" in params:
            params["input"] = {k: open(os.path.join(fixtures, v), "rb").read()
                               for k, v in params["input"].items()}
        # Header-style keys become metadata, each server's own keys filled in.
        metadata = [(k.lower(), re.sub(r"\{(key0?):(\w+)\}",
                                       lambda m: self.key(m.group(2), m.group(1) == "key0"), v))
                    for k, v in case.get("headers", {}).items()]
        return self.grpc.call(rpc, self.grpc.request(rpc, params), metadata)

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def normal(raw):
    """An answer as compared between the servers: JSON without the dynamic fields, else text."""
    def strip(v):
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in table.DYNAMIC}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    try:
        return strip(json.loads(raw))
    except ValueError:
        return raw.decode(errors="replace")


def exposition(text):
    """TorchServe's families of a /metrics text, values masked: HELP and TYPE lines, and each
    sample's name and labels as written (host-specific label values kept: same machine)."""
    lines = set()
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("# "):
            name = line.split()[2]
            if not name.startswith("ferroserve_"):
                lines.add(line)
        elif line and not line.startswith("ferroserve_"):
            lines.add(re.sub(r"\} \S+$", "} VALUE", line))
    # Worker names carry each server's worker port (W-9000-...): ports are the servers' own.
    return {re.sub(r'WorkerName="W-\d+-', 'WorkerName="W-PORT-', x) for x in lines}


def differential(case, ts, fs):
    """None when ferroserve answered as TorchServe did, else the difference."""
    if (case["port"] == "grpc" and case["method"] in table.GRPC_UNIMPLEMENTED
            and ts[0] == 12 and fs[0] == 0):
        return None
    if ts[0] != fs[0]:
        return f"status {fs[0]} vs TorchServe's {ts[0]}"
    if (case["method"], case["path"]) in table.LISTED or case.get("name") in table.LISTED_NAMES:
        return None
    if case["port"] == "grpc" and ts[0] in table.GRPC_SILENT and ts[1] == b"" and fs[1]:
        return None
    if case["port"] == "grpc":
        # TorchServe's gRPC error details end with the Java exception's class on a line of
        # its own (docs/compatibility.md); the message before it must be the same.
        ts = (ts[0], re.sub(rb"\n(org\.pytorch\.serve\.[\w.]+|\w+Exception\.\(\))$", b"", ts[1]))
    a, b = normal(ts[1]), normal(fs[1])
    if case["port"] == "x" and case["path"].startswith("/metrics"):
        a, b = exposition(ts[1]), exposition(fs[1])
        if a != b:
            return f"metrics differ: only TorchServe {sorted(a - b)[:5]}, only ferroserve {sorted(b - a)[:5]}"
        return None
    if not numbers_close(b, a, 0.01):
        return f"body {json.dumps(b)[:300]} vs TorchServe's {json.dumps(a)[:300]}"
    return None


@functools.lru_cache(maxsize=None)
def grpc_stubs():
    """The gRPC client module and the generated stubs, once per run (grpcio is imported only
    when a gRPC suite runs)."""
    import grpc_client
    return grpc_client, grpc_client.load(tempfile.mkdtemp(prefix="grpc-stubs-"))


def numbers_close(a, b, tol):
    """Same structure; numbers within tol % (relative) of the expected ones."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(numbers_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(numbers_close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=tol / 100, abs_tol=1e-7)
    return a == b


def check(case, status, body, recorded):
    """None when the answer is what TorchServe's collection asserts, else the reason."""
    accepted = case["status"] if isinstance(case["status"], list) else [case["status"]]
    # TorchServe's gRPC management test checks a case's code only when the call fails (and
    # asserts nothing for a case without one); the differential check compares the rest.
    weak_pass = case.get("grpc_weak") and status == 0
    if case["status"] is not None and status not in accepted and not weak_pass:
        return f"status {status}, expected {accepted}: {body[:300]!r}"
    kind = case["check"]
    if kind is None:
        return None
    text = body.decode(errors="replace")
    if kind[0] == "regex":
        return None if re.search(kind[1], text) else f"no match for {kind[1]!r}"
    if kind[0] == "recorded":
        if recorded is None:
            return "no recorded TorchServe answer (run.py --server torchserve --record)"
        _, how, tol = kind
        expected = recorded
        if how == "text":
            return None if text == expected else f"{text!r} != TorchServe's {expected!r}"
        try:
            actual = json.loads(text)
        except ValueError:
            return f"not JSON: {text[:200]!r}"
        expected = json.loads(expected)
        if how == "json":
            ok = actual == expected
        elif how == "image":
            # Postman's validate_image_classification: the same labels, each probability
            # within the tolerance.
            ok = (isinstance(actual, dict) and actual.keys() == expected.keys()
                  and all(abs(actual[k] - v) < v * tol / 100 for k, v in expected.items()))
        else:
            ok = numbers_close(actual, expected, tol)
        return None if ok else f"{text[:300]} != TorchServe's {json.dumps(expected)[:300]}"
    return f"unknown check {kind}"


class ReferenceStuck(Exception):
    """TorchServe (the reference) left the suite in a state it never leaves."""


def run_suite(suite, kinds, args, fixtures, root, dl, recorded):
    """One suite on fresh servers: its report lines, counts and recorded answers."""
    out = {"lines": [], "passed": 0, "failed": 0, "same": 0, "different": 0, "answers": {}}
    work = tempfile.mkdtemp(prefix=suite["name"] + "-", dir=root)
    targets = {}
    try:
        for kind in kinds:
            targets[kind] = Target(kind, args, suite, fixtures, os.path.join(work, kind))
        # The assertion is checked on ferroserve's answer when it runs.
        judged = kinds[-1]
        for i, case in enumerate(suite["cases"]):
            body, content_type = case.get("body"), None
            if case.get("file"):
                with open(os.path.join(fixtures, case["file"]), "rb") as f:
                    body = f.read()
                content_type = ("application/json" if case["file"].endswith(".json")
                                else "application/octet-stream")
            path = case["path"].replace("{dl}", dl)
            if case["port"] == "grpc":
                answers = {k: t.grpc_call(case, fixtures, dl) for k, t in targets.items()}
            else:
                answers = {k: t.call(case["method"], case["port"], path, body,
                                     content_type, case.get("headers"))
                           for k, t in targets.items()}
            if case.get("settle"):
                for t in targets.values():
                    t.settle(case["settle"])
            status, answer = answers[judged]
            key = f"{suite['name']}/{i}"
            if case["check"] and case["check"][0] == "recorded":
                out["answers"][key] = answer.decode(errors="replace")
            reason = check(case, status, answer, recorded.get(key))
            if args.record and reason and reason.startswith("no recorded"):
                reason = None
            out["passed"] += reason is None
            out["failed"] += reason is not None
            mark = "ok" if reason is None else f"FAILED: {reason}"
            if len(targets) == 2:
                diff = differential(case, answers["torchserve"], answers["ferroserve"])
                out["same"] += diff is None
                out["different"] += diff is not None
                mark += " | equal" if diff is None else f" | DIFFERENT: {diff}"
            out["lines"].append(f"{suite['name']} | {case['method']} {case['path']} | "
                                f"{case['name']} | {status} | {mark}")
        if len(targets) == 2:
            # The same traffic went to both: the same metric samples.
            texts = {k: t.call("GET", "x", "/metrics", None) for k, t in targets.items()}
            diff = differential({"method": "GET", "port": "x", "path": "/metrics"},
                                texts["torchserve"], texts["ferroserve"])
            out["same"] += diff is None
            out["different"] += diff is not None
            out["lines"].append(f"{suite['name']} | GET /metrics | after the suite's traffic | "
                                f"{texts['ferroserve'][0]} | "
                                + ("equal" if diff is None else f"DIFFERENT: {diff}"))
    finally:
        for t in targets.values():
            if out["failed"] and os.environ.get("SUITE_SHOW_LOG"):
                print(t.log_tail())
            t.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=["ferroserve", "torchserve", "both"], required=True)
    ap.add_argument("--bin", help="the ferroserve binary")
    ap.add_argument("--python", required=True, help="an interpreter with torchserve")
    ap.add_argument("--fixtures", help="built fixtures (default: built into a temp folder)")
    ap.add_argument("--suite", action="append", help="only these suites")
    ap.add_argument("--record", help="write the answers of recorded cases to this file")
    ap.add_argument("--expected", default=os.path.join(HERE, "expected.json"))
    args = ap.parse_args()
    if args.server != "torchserve" and not args.bin:
        ap.error("--bin is needed for ferroserve")
    root = tempfile.mkdtemp(prefix="suite-")
    fixtures = args.fixtures or os.path.join(root, "fixtures")
    if not os.path.exists(os.path.join(fixtures, "kitten.jpg")):
        subprocess.run([args.python, os.path.join(HERE, "fixtures.py"), fixtures], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    recorded = {}
    if not args.record and os.path.exists(args.expected):
        with open(args.expected) as f:
            recorded = json.load(f)
    answers_out = {}
    downloads = serve_folder(fixtures)
    dl = f"http://127.0.0.1:{downloads.server_port}"
    kinds = ["torchserve", "ferroserve"] if args.server == "both" else [args.server]
    passed = failed = same = different = 0
    try:
        for suite in table.SUITES:
            if args.suite and suite["name"] not in args.suite:
                continue
            # TorchServe at times never finishes a background unregistration: the suite's
            # comparison is then void, and it runs once more on fresh servers.
            for attempt in (1, 2):
                try:
                    result = run_suite(suite, kinds, args, fixtures, root, dl, recorded)
                    break
                except ReferenceStuck as e:
                    if attempt == 2:
                        raise
                    print(f"{suite['name']} | {e}; the suite runs again on fresh servers",
                          flush=True)
            for line in result["lines"]:
                print(line, flush=True)
            passed += result["passed"]
            failed += result["failed"]
            same += result["same"]
            different += result["different"]
            answers_out.update(result["answers"])
    finally:
        downloads.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    if args.record:
        # Merged into what the file holds: a run of some suites keeps the others' answers.
        if os.path.exists(args.record):
            with open(args.record) as f:
                answers_out = {**json.load(f), **answers_out}
        with open(args.record, "w") as f:
            json.dump(answers_out, f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"suite: {passed} passed, {failed} failed")
    if len(kinds) == 2:
        print(f"differential: {same} passed, {different} failed")
    return 1 if failed or different else 0


if __name__ == "__main__":
    sys.exit(main())
