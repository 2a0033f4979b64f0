"""Sends the same management and inference requests to TorchServe 0.12 and to ferroserve and
compares status codes and bodies (ids, timestamps, pids and ferroserve's extra describe fields
left out). Usage: compare.py TS_INFERENCE TS_MANAGEMENT FS_INFERENCE FS_MANAGEMENT"""
import http.client
import os
import sys
import urllib.parse
import urllib.error
import urllib.request

# The suite's answer normalisation (its DYNAMIC fields left out), so both checks compare alike.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "suite"))
from run import normal  # noqa: E402

REQUESTS = [
    ("GET", "i", "/ping", None),
    ("GET", "m", "/models", None),
    ("GET", "m", "/models?limit=1", None),
    ("GET", "m", "/models?limit=1&next_page_token=1", None),
    ("GET", "m", "/models/sign", None),
    ("GET", "m", "/models/sign/all", None),
    ("GET", "m", "/models/nope", None),
    ("GET", "m", "/models/sign/9.9", None),
    ("GET", "m", "/models/sign/1.0/set-default", None),
    ("POST", "m", "/models", None),
    ("POST", "m", "/models?url=../sign.mar", None),
    ("POST", "m", "/models?url=nope.mar", None),
    ("POST", "m", "/models?url=sign.mar&runtime=PYTHON", None),
    ("POST", "m", "/models?url=sign.mar", None),
    ("POST", "m", "/models?url=sign.mar&model_name=s2&initial_workers=0", None),
    ("GET", "m", "/models/s2", None),
    ("PUT", "m", "/models/s2/9.9/set-default", None),
    ("PUT", "m", "/models/s2/1.0/set-default", None),
    ("DELETE", "m", "/models/s2/9.9", None),
    ("DELETE", "m", "/models/s2", None),
    ("GET", "m", "/models/s2", None),
    ("PUT", "m", "/models/sign?min_worker=2&max_worker=1", None),
    ("PUT", "m", "/models/nope?min_worker=1", None),
    ("PUT", "m", "/models/sign?min_worker=1&synchronous=true", None),
    ("PUT", "m", "/models/sign/1.0?min_worker=1&synchronous=true", None),
    ("POST", "m", "/models?url=nomanifest.mar&model_name=nm&initial_workers=1", None),
    ("POST", "m", "/models?url=nomanifest.mar&model_name=nm&handler=double.py&initial_workers=1",
     None),
    ("GET", "m", "/models/nm", None),
    ("POST", "i", "/predictions/nm", b'{"values": [1, 2]}'),
    ("DELETE", "m", "/models/nm", None),
    ("OPTIONS", "m", "/models", None),
    ("PATCH", "m", "/models/sign", None),
    ("GET", "m", "/models/a/b/c", None),
    ("GET", "i", "/no/such/path", None),
    ("POST", "i", "/predictions/nope", b"{}"),
    ("POST", "i", "/predictions/sign/9.9", b"{}"),
    ("GET", "i", "/predictions", None),
    # Workflows (the .war files of tests/fixtures/workflow, in the model store).
    ("POST", "m", "/workflows", None),
    ("POST", "m", "/workflows?url=nope.war", None),
    ("POST", "m", "/workflows?url=../wf.war", None),
    ("POST", "m", "/workflows?url=twostart.war", None),
    ("POST", "m", "/workflows?url=cycle.war", None),
    ("POST", "m", "/workflows?url=dupedge.war", None),
    ("POST", "m", "/workflows?url=badyaml.war", None),
    ("POST", "m", "/workflows?url=missing.war", None),
    ("POST", "m", "/workflows?url=nofunc.war", None),
    ("POST", "m", "/workflows?url=wf.war", None),
    ("POST", "m", "/workflows?url=wf.war", None),
    ("POST", "m", "/workflows?url=wf.war&workflow_name=wf2", None),
    ("POST", "m", "/workflows?url=par.war", None),
    ("POST", "m", "/workflows?url=boom.war", None),
    ("POST", "m", "/workflows?url=slow.war", None),
    ("GET", "m", "/workflows", None),
    ("GET", "m", "/workflows?limit=2", None),
    ("GET", "m", "/workflows?limit=2&next_page_token=2", None),
    ("GET", "m", "/workflows/wf", None),
    ("GET", "m", "/workflows/par", None),
    ("GET", "m", "/workflows/nope", None),
    ("PUT", "m", "/workflows/wf", None),
    ("GET", "m", "/models", None),
    ("GET", "m", "/models/wf__pre", None),
    ("GET", "m", "/models/wf__m", None),
    ("POST", "i", "/wfpredict/wf", b'{"values": [1, 2, 3]}'),
    ("POST", "i", "/wfpredict/wf", b'{"nope": 1}'),
    ("POST", "i", "/wfpredict/par", b'{"values": [1, 2, 3]}'),
    ("POST", "i", "/wfpredict/boom", b"{}"),
    ("POST", "i", "/wfpredict/slow", b"{}"),
    ("POST", "i", "/wfpredict/nope", b"{}"),
    ("POST", "i", "/predictions/wf__pre", b'{"values": [1, 2, 3]}'),
    ("DELETE", "m", "/workflows/wf2", None),
    ("DELETE", "m", "/workflows/wf2", None),
    ("GET", "m", "/models/wf2__m", None),
    ("GET", "m", "/workflows", None),
    # Model settings from model-config.yaml, as describe reports them.
    ("POST", "m", "/models?url=settings.mar&initial_workers=1&synchronous=true", None),
    ("GET", "m", "/models/settings", None),
    ("DELETE", "m", "/models/settings", None),
    # A .tar.gz archive made by the archiver.
    ("POST", "m", "/models?url=tgzdouble.tar.gz&initial_workers=1&synchronous=true", None),
    ("GET", "m", "/models/tgzdouble", None),
    ("POST", "i", "/predictions/tgzdouble", b'{"values": [4]}'),
    ("DELETE", "m", "/models/tgzdouble", None),
    # A streaming handler (intermediate answers): the parts joined in order.
    ("POST", "m", "/models?url=stream.mar&initial_workers=1&synchronous=true", None),
    ("POST", "i", "/predictions/stream", b"x"),
    ("DELETE", "m", "/models/stream", None),
    # A stateful model: sequences add up on their own; a third sequence is refused.
    ("POST", "m", "/models?url=stateful.mar&initial_workers=1&synchronous=true", None),
    ("GET", "m", "/models/stateful", None),
    ("POST", "i", "/predictions/stateful", b"1", {"ts_request_sequence_id": "s1"}),
    ("POST", "i", "/predictions/stateful", b"2", {"ts_request_sequence_id": "s1"}),
    ("POST", "i", "/predictions/stateful", b"5", {"ts_request_sequence_id": "s2"}),
    ("POST", "i", "/predictions/stateful", b"4", {"ts_request_sequence_id": "s1"}),
    ("POST", "i", "/predictions/stateful", b"1", {"ts_request_sequence_id": "s3"}),
    ("POST", "i", "/predictions/stateful", b"1", None),
    ("POST", "i", "/predictions/stateful", b"1", {"ts_request_sequence_id": "s2"}),
    ("DELETE", "m", "/models/stateful", None),
]

