"""Regenerates the seeds of fuzz/seeds/ that come from TorchServe's own code and from the
regression suite (tests/suite): worker replies and [METRICS] lines written by TorchServe
0.12's Python worker code, the suite's registration URLs, query strings, paths, per-suite
config.properties and workflow specs, and a few of its archives and KServe bodies.
Hand-written seeds (TorchServe's documented examples) live beside them and are kept.

Usage: PYTHON fuzz/seeds/generate.py [BUILT_SUITE_FIXTURES]
  PYTHON: an interpreter with torchserve 0.12 and torch (scripts/python-env.sh prints it);
  BUILT_SUITE_FIXTURES: a folder made by tests/suite/fixtures.py (archives and KServe
  bodies are copied from it; without it they are left as they are).
"""
import io
import logging
import os
import shutil
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "suite"))
import cases  # noqa: E402

DL = "http://127.0.0.1:8222"


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def all_cases():
    out = []
    for suite in cases.SUITES:
        out += [(suite, c) for c in suite["cases"]]
    return out


def suite_requests():
    urls, queries, paths = [], [], []
    for _, c in all_cases():
        if c["port"] == "grpc":
            continue
        path = c["path"].replace("{dl}", DL)
        split = urllib.parse.urlsplit(path)
        paths.append(split.path)
        if split.query:
            queries.append(split.query)
            for k, v in urllib.parse.parse_qsl(split.query, keep_blank_values=True):
                if k == "url":
                    urls.append(v)
    uniq = lambda xs: list(dict.fromkeys(xs))  # noqa: E731
    for i, u in enumerate(uniq(urls)):
        write("management_input", f"suite-url-{i:02}.txt", u)
    for i, q in enumerate(uniq(queries)):
        write("request_body", f"suite-query-{i:02}.txt", q)
    for i, p in enumerate(uniq(paths)):
        write("request_body", f"suite-path-{i:02}.txt", p)


def suite_configs():
    """Each suite's config.properties, as tests/suite/run.py writes it."""
    for suite in cases.SUITES:
        lines = ["inference_address=http://127.0.0.1:8080",
                 "management_address=http://127.0.0.1:8081",
                 "metrics_address=http://127.0.0.1:8082", "model_store=store",
                 "grpc_inference_port=7070", "grpc_management_port=7071", *suite["config"]]
        if suite.get("tls"):
            lines = [ln.replace("http://", "https://") for ln in lines]
            lines += ["private_key_file=key.pem", "certificate_file=cert.pem"]
        write("properties", f"suite-{suite['name']}.properties", "\n".join(lines) + "\n")


def suite_workflows():
    import fixtures  # tests/suite/fixtures.py (imports torch)
    for name, (_, _, spec) in fixtures.WORKFLOWS.items():
        write("workflow_spec", f"suite-{name}.yaml", spec.lstrip("\n"))


def suite_files(built):
    for name in ["resnet-18.mar", "mnist.mar", "mnist_scripted_v2.mar", "fastrcnn.mar",
                 "fcn_resnet_101_scripted.mar", "deeplabv3_resnet_101_eager.mar",
                 "densenet_wf.war", "timeout-retry-test.war", "custom_python_dep.war",
                 "loading-memory-error.war"]:
        shutil.copy(os.path.join(built, name), os.path.join(HERE, "archive", "suite-" + name))
    for name in ["mnist_v1.json", "mnist_v2.json"]:
        shutil.copy(os.path.join(built, name), os.path.join(HERE, "request_body", "suite-" + name))


def sign_bodies():
    """Requests of the sign model's reference cases (tests/fixtures/sign_reference.json and the
    formula of tests/common/mod.rs), cut to one or two frames to stay within libFuzzer's
    input lengths; one of the [x, y, z] points form."""
    import json
    import math
    ref = json.load(open(os.path.join(ROOT, "tests", "fixtures", "sign_reference.json")))

    def frames(seed, n, features):
        return [[math.sin((f * features + j) * 0.001 * (seed + 1) + seed) * 0.5
                 for j in range(features)] for f in range(n)]
    for case in ref["cases"]:
        seed = case["seed"]
        rows = frames(seed, 1, ref["features"])
        if case["format"] == "points":
            rows = [[row[i:i + 3] for i in range(0, len(row), 3)] for row in rows]
        write("request_body", f"sign-case{seed}.json",
              json.dumps({"landmarks": rows, "topk": 5}, separators=(",", ":")))
    write("request_body", "probe.json", json.dumps({"landmarks": frames(0, 2, 3), "topk": 2}))


