"""Runs TorchServe 0.12's regression suite (cases.py) against a real server: ferroserve, or
TorchServe itself to check the table and record its answers.

  run.py --server ferroserve --bin target/debug/ferroserve --python PY [--suite NAME ...]
  run.py --server torchserve --python PY --record tests/suite/expected.json

Each suite gets a fresh server, model store and configuration, as TorchServe's api_utils.py
sets them up. Prints one line per request and closes with 'suite: N passed, N failed';
exits non-zero on any failure.
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
            "alexnet", "vgg16"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    def __init__(self, args, suite, fixtures, work):
        self.args, self.work = args, work
        store = os.path.join(work, "store")
        os.makedirs(store)
        for name in IN_STORE:
            shutil.copy(os.path.join(fixtures, f"{name}.mar"), store)
        scheme = "https" if suite.get("tls") else "http"
        ports = {k: free_port() for k in "imx"}
        self.base = {k: f"{scheme}://127.0.0.1:{p}" for k, p in ports.items()}
        lines = [f"inference_address={self.base['i']}", f"management_address={self.base['m']}",
                 f"metrics_address={self.base['x']}", f"model_store={store}",
                 f"grpc_inference_port={free_port()}", f"grpc_management_port={free_port()}",
                 *suite["config"]]
        if suite.get("tls"):
            key, cert = tls_pair(work)
            lines += [f"private_key_file={key}", f"certificate_file={cert}"]
        config = os.path.join(work, "config.properties")
        with open(config, "w") as f:
            f.write("\n".join(lines) + "\n")
        env = dict(os.environ, TORCH_DEVICE="cpu", TMPDIR=work)
        env["PATH"] = os.path.dirname(args.python) + os.pathsep + env["PATH"]
        if args.server == "torchserve":
            cmd = ["torchserve", "--start", "--foreground", "--ncs", "--model-store", store,
                   "--ts-config", config]
        else:
            cmd = [args.bin, "--foreground", "--ncs", "--model-store", store, "--ts-config",
                   config, "--python", args.python]
            env.setdefault("RUST_LOG", "warn")
        self.log = open(os.path.join(work, "server.log"), "wb")
        self.proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.tls = ssl.create_default_context()
        self.tls.check_hostname = False
        self.tls.verify_mode = ssl.CERT_NONE
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{args.server} exited: {self.log_tail()}")
            try:
                if self.call("GET", "m", "/models", None)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{args.server} did not answer: {self.log_tail()}")

    def log_tail(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def call(self, method, port, path, body, content_type=None):
        req = urllib.request.Request(self.base[port] + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=300, context=self.tls) as res:
                return res.status, res.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


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
    if status not in accepted:
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", choices=["ferroserve", "torchserve"], required=True)
    ap.add_argument("--bin", help="the ferroserve binary")
    ap.add_argument("--python", required=True, help="an interpreter with torchserve")
    ap.add_argument("--fixtures", help="built fixtures (default: built into a temp folder)")
    ap.add_argument("--suite", action="append", help="only these suites")
    ap.add_argument("--record", help="write the answers of recorded cases to this file")
    ap.add_argument("--expected", default=os.path.join(HERE, "expected.json"))
    args = ap.parse_args()
    if args.server == "ferroserve" and not args.bin:
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
    answers = {}
    downloads = serve_folder(fixtures)
    dl = f"http://127.0.0.1:{downloads.server_port}"
    passed = failed = 0
    try:
        for suite in table.SUITES:
            if args.suite and suite["name"] not in args.suite:
                continue
            work = tempfile.mkdtemp(prefix=suite["name"] + "-", dir=root)
            target = Target(args, suite, fixtures, work)
            try:
                for i, case in enumerate(suite["cases"]):
                    body, content_type = case.get("body"), None
                    if case.get("file"):
                        with open(os.path.join(fixtures, case["file"]), "rb") as f:
                            body = f.read()
                        content_type = ("application/json" if case["file"].endswith(".json")
                                        else "application/octet-stream")
                    path = case["path"].replace("{dl}", dl)
                    status, answer = target.call(case["method"], case["port"], path, body,
                                                 content_type)
                    key = f"{suite['name']}/{i}"
                    if case["check"] and case["check"][0] == "recorded":
                        answers[key] = answer.decode(errors="replace")
                    reason = check(case, status, answer, recorded.get(key))
                    if args.record and reason and reason.startswith("no recorded"):
                        reason = None
                    passed += reason is None
                    failed += reason is not None
                    mark = "ok" if reason is None else f"FAILED: {reason}"
                    print(f"{suite['name']} | {case['method']} {case['path']} | {case['name']} "
                          f"| {status} | {mark}", flush=True)
            finally:
                target.stop()
            if failed and os.environ.get("SUITE_SHOW_LOG"):
                print(target.log_tail())
    finally:
        downloads.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    if args.record:
        with open(args.record, "w") as f:
            json.dump(answers, f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"suite: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