# A stateful sequence over gRPC StreamPredictions2, each message sent once the previous one is
# answered (TorchServe ends the reply stream as soon as the client's ends): two sequences
# adding up, and a message with neither a sequence id nor the start flag (an in-band error).
SEQUENCE = [("g1", b"3"), ("g1", b"4"), ("", b"1"), ("g2", b"5"), ("g1", b"10")]

# What a client generated from TorchServe's protos sees: each management and inference call,
# with the proto's defaults, and their error cases.
VALUES = {"body": b'{"values": [1, 2]}'}
GRPC = [
    ("Ping", {}),
    ("ListModels", {}),
    ("ListModels", {"limit": 1}),
    ("ListModels", {"limit": 1, "next_page_token": 1}),
    ("DescribeModel", {"model_name": "sign"}),
    ("DescribeModel", {"model_name": "nope"}),
    ("DescribeModel", {"model_name": "sign", "model_version": "9.9"}),
    ("RegisterModel", {"url": "nope.mar"}),
    ("RegisterModel", {"url": "../double.mar"}),
    ("RegisterModel", {"url": "double.mar", "initial_workers": 1, "synchronous": True}),
    ("DescribeModel", {"model_name": "double"}),
    ("Predictions", {"model_name": "double", "input": VALUES}),
    ("Predictions", {"model_name": "nope", "input": VALUES}),
    ("Predictions", {"model_name": "double", "model_version": "9.9", "input": VALUES}),
    ("Predictions", {"model_name": "", "input": VALUES}),
    ("ScaleWorker", {"model_name": "double", "min_worker": 2, "synchronous": True}),
    ("ScaleWorker", {"model_name": "double", "min_worker": 2, "max_worker": 1}),
    ("ScaleWorker", {"model_name": "nope", "min_worker": 1}),
    ("ScaleWorker", {"model_name": "double"}),
    ("ScaleWorker", {"model_name": "double", "model_version": "9.9", "min_worker": 1}),
    ("SetDefault", {"model_name": "double", "model_version": "1.0"}),
    ("SetDefault", {"model_name": "double", "model_version": "9.9"}),
    ("SetDefault", {"model_name": "nope", "model_version": "1.0"}),
    ("UnregisterModel", {"model_name": "double", "model_version": "9.9"}),
    ("UnregisterModel", {"model_name": "double"}),
    ("UnregisterModel", {"model_name": "double"}),
    ("UnregisterModel", {"model_name": "nope"}),
    ("RegisterModel", {"url": "stream.mar", "initial_workers": 1, "synchronous": True}),
    ("StreamPredictions", {"model_name": "stream", "input": {"data": b"x"}}),
    # Listed in docs/compatibility.md: TorchServe answers the first part only, ferroserve the
    # whole answer; compared by status code.
    ("Predictions", {"model_name": "stream", "input": {"data": b"x"}}, "listed"),
    ("UnregisterModel", {"model_name": "stream"}),
    ("ListModels", {}),
]