class Context:
    """The parts of ts.context.Context that create_predict_response reads."""

    def __init__(self, content_type, status, headers, stopping=None):
        self.content_type, self.status, self.headers = content_type, status, headers
        self.stopping_criteria = stopping

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value

    def get_response_headers(self, idx):
        return self.headers.get(idx, {})

    def get_response_content_type(self, idx):
        return self.content_type

    def get_response_status(self, idx):
        return self.status


def worker_replies():
    """Replies encoded by TorchServe's own ts.protocol.otf_message_handler."""
    import torch
    from ts.protocol import otf_message_handler as otf
    ids = {0: "d3b15cad-50a2-4eaf-80ce-8b0a428bd298", 1: "7e1b2c3d-0000-4000-8000-000000000001"}
    one = {0: ids[0]}
    replies = {
        "load-ok": otf.create_load_model_response(200, "loaded model sign"),
        "load-error": otf.create_load_model_response(500, "Worker died."),
        "predict-no-context": otf.create_predict_response(["ok"], one, "Prediction success", 200),
        "predict-json": otf.create_predict_response(
            [{"tabby": 0.4, "tiger_cat": 0.3}], one, "Prediction success", 200,
            Context("application/json", (200, "OK"), {})),
        "predict-batch": otf.create_predict_response(
            [b"\x00\x01bytes", "text"], ids, "Prediction success", 200,
            Context(None, (None, None), {})),
        "predict-headers": otf.create_predict_response(
            ["ok"], one, "Prediction success", 200,
            Context("text/plain", (206, "Partial"), {0: {"x-a": "1", "x-b": "2"}})),
        "predict-stream": otf.create_predict_response(
            ["tok"], one, "Prediction success", 200, Context("text/plain", (200, ""), {}),
            ts_stream_next=True),
        "predict-tensor": otf.create_predict_response(
            [torch.tensor([1.0, 2.0])], one, "Prediction success", 200),
        "predict-error": otf.create_predict_response(None, one, "Unsupported model output", 503),
        "predict-empty": otf.create_predict_response([], {}, "Prediction success", 200),
    }
    for name, data in replies.items():
        write("worker_reply", f"ts-{name}.bin", bytes(data))


def worker_metrics():
    """[METRICS] lines as TorchServe's worker logs them (ts.metrics)."""
    from ts.metrics.caching_metric import CachingMetric
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric import Metric
    from ts.metrics.metric_type_enum import MetricTypes
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    lines = []
    for kind in [MetricTypes.COUNTER, MetricTypes.GAUGE, MetricTypes.HISTOGRAM]:
        m = CachingMetric("HandlerTime", "ms", ["ModelName", "Level"], kind)
        m.add_or_update(12.5, ["sign", "Model"], "d3b15cad-50a2-4eaf-80ce-8b0a428bd298")
        m.add_or_update(3, ["sign", "Model"])
    lines += [ln for ln in buf.getvalue().splitlines() if ln.startswith("[METRICS]")]
    dims = [Dimension("ModelName", "sign"), Dimension("Level", "Model")]
    lines.append("[METRICS]" + str(Metric("PredictionTime", 2.5, "ms", dims,
                                         "d3b15cad-50a2-4eaf-80ce-8b0a428bd298")))
    lines.append("[METRICS]" + str(Metric("CPUUtilization", 10.0, "percent",
                                         [Dimension("Level", "Host")])))
    for i, line in enumerate(lines):
        write("worker_reply", f"ts-metrics-{i:02}.txt", line)


if __name__ == "__main__":
    suite_requests()
    suite_configs()
    sign_bodies()
    suite_workflows()
    worker_replies()
    worker_metrics()
    if len(sys.argv) > 1:
        suite_files(sys.argv[1])
