"""TorchServe 0.12's regression suite as a table: every request of its Postman collections
(management, inference, increased timeout, KServe v1/v2, explanations, HTTPS, workflows),
with the status and the property each one asserts, and the gRPC and token-authorization
requests of its pytest suite. The requests and expectations are TorchServe's; the
archives are the small ones of fixtures.py.

Placeholders in paths: {dl} is a loopback HTTP server that serves the fixture folder (it stands
in for TorchServe's model-zoo URLs; names it does not have answer 404).

A case is a dict:
  name, port ("i", "m", "x": inference, management, metrics; "grpc" with `grpc`: the call
  and its parameters), method, path, settle (optional: a management path polled after the
  request, up to a minute, until it answers 404), headers
  (optional; {key:NAME} is the server's key NAME from its key_file.json, {key0:NAME} the
  one it had at start-up),
  file (a fixture sent as the raw body) or body (bytes),
  status (a code or a list of accepted codes),
  check: None | ("text", expected) | ("json", expected) | ("image", tolerance %)
         | ("regex", pattern) | ("recorded", kind, tolerance %)
    "recorded": compared with TorchServe's own answer to the same request, kept in
    expected.json by `run.py --record` against real TorchServe; kind is "text", "json",
    "image" (labels equal, probabilities within the tolerance) or "close" (same structure,
    numbers within the tolerance).
"""

# The Postman metrics assertion: TorchServe's label order, its trailing comma, a Java double.
METRICS_REGEX = r'Requests2XX\{Level="Host",Hostname=".*",\} \d+\.\d+'

BASE = ["disable_token_authorization=true", "enable_model_api=true"]