def call(base, method, path, body, headers=None):
    if headers:
        return call_exact(base, method, path, body, headers)
    req = urllib.request.Request(base + path, data=body, method=method)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=60) as res:
            return res.status, res.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def call_exact(base, method, path, body, headers):
    """A request whose header names are sent as written: urllib title-cases them, and
    TorchServe matches the sequence header's name in exact case."""
    host = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    try:
        conn.request(method, path, body=body,
                     headers={"Content-Type": "application/json", **headers})
        res = conn.getresponse()
        return res.status, res.read()
    finally:
        conn.close()


def grpc_sequence(modules, inference_base):
    """The replies to SEQUENCE over one StreamPredictions2 call, as (prediction, status code,
    status message, sequence_id); the gRPC port is the inference port + 10 (run.sh)."""
    import queue
    import grpc
    port = urllib.parse.urlsplit(inference_base).port + 10
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    stub = modules["inference_pb2_grpc"].InferenceAPIsServiceStub(channel)
    outbox = queue.Queue()
    replies = stub.StreamPredictions2(iter(outbox.get, None), timeout=120)
    answers = []
    for sequence, value in SEQUENCE:
        outbox.put(modules["inference_pb2"].PredictionsRequest(
            model_name="stateful", input={"data": value}, sequence_id=sequence))
        r = next(replies)
        answers.append((r.prediction, r.status.code, r.status.message, r.sequence_id))
    outbox.put(None)
    channel.close()
    return answers


def grpc_calls(client):
    """(status code, message) of each GRPC call, TorchServe's Java exception class left out of
    the details (docs/compatibility.md)."""
    import re
    answers = []
    for rpc, params, *_ in GRPC:
        code, message = client.call(rpc, client.request(rpc, params))
        answers.append((code, re.sub(rb"\n(org\.pytorch\.serve\.[\w.]+|\w+Exception\.\(\))$", b"",
                                     message)))
    return answers


def main():
    ts = {"i": sys.argv[1], "m": sys.argv[2]}
    fs = {"i": sys.argv[3], "m": sys.argv[4]}
    equal = 0
    total = len(REQUESTS) + len(SEQUENCE) + len(GRPC)
    for method, side, path, body, *headers in REQUESTS:
        headers = headers[0] if headers else None
        a = call(ts[side], method, path, body, headers)
        b = call(fs[side], method, path, body, headers)
        same = a[0] == b[0] and normal(a[1]) == normal(b[1])
        equal += same
        mark = "equal" if same else "DIFFERENT"
        print(f"| {method} {path} | {a[0]} | {b[0]} | {mark} |")
        if not same:
            print(f"|  | `{normal(a[1])}` | `{normal(b[1])}` | |".replace("\n", " "))
    import tempfile
    import grpc_client
    register = "/models?url=stateful.mar&initial_workers=1&synchronous=true"
    with tempfile.TemporaryDirectory() as out:
        modules = grpc_client.load(out)
        for side in (ts, fs):
            call(side["m"], "POST", register, None)
        answers = [grpc_sequence(modules, side["i"]) for side in (ts, fs)]
        for side in (ts, fs):
            call(side["m"], "DELETE", "/models/stateful", None)
        ports = [urllib.parse.urlsplit(side["i"]).port + 10 for side in (ts, fs)]
        calls = [grpc_calls(grpc_client.Client(modules, p, p + 1)) for p in ports]
    for (sequence, value), a, b in zip(SEQUENCE, *answers):
        same = a == b
        equal += same
        print(f"| gRPC StreamPredictions2 {sequence or '(none)'}:{value.decode()} | {a} | {b} | "
              f"{'equal' if same else 'DIFFERENT'} |")
    for (rpc, params, *listed), a, b in zip(GRPC, *calls):
        same = a[0] == b[0] and (bool(listed) or normal(a[1]) == normal(b[1]))
        equal += same
        print(f"| gRPC {rpc} {params} | {a[0]} | {b[0]} | {'equal' if same else 'DIFFERENT'} |")
        if not same:
            print(f"|  | `{normal(a[1])}` | `{normal(b[1])}` | |".replace("\n", " "))
    print(f"\ndifferential: {equal} passed, {total - equal} failed")
    return 0 if equal == total else 1


sys.exit(main())
