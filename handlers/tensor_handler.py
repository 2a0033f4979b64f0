"""TorchServe's BaseHandler contract for a JSON array in, the model's row out: each request's
body is a JSON list of numbers, the batch is stacked with torch.as_tensor, the model runs
once and each request gets its row back (tolist()). TorchScript through BaseHandler's own
loading; ONNX with a session on the same thread count as torch (OMP_NUM_THREADS).
ferroserve serves the same archive natively (native_handler: json_tensor)."""
import json
import os

import torch
from ts.torch_handler.base_handler import BaseHandler


class TensorHandler(BaseHandler):
    def initialize(self, context):
        serialized = context.manifest["model"]["serializedFile"]
        self.onnx = serialized.endswith(".onnx")
        if not self.onnx:
            super().initialize(context)
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
        path = os.path.join(context.system_properties["model_dir"], serialized)
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")
        self.initialized = True

    def preprocess(self, data):
        rows = [row.get("data") or row.get("body") for row in data]
        rows = [json.loads(r) if isinstance(r, (bytes, bytearray)) else r for r in rows]
        return torch.as_tensor(rows, dtype=torch.float32, device=self.device)

    def inference(self, data, *args, **kwargs):
        if self.onnx:
            return torch.from_numpy(self.session.run(None, {self.input_name: data.numpy()})[0])
        return super().inference(data, *args, **kwargs)