def management_cases():
    """management_data.json, in its order."""
    rows = [
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("Register Model Mnist", "POST", "models?url=mnist.mar&model_name=mnist", 200),
        ("Register Model Densenet161", "POST",
         "models?url=densenet161.mar&model_name=densenet161", 200),
        ("Model Re-Registration Densenet161", "POST",
         "models?url={dl}/densenet161.mar&model_name=densenet161", 500),
        ("UnRegister Model Densenet161", "DELETE", "models/densenet161", 200),
        ("Register Model missing url", "POST", "models", 400),
        ("UnRegister Existing Mnist Model", "DELETE", "models/mnist", 200),
        ("Register Mnist Model with Invalid Handler", "POST",
         "models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200),
        ("UnRegister Model mnist", "DELETE", "models/mnist", 200),
        ("Register Mnist Model with Invalid Handler", "POST",
         "models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200),
        ("Scale Invalid Mnist Handler Model with Min Workers - Synchronous", "PUT",
         "models/mnist?min_worker=1&synchronous=true", 500),
        ("UnRegister Model mnist", "DELETE", "models/mnist", 200),
        ("Get Model - All Versions", "GET", "models/squeezenet1_1/all", 200),
        ("Get Model with Version", "GET", "models/squeezenet1_1/1.0", 200),
        ("Get Valid Model", "GET", "models/squeezenet1_1", 200),
        ("UnRegister Model", "DELETE", "models/squeezenet1_1", 200),
        ("Register Model invalid Runtime", "POST",
         "models?url=squeezenet1_1.mar&model_name=squeezenet1_1&runtime=python4", 400),
        ("List Models", "GET", "models?limit=&next_page_token=", 200),
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("Scale Min Workers - Asynchronous", "PUT", "models/squeezenet1_1?min_worker=1", 202),
        ("Scale Min Workers - Synchronous", "PUT",
         "models/squeezenet1_1?min_worker=1&synchronous=true", 200),
        ("Scale Min Workers for a Version", "PUT",
         "models/squeezenet1_1/1.0?min_worker=1&synchronous=true", 200),
        ("Scale Min Workers for a Valid model but Invalid Version", "PUT",
         "models/squeezenet1_1/0.0?min_worker=1&synchronous=true", 404),
        ("Scale Min Workers with GPU", "PUT", "models/squeezenet1_1?min_worker=1&number_gpu=1",
         202),
        ("Set Default Model Version", "PUT", "models/squeezenet1_1/1.0/set-default", 200),
        ("Set Default Valid Model Invalid Version", "PUT",
         "models/squeezenet1_1/0.0/set-default", 404),
        ("Set Default Invalid Model valid Version", "PUT",
         "models/squeezenet0_1/1.0/set-default", 404),
        ("UnRegister Model", "DELETE", "models/squeezenet1_1", 200),
        ("Register Model with Additional Params", "POST",
         "models?url=squeezenet1_1.mar&model_name=squeezenet1_1"
         "&handler=serve/ts/torch_handler/image_classifier.py:handle", 200),
        ("UnRegister Model", "DELETE", "models/squeezenet1_1", 200),
        ("Register Model with Additional Params and startup_timeout as 0", "POST",
         "models?url=squeezenet1_1.mar&model_name=squeezenet1_1&batch_size=3"
         "&initial_workers=3&startup_timeout=0", 500),
        ("Register Model with startup_timeout as 0", "POST",
         "models?url=squeezenet1_1.mar&model_name=squeezenet1_1&startup_timeout=0", 200),
        ("UnRegister Model", "DELETE", "models/squeezenet1_1", 200),
        ("Register Model with Batch Size", "POST",
         "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2", 200),
        ("UnRegister Model Resnet152", "DELETE", "models/resnet152", 200),
        ("Register Model with Non integer Batch Size", "POST",
         "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=dd&initial_workers=1",
         200),
        ("UnRegister Model Resnet152", "DELETE", "models/resnet152", 200),
        ("Register Model with integer Batch Size but non integer max batch delay parameter",
         "POST", "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2"
         "&initial_workers=1&max_batch_delay=junk", 200),
        ("UnRegister Model Resnet152", "DELETE", "models/resnet152", 200),
        ("Register Squeezenet Model Negative initial workers", "POST",
         "models?url=squeezenet1_1.mar&model_name=squeezenet1_1&initial_workers=-1", 200),
        ("UnRegister Model", "DELETE", "models/squeezenet1_1", 200),
        ("Register Resnet Model Synchronous", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=true", 200),
        ("UnRegister Model Resnet-18", "DELETE", "models/resnet-18", 200),
        ("Register Model non boolean Synchronous value", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=-1", 200),
        ("UnRegister Model Resnet-18", "DELETE", "models/resnet-18", 200),
        ("Register Resnet Model Asynchronous", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=false", 200),
        ("List with Limit", "GET", "models?limit=1", 200),
        ('List with "Negative" Limit Value', "GET", "models?limit=-1", 200),
        ("List with Pagination", "GET", "models?limit=1&next_page_token=1", 200),
        ('List with "Negative" Pagination', "GET", "models?limit=1&next_page_token=-1", 200),
        ("Update GPU Count", "PUT", "models/resnet-18?number_gpu=10", 202),
        ('Update with "Negative" GPU Count', "PUT", "models/resnet-18?number_gpu=-1", 202),
        ("Scale up Workers -  Synchronous", "PUT",
         "models/resnet-18?min_worker=1&max_worker=1&synchronous=true", 200),
        ("Scale up Workers - Asynchronous", "PUT",
         "models/resnet-18?min_worker=1&max_worker=1&synchronous=false", 202),
        ("Update Timeout to -1", "PUT", "models/resnet-18?timeout=-1", 202),
        ("Update Timeout to 0", "PUT", "models/resnet-18?timeout=0", 202),
        ("Register Model - Empty URL , Valid Model Name", "POST",
         "models?url=&model_name=resnet-18", 404),
        ("Register Model - Invalid URL", "POST",
         "models?url={dl}/invalid-resnet-18.mar&model_name=invalid-resnet18", 400),
        ("List Model - Invalid Model", "GET", "models/invalid_squeezenet1_1", 404),
        ("List Model - Valid model name, Invalid Model version", "GET",
         "models/squeezenet1_1/0.0", 404),
        ("List Models - Invalid Next Page Token(Outside registered models range)", "GET",
         "models?next_page_token=12", 200),
        ('Scale Workers - Valid "min_worker" value, Invalid "synchronous"', "PUT",
         "models/resnet-18?min_worker=1&synchronous=Nan", 202),
        ('Scale Workers - Invalid parameter values for both "synchronous" & "min_worker" params',
         "PUT", "models/resnet-18?min_worker=nan&synchronous=nan", 202),
        ("Scale down workers by Calling Update Workers API with no parameters", "PUT",
         "models/resnet-18", 202),
        ("Update Worker for an invalid/non-existent model", "PUT",
         "models/resnet181?min_worker=1", 404),
        ("Update Worker with Invalid Worker Count", "PUT",
         "models/resnet-18?min_worker=2&max_worker=1", 400),
        ("Update Worker with Positive Worker Count", "PUT", "models/resnet-18?min_worker=1", 202),
        ('Update Worker with "Zero" Worker Count', "PUT", "models/resnet-18?min_worker=0", 202),
        ("Scale worker by calling Update Worker API with negative min worker Count", "PUT",
         "models/resnet-18?min_worker=-1", 500),
        ("Scale worker by calling Update Worker API with negative max worker Count", "PUT",
         "models/resnet-18?max_worker=-1", 400),
        ("Update Version - Invalid Model", "PUT", "models/invalid_squeezenet1_1/1.0/set-default",
         404),
        ("UnRegister Model Resnet-18", "DELETE", "models/resnet-18", 200),
        ("UnRegister Valid Model name, but Invalid Model version", "DELETE",
         "models/squeezenet1_1/0.0", 404),
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("UnRegister Model with synchronous value as true", "DELETE",
         "models/squeezenet1_1/?synchronous=true", 200),
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("UnRegister Model with synchronous value as non boolean", "DELETE",
         "models/squeezenet1_1/?synchronous=nan", 200),
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("UnRegister Model with synchronous value as non boolean", "DELETE",
         "models/squeezenet1_1/?timeout=true", 200),
        ("Register Model", "POST", "models?url=squeezenet1_1.mar&model_name=squeezenet1_1", 200),
        ("UnRegister Model with non boolean synchronous value & non integer timeout value",
         "DELETE", "models/squeezenet1_1/?timeout=true&synchronous=-1", 200),
        ("UnRegister Invalid Model Name", "DELETE", "models/invalid_squeezenet1_1", 404),
    ]
    cases = [{"name": n, "port": "m", "method": m, "path": "/" + p, "status": s, "check": None,
              "grpc_status": GRPC_CODES.get(n)} for n, m, p, s in rows]
    # TorchServe answers this failed registration before it has unregistered the model again;
    # the next case registers the same name, so each server is given until the name is free.
    for c in cases:
        if c["name"] == "Register Model with Additional Params and startup_timeout as 0":
            c["settle"] = "/models/squeezenet1_1"
    return cases


# management_data.json's `grpc_status_code` of each case that has one (TorchServe's
# test_gRPC_management_apis.py checks them over gRPC), by case name.
GRPC_CODES = {
    "Model Re-Registration Densenet161": 13, "Register Model missing url": 3,
    "Scale Invalid Mnist Handler Model with Min Workers - Synchronous": 13,
    "Register Model invalid Runtime": 3,
    "Scale Min Workers for a Valid model but Invalid Version": 5,
    "Set Default Valid Model Invalid Version": 5, "Set Default Invalid Model valid Version": 5,
    "Register Model with Additional Params and startup_timeout as 0": 13,
    "Register Model - Empty URL , Valid Model Name": 3, "Register Model - Invalid URL": 3,
    "List Model - Invalid Model": 5,
    "List Model - Valid model name, Invalid Model version": 5,
    "Update Worker for an invalid/non-existent model": 5,
    "Update Worker with Invalid Worker Count": 3,
    "Scale worker by calling Update Worker API with negative min worker Count": 13,
    "Scale worker by calling Update Worker API with negative max worker Count": 3,
    "Update Version - Invalid Model": 5,
    "UnRegister Valid Model name, but Invalid Model version": 5,
    "UnRegister Invalid Model Name": 5,
}
GRPC_INTS = {"min_worker", "max_worker", "initial_workers", "timeout", "number_gpu",
             "batch_size", "max_batch_delay", "response_timeout", "startup_timeout", "limit",
             "next_page_token"}


def grpc_params(case):
    """TorchServe's test_gRPC_management_apis.py turns each management_data.json path into
    gRPC parameters: (rpc, params), or None where it skips the case (a value gRPC's types
    refuse)."""
    from urllib import parse
    url = parse.urlsplit(case["path"].lstrip("/"))
    query = dict(parse.parse_qsl(url.query))
    try:
        for k in list(query):
            if k in GRPC_INTS:
                query[k] = int(query[k])
            if k == "synchronous":
                query[k] = bool(query[k])
    except ValueError:
        return None
    segs = url.path.split("/")
    path = {} if len(segs) == 1 else {"model_name": segs[1]}
    if len(segs) == 3:
        path["model_version"] = segs[2]
    method, p = case["method"].upper(), case["path"]
    if method == "POST":
        return "RegisterModel", query
    if method == "DELETE":
        return "UnregisterModel", path
    if p.endswith("/set-default"):
        return "SetDefault", path
    if method == "PUT":
        return "ScaleWorker", {**path, **query}
    if len(segs) == 1:
        return "ListModels", {**path, **query}
    return "DescribeModel", path


def grpc_management_cases():
    """management_data.json over gRPC, as TorchServe's test_gRPC_management_apis.py sends it:
    a case raising an error must raise its `grpc_status_code`."""
    cases = []
    for c in management_cases():
        params = grpc_params(c)
        if params is None:
            continue
        cases.append({"name": c["name"], "port": "grpc", "method": params[0],
                      "path": c["path"], "grpc": params, "status": c["grpc_status"],
                      "check": None, "grpc_weak": True})
    return cases


def grpc_inference_cases():
    """Inference over gRPC (TorchServe's test_gRPC_inference_api.py's calls): health,
    predictions on a Python image classifier, unknown models and versions."""
    m = "squeezenet1_1"
    rows = [
        ("Ping", "Ping", {}, 0, None),
        ("Register", "RegisterModel",
         {"url": f"{m}.mar", "model_name": m, "initial_workers": 1, "synchronous": True}, 0,
         None),
        ("Predictions", "Predictions", {"model_name": m, "input": {"data": "kitten.jpg"}}, 0,
         IMAGE),
        ("Predictions of a version", "Predictions",
         {"model_name": m, "model_version": "1.0", "input": {"data": "kitten.jpg"}}, 0, IMAGE),
        # TorchServe answers an unknown model or version on this call with INTERNAL.
        ("Predictions of an unknown model", "Predictions",
         {"model_name": "nope", "input": {"data": "kitten.jpg"}}, 13, None),
        ("Predictions of an unknown version", "Predictions",
         {"model_name": m, "model_version": "9.9", "input": {"data": "kitten.jpg"}}, 13, None),
        ("Describe", "DescribeModel", {"model_name": m}, 0, None),
        ("List", "ListModels", {}, 0, None),
        ("Unregister", "UnregisterModel", {"model_name": m}, 0, None),
        ("Ping after", "Ping", {}, 0, None),
    ]
    return [{"name": n, "port": "grpc", "method": rpc, "path": rpc, "grpc": (rpc, params),
             "status": code, "check": check} for n, rpc, params, code, check in rows]


def grpc_oip_cases():
    """KServe's Open Inference Protocol over gRPC (`ts_open_inference_protocol=true`): server
    liveness, readiness and metadata, a model's readiness and metadata, unknown models and
    versions; answers compared field by field (protobuf text)."""
    m = "squeezenet1_1"
    rows = [
        ("Server live", "ServerLive", {}),
        ("Server ready", "ServerReady", {}),
        ("Server metadata", "ServerMetadata", {}),
        ("Register", "RegisterModel",
         {"url": f"{m}.mar", "model_name": m, "initial_workers": 1, "synchronous": True}),
        ("Model ready", "ModelReady", {"name": m}),
        ("Model ready, a version", "ModelReady", {"name": m, "version": "1.0"}),
        ("Model ready, unknown model", "ModelReady", {"name": "nope"}),
        ("Model ready, unknown version", "ModelReady", {"name": m, "version": "9.9"}),
        ("Model metadata", "ModelMetadata", {"name": m}),
        ("Model metadata, unknown model", "ModelMetadata", {"name": "nope"}),
        ("Unregister", "UnregisterModel", {"model_name": m}),
        ("Model ready after unregistration", "ModelReady", {"name": m}),
        *model_infer_rows(),
    ]
    return [{"name": n, "port": "grpc", "method": rpc, "path": rpc, "grpc": (rpc, params),
             "status": None, "check": None} for n, rpc, params in rows]


def model_infer_rows():
    """ModelInfer on a handler that echoes the v2 JSON it is given and answers every input
    transformed in its own datatype (tests/suite/fixtures.py OIP_HANDLER): how each datatype
    travels to the handler and back (BYTES as base64 one way and as JSON text the other,
    unsigned values through Java's signed integers, FP16 not carried), and the error paths."""
    m = "oip_echo"
    every = [
        {"name": "f32", "datatype": "FP32", "shape": [2], "contents": {"fp32_contents": [1.5, -2.25]}},
        {"name": "f64", "datatype": "FP64", "shape": [1], "contents": {"fp64_contents": [0.1]}},
        {"name": "i8", "datatype": "INT8", "shape": [1], "contents": {"int_contents": [-7]}},
        {"name": "i32", "datatype": "INT32", "shape": [1, 2], "contents": {"int_contents": [7, -8]}},
        {"name": "i64", "datatype": "INT64", "shape": [1],
         "contents": {"int64_contents": [3000000000]}},
        {"name": "u32", "datatype": "UINT32", "shape": [1],
         "contents": {"uint_contents": [4000000000]}},
        {"name": "u64", "datatype": "UINT64", "shape": [1],
         "contents": {"uint64_contents": [2 ** 64 - 1]}},
        {"name": "b", "datatype": "BOOL", "shape": [2], "contents": {"bool_contents": [True, False]}},
        {"name": "s", "datatype": "BYTES", "shape": [2],
         "contents": {"bytes_contents": [b"hi", b"\x00\xff"]}},
        {"name": "h", "datatype": "FP16", "shape": [1], "contents": {"fp32_contents": [1.0]}},
    ]
    one = [{"name": "x", "datatype": "FP32", "shape": [1], "contents": {"fp32_contents": [4.0]}}]
    return [
        ("Register the v2 echo", "RegisterModel",
         {"url": f"{m}.mar", "model_name": m, "initial_workers": 1, "synchronous": True}),
        ("Infer, every datatype", "ModelInfer", {"model_name": m, "id": "r1", "inputs": every}),
        ("Infer, a version", "ModelInfer",
         {"model_name": m, "model_version": "1.0", "id": "r2", "inputs": one}),
        ("Infer, no inputs", "ModelInfer", {"model_name": m, "id": "r3"}),
        ("Infer, the handler fails", "ModelInfer", {"model_name": m, "id": "fail", "inputs": one}),
        ("Infer, unknown model", "ModelInfer", {"model_name": "nope", "inputs": one}),
        ("Infer, unknown version", "ModelInfer",
         {"model_name": m, "model_version": "9.9", "inputs": one}),
        ("Infer, no model name", "ModelInfer", {"inputs": one}),
        ("Unregister the v2 echo", "UnregisterModel", {"model_name": m}),
    ]


# inference_data.json: (model name, archive URL, input, check). Archive URLs of TorchServe's
# model zoo are served by {dl}; `mar_path_*` ones are names in the store.
IMAGE = ("recorded", "image", 5)
INFERENCE_MODELS = [
    ("squeezenet1_1", "squeezenet1_1.mar", "kitten.jpg", IMAGE),
    ("squeezenet1_1_scripted", "{dl}/squeezenet1_1_scripted.mar", "kitten.jpg", IMAGE),
    ("densenet161", "densenet161.mar", "kitten.jpg", IMAGE),
    ("alexnet", "alexnet.mar", "kitten.jpg", IMAGE),
    ("alexnet_scripted", "{dl}/alexnet_scripted.mar", "kitten.jpg", IMAGE),
    ("resnet-18", "resnet-18.mar", "kitten.jpg", IMAGE),
    ("resnet-18_scripted", "{dl}/resnet-18_scripted.mar", "kitten.jpg", IMAGE),
    ("vgg16", "vgg16.mar", "kitten.jpg", IMAGE),
    ("vgg16_scripted", "{dl}/vgg16_scripted.mar", "kitten.jpg", IMAGE),
    ("mnist", "{dl}/mnist_v2.mar", "0.png", ("recorded", "text", 0)),
    ("mnist_scripted", "{dl}/mnist_scripted_v2.mar", "0.png", ("recorded", "text", 0)),
    ("resnet152", "resnet-152-batch.mar", "kitten.jpg", IMAGE),
    ("resnet-152-batch_scripted", "{dl}/resnet-152-batch_scripted.mar", "kitten.jpg", IMAGE),
]
# Detection and segmentation: the collection asserts the status only.
INFERENCE_MODELS += [
    ("fastrcnn", "fastrcnn.mar", "persons.jpg", None),
    ("maskrcnn", "maskrcnn.mar", "persons.jpg", None),
    ("fcn_resnet_101", "fcn_resnet_101.mar", "persons.jpg", None),
    ("fcn_resnet_101_scripted", "{dl}/fcn_resnet_101_scripted.mar", "persons.jpg", None),
    ("deeplabv3_resnet_101_eager", "deeplabv3_resnet_101_eager.mar", "persons.jpg", None),
    ("deeplabv3_resnet_101_scripted", "{dl}/deeplabv3_resnet_101_scripted.mar", "persons.jpg",
     None),
]
# Entries of inference_data.json left out, and why: their custom handlers need the
# `transformers` package and BERT weights from the Hugging Face hub, which this machine cannot
# fetch.
LEFT_OUT = ["distill_bert_qa_eager", "bert_token_classification_no_torchscript",
            "bert_seqc_without_torchscript"]


def model_zoo_cases(models, steps):
    """The model-zoo collections: register synchronously with one worker, each step (predict,
    explain: a path and its check), unregister, then the metrics assertion."""
    cases = []
    for name, url, data, check in models:
        cases.append({"name": f"Register {name}", "port": "m", "method": "POST",
                      "path": f"/models?url={url}&model_name={name}&initial_workers=1"
                              "&synchronous=true", "status": 200, "check": None})
        for label, path, step_check in steps:
            cases.append({"name": f"{label} {name}", "port": "i", "method": "POST",
                          "path": path.format(m=name), "file": data, "status": 200,
                          "check": step_check or check})
        cases.append({"name": f"Unregister {name}", "port": "m", "method": "DELETE",
                      "path": f"/models/{name}", "status": [200, 201, 202], "check": None})
        cases.append({"name": "Model Metrics", "port": "x", "method": "GET",
                      "path": "/metrics", "status": 200, "check": ("regex", METRICS_REGEX)})
    return cases


PREDICT = [("Inference", "/predictions/{m}", None)]


def https_cases(model="squeezenet1_1", workers=(1, 1), predict="/predictions/{m}",
                data="kitten.jpg", explain=None):
    """https_test_collection.json and its KServe twins (an MNIST model, v1 or v2 paths)."""
    m = model
    rows = [
        ("HTTPS Inference API Description", "i", "OPTIONS", "/", 200),
        ("HTTPS Management API Description", "m", "OPTIONS", "/", 200),
        ("HTTPS Metrics API Description", "x", "OPTIONS", "/", 200),
        (f"HTTPS Register Model - {m}", "m", "POST",
         f"/models?url={m}.mar&model_name={m}&initial_workers=1&synchronous=true", 200),
        (f"HTTPS Get {m} Model Description", "m", "GET", f"/models/{m}", 200),
        ("HTTPS Scale up Workers -  Synchronous", "m", "PUT",
         f"/models/{m}?min_worker={workers[0]}&max_worker={workers[0]}&synchronous=true",
         [200, 201, 202]),
        ("HTTPS Scale up Workers - Asynchronous", "m", "PUT",
         f"/models/{m}?min_worker={workers[1]}&max_worker={workers[1]}&synchronous=false",
         [200, 201, 202]),
        (f"HTTPS - Inference - {m}", "i", "POST", predict.format(m=m), 200),
    ]
    if explain:
        rows.append((f"HTTPS - Explanations - {m}", "i", "POST", explain.format(m=m), 200))
    rows.append((f"HTTPS UnRegister Model {m}", "m", "DELETE", f"/models/{m}", 200))
    cases = [{"name": n, "port": p, "method": meth, "path": path, "status": s, "check": None}
             for n, p, meth, path, s in rows]
    for c in cases:
        if c["method"] == "POST" and c["port"] == "i":
            c["file"] = data
    return cases


MNIST = [("mnist", "mnist.mar", None, None)]


def with_input(models, data, check):
    return [(n, u, data, check) for n, u, _, _ in models]


def token_cases():
    """Token authorization (TorchServe's docs/token_authorization_api.md): each server's own
    keys from its key_file.json ({key:NAME}), missing, wrong and misplaced keys, rotation."""
    ok = {"Authorization": "Bearer {key:inference}"}
    mgmt = {"Authorization": "Bearer {key:management}"}
    api = {"Authorization": "Bearer {key:API}"}
    rows = [
        ("ping without a key", "i", "GET", "/ping", None, 400),
        ("ping with the inference key", "i", "GET", "/ping", ok, 200),
        ("ping with the management key", "i", "GET", "/ping", mgmt, 400),
        ("ping with a lower-case scheme", "i", "GET", "/ping", {"Authorization":
                                                               "bearer {key:inference}"}, 400),
        ("ping with a bare key", "i", "GET", "/ping", {"Authorization": "{key:inference}"}, 400),
        ("ping with a wrong key", "i", "GET", "/ping", {"Authorization": "Bearer nope1234"}, 400),
        ("models without a key", "m", "GET", "/models", None, 400),
        ("models with the inference key", "m", "GET", "/models", ok, 400),
        ("models with the management key", "m", "GET", "/models", mgmt, 200),
        ("register with the management key", "m", "POST",
         "/models?url=squeezenet1_1.mar&model_name=squeezenet1_1&initial_workers=1", mgmt, 200),
        ("predict without a key", "i", "POST", "/predictions/squeezenet1_1", None, 400),
        ("predict with the management key", "i", "POST", "/predictions/squeezenet1_1", mgmt,
         400),
        ("predict with the inference key", "i", "POST", "/predictions/squeezenet1_1", ok, 200),
        ("describe without a key", "m", "GET", "/models/squeezenet1_1", None, 400),
        ("metrics need no key", "x", "GET", "/metrics", None, 200),
        ("API description needs no key", "i", "OPTIONS", "/", None, 200),
        ("rotation with the management key", "m", "POST", "/token?type=inference", mgmt, 400),
        ("rotation without a type", "m", "POST", "/token", api, 400),
        ("rotation with a bad type", "m", "POST", "/token?type=nope", api, 400),
        ("rotation with the API key", "m", "POST", "/token?type=management", api, 200),
        ("the management key of start-up after rotation", "m", "GET", "/models",
         {"Authorization": "Bearer {key0:management}"}, 400),
        ("the rotated management key", "m", "GET", "/models", mgmt, 200),
        ("unregister without a key", "m", "DELETE", "/models/squeezenet1_1", None, 400),
    ]
    cases = []
    for n, port, method, path, headers, status in rows:
        case = {"name": n, "port": port, "method": method, "path": path, "status": status,
                "check": None, "headers": headers or {}}
        if path.startswith("/predictions"):
            case["file"] = "kitten.jpg"
            if status == 200:
                case["check"] = IMAGE
        cases.append(case)
    # The same keys as `authorization` metadata on the gRPC services (inference key on the
    # inference service, management key on the management one), before the unregistration.
    image = {"model_name": "squeezenet1_1", "input": {"data": "kitten.jpg"}}
    grpc_rows = [
        ("gRPC ping without a key", "Ping", {}, None, 7),
        ("gRPC ping with the inference key", "Ping", {}, ok, 0),
        ("gRPC ping with the management key", "Ping", {}, mgmt, 7),
        ("gRPC predict without a key", "Predictions", image, None, 7),
        ("gRPC predict with a wrong key", "Predictions", image,
         {"Authorization": "Bearer nope1234"}, 7),
        ("gRPC predict with the inference key", "Predictions", image, ok, 0),
        ("gRPC list without a key", "ListModels", {}, None, 7),
        ("gRPC list with the inference key", "ListModels", {}, ok, 7),
        ("gRPC list with the management key", "ListModels", {}, mgmt, 0),
        ("gRPC describe with the management key", "DescribeModel",
         {"model_name": "squeezenet1_1"}, mgmt, 0),
    ]
    # Answers are compared with TorchServe's by the differential check.
    grpc_cases = [{"name": n, "port": "grpc", "method": rpc, "path": rpc, "grpc": (rpc, params),
                   "headers": headers or {}, "status": code, "check": None}
                  for n, rpc, params, headers, code in grpc_rows]
    unregister = len(cases) - 1
    return cases[:unregister] + grpc_cases + cases[unregister:]


def workflow_cases():
    """workflow_data.json, with its .war files served by {dl}."""
    rows = [
        ("Register Densenet Workflow - Happy Path", "POST", "/workflows?url={dl}/densenet_wf.war",
         200),
        ("List Workflow - Happy Path", "GET", "/workflows", 200),
        ("Describe Workflow - Happy Path", "GET", "/workflows/densenet", 200),
        ("Re Register Densenet Workflow - Conflict", "POST",
         "/workflows?url={dl}/densenet_wf.war", 500),
        ("Unregister Workflow - Happy Path", "DELETE", "/workflows/densenet", 200),
        ("Register Densenet Workflow - Invalid URL", "POST",
         "/workflows?url={dl}/does_not_exist.war", 400),
        ("Describe Workflow - Invalid Workflow", "GET", "/workflows/does_not_exist", 404),
        ("Unregister Workflow - Invalid Workflow", "DELETE", "/workflows/does_not_exist", 404),
        ("Register Densenet Workflow - Malformed URL", "POST", "/workflows?url=malformed_url,?",
         404),
        ("Register Workflow - Custom Python Dependency", "POST",
         "/workflows?url={dl}/custom_python_dep.war", 500),
        ("Register Workflow - Loading Memory Error", "POST",
         "/workflows?url={dl}/loading-memory-error.war", 500),
    ]
    return [{"name": n, "port": "m", "method": m, "path": p, "status": st, "check": None}
            for n, m, p, st in rows]


def workflow_inference_cases():
    """workflow_inference_collection.json over workflow_inference_data.json: register the
    workflow, run it on the input, unregister."""
    rows = [("{dl}/densenet_wf.war", "densenet", 200, IMAGE),
            ("{dl}/timeout-retry-test.war", "densenet", 500, None),
            ("{dl}/dog_breed_wf.war", "dog_breed_wf", 200, IMAGE)]
    cases = []
    for url, name, status, check in rows:
        cases += [
            {"name": f"Register Workflow {url}", "port": "m", "method": "POST",
             "path": f"/workflows?url={url}", "status": 200, "check": None},
            {"name": f"Workflow Inference {name}", "port": "i", "method": "POST",
             "path": f"/wfpredict/{name}", "file": "kitten.jpg", "status": status,
             "check": check},
            {"name": f"Unregister Workflow {name}", "port": "m", "method": "DELETE",
             "path": f"/workflows/{name}", "status": [200, 201, 202], "check": None},
        ]
    return cases


# Each suite runs on a fresh server with TorchServe's configuration for it (api_utils.py).
KF_STEPS = [("Inference", "/v1/models/{m}:predict", ("recorded", "json", 0)),
            ("Explanations", "/v1/models/{m}:explain", ("recorded", "close", 1))]
KFV2_STEPS = [("Inference", "/v2/models/{m}/infer", ("recorded", "close", 1)),
              ("Explanations", "/v2/models/{m}/explain", ("recorded", "close", 1))]
SUITES = [
    {"name": "management", "config": BASE, "cases": management_cases()},
    {"name": "inference", "config": ["metrics_mode=prometheus", *BASE],
     "cases": model_zoo_cases(INFERENCE_MODELS, PREDICT)},
    {"name": "increased_timeout_inference",
     "config": ["default_response_timeout=300", "metrics_mode=prometheus", *BASE],
     "cases": model_zoo_cases([("densenet161_scripted", "{dl}/densenet161_scripted.mar",
                                "kitten.jpg", IMAGE)], PREDICT)},
    {"name": "https", "tls": True, "config": ["install_py_dep_per_model=true", *BASE],
     "cases": https_cases()},
    {"name": "management_kf", "config": [*BASE, "service_envelope=kserve"],
     "cases": management_cases()},
    {"name": "inference_kf", "config": ["service_envelope=kserve", "metrics_mode=prometheus",
                                        *BASE],
     "cases": model_zoo_cases(with_input(MNIST, "mnist_v1.json", None), KF_STEPS)},
    {"name": "https_kf", "tls": True, "config": ["service_envelope=kserve", *BASE],
     "cases": https_cases("mnist", (5, 6), "/v1/models/{m}:predict", "mnist_v1.json",
                          "/v1/models/{m}:explain")},
    {"name": "inference_kfv2", "config": ["service_envelope=kservev2",
                                          "metrics_mode=prometheus", *BASE],
     "cases": model_zoo_cases(with_input(MNIST, "mnist_v2.json", None), KFV2_STEPS)},
    {"name": "https_kfv2", "tls": True, "config": ["service_envelope=kservev2", *BASE],
     "cases": https_cases("mnist", (5, 6), "/v2/models/{m}/infer", "mnist_v2.json",
                          "/v2/models/{m}/explain")},
    {"name": "workflow", "config": ["disable_token_authorization=true"], "workflow_store": True,
     "cases": workflow_cases()},
    {"name": "workflow_inference", "config": ["disable_token_authorization=true"],
     "workflow_store": True, "cases": workflow_inference_cases()},
    {"name": "token_authorization", "config": ["enable_model_api=true"],
     "cases": token_cases()},
    {"name": "grpc_management", "config": BASE, "cases": grpc_management_cases()},
    {"name": "grpc_inference", "config": ["metrics_mode=prometheus", *BASE],
     "cases": grpc_inference_cases()},
    {"name": "grpc_oip", "config": ["ts_open_inference_protocol=true", *BASE],
     "cases": grpc_oip_cases()},
    {"name": "explanation", "config": ["metrics_mode=prometheus", *BASE],
     "cases": model_zoo_cases(with_input(MNIST, "0.png", None),
                              [("Explanations", "/explanations/{m}", ("recorded", "close", 1))])},
]


# Answers whose bodies differ from TorchServe's by choice, each listed in
# docs/compatibility.md: the differential check compares only their status codes.
LISTED = {
    ("OPTIONS", "/"): "OpenAPI documents of ferroserve's own routes",
    ("PUT", "/models/resnet-18?min_worker=-1"): "a negative min_worker: no Java index error",
}
# The same, by case name where the request is also sent in cases that must match.
LISTED_NAMES = {
    "Re Register Densenet Workflow - Conflict": "a workflow file already in the store",
}
# gRPC codes TorchServe sends without details where ferroserve says what went wrong
# (docs/compatibility.md): a conflict's UNKNOWN.
GRPC_SILENT = {2: "a version already registered: UNKNOWN with no message"}
# RPCs TorchServe's services leave UNIMPLEMENTED (12) and ferroserve serves
# (docs/compatibility.md).
GRPC_UNIMPLEMENTED = {"ServerMetadata": "TorchServe's OIP service has no ServerMetadata"}
# Fields of JSON answers that differ between any two runs (worker ids, pids, times, memory)
# or that ferroserve adds (docs/compatibility.md: describe's `device`, `stats`, `servedBy` and
# `drift`).
DYNAMIC = {"startTime", "pid", "id", "memoryUsage", "device", "stats", "gpuUsage", "servedBy",
           "drift"}
