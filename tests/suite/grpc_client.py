"""TorchServe's gRPC services (proto/inference.proto, proto/management.proto) for the suite:
stubs generated once per run with grpcio-tools, and one call helper that answers
(status code, message) like the HTTP helper answers (status, body)."""
import importlib
import os
import sys

import grpc
from grpc_tools import protoc

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto")


def load(out):
    """Generates the Python modules of the two protos into `out` and imports them."""
    args = ["protoc", f"-I{PROTO}", f"-I{os.path.dirname(protoc.__file__)}/_proto",
            f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(PROTO, "inference.proto"), os.path.join(PROTO, "management.proto"),
            os.path.join(PROTO, "open_inference_grpc.proto"),
            os.path.join(PROTO, "google", "rpc", "status.proto")]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on proto/*.proto")
    sys.path.insert(0, out)
    return {name: importlib.import_module(name) for name in
            ("inference_pb2", "inference_pb2_grpc", "management_pb2", "management_pb2_grpc",
             "open_inference_grpc_pb2", "open_inference_grpc_pb2_grpc")}


# KServe's Open Inference Protocol service, on the inference port with
# ts_open_inference_protocol=true.
OIP = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
       "ModelInfer")


class Client:
    def __init__(self, modules, inference_port, management_port):
        """Connects to both services; TorchServe opens its gRPC ports after its HTTP ones, so
        this waits (up to a minute) until both accept."""
        self.m = modules
        channels = [grpc.insecure_channel(f"127.0.0.1:{p}")
                    for p in (inference_port, management_port)]
        for c in channels:
            grpc.channel_ready_future(c).result(timeout=60)
        self.inference = modules["inference_pb2_grpc"].InferenceAPIsServiceStub(channels[0])
        self.oip = modules["open_inference_grpc_pb2_grpc"].GRPCInferenceServiceStub(channels[0])
        self.management = modules["management_pb2_grpc"].ManagementAPIsServiceStub(channels[1])

    def request(self, rpc, params):
        """The request message of `rpc` from TorchServe-style params; ValueError or TypeError
        when they do not fit the message (TorchServe's own gRPC test skips those)."""
        if rpc in ("Ping",):
            from google.protobuf import empty_pb2
            return empty_pb2.Empty()
        if rpc in OIP:
            return getattr(self.m["open_inference_grpc_pb2"], rpc + "Request")(**params)
        module = self.m["inference_pb2"] if rpc.startswith(("Predictions", "Stream")) \
            else self.m["management_pb2"]
        name = {"Predictions": "PredictionsRequest", "StreamPredictions": "PredictionsRequest",
                "RegisterModel": "RegisterModelRequest",
                "UnregisterModel": "UnregisterModelRequest",
                "ScaleWorker": "ScaleWorkerRequest", "SetDefault": "SetDefaultRequest",
                "ListModels": "ListModelsRequest", "DescribeModel": "DescribeModelRequest"}[rpc]
        return getattr(module, name)(**params)

    def call(self, rpc, request, metadata=()):
        """(0, message) on success, else (gRPC status code, details); `metadata` is sent with
        the call (`authorization`)."""
        stub = self.inference if rpc in ("Ping", "Predictions", "StreamPredictions") \
            else self.oip if rpc in OIP else self.management
        try:
            if rpc == "StreamPredictions":
                replies = list(stub.StreamPredictions(request, timeout=300, metadata=metadata))
                return 0, b"".join(r.prediction for r in replies)
            reply = getattr(stub, rpc)(request, timeout=300, metadata=metadata)
        except grpc.RpcError as e:
            return e.code().value[0], (e.details() or "").encode()
        if rpc == "Ping":
            return 0, reply.health.encode()
        if rpc == "Predictions":
            return 0, reply.prediction
        if rpc in OIP:
            from google.protobuf import text_format
            return 0, text_format.MessageToString(reply).encode()
        return 0, reply.msg.encode()
