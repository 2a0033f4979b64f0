"""Sign-language classifier handler for TorchServe-compatible servers.

Request body: {"landmarks": [frame, ...], "topk": 5}
  - a frame is a flat list of features, or a list of points ([x, y, z] ...) that is flattened;
  - sequences are zero-padded or truncated to the model's frame count.
Response: {"predictions": [{"label": ..., "confidence": ...}, ...], "device": "cpu"}

Serves TorchScript (serializedFile *.pt) or ONNX (*.onnx); batch-aware. The shape comes from
model-config.yaml (handler.frames / handler.features). ferroserve runs the same contract natively
(see README, "Native handlers"); this file lets the archive run unchanged under TorchServe.
"""
import json
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)


def _pick_device():
    import torch

    wanted = (os.environ.get("TORCH_DEVICE") or os.environ.get("DEVICE") or "auto").lower()
    if os.environ.get("FORCE_CPU", "").lower() == "true":
        wanted = "cpu"
    if wanted == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return wanted


class SignHandler:
    def __init__(self):
        self.initialized = False

    def initialize(self, context):
        props = context.system_properties
        model_dir = props.get("model_dir")
        cfg = (getattr(context, "model_yaml_config", None) or {}).get("handler", {})
        self.frames = int(cfg.get("frames", 64))
        self.features = int(cfg.get("features", 469))
        serialized = context.manifest["model"]["serializedFile"]
        path = os.path.join(model_dir, serialized)
        labels_path = os.path.join(model_dir, "index_to_name.json")
        self.labels = {}
        if os.path.exists(labels_path):
            with open(labels_path) as f:
                self.labels = json.load(f)
        self.device = _pick_device()
        self.onnx = path.endswith(".onnx")
        if self.onnx:
            import onnxruntime as ort

            providers = ["CPUExecutionProvider"]
            if self.device.startswith("cuda"):
                providers.insert(0, "CUDAExecutionProvider")
            # The same thread count as torch (OMP_NUM_THREADS); ONNX Runtime ignores it.
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS") or 0)
            self.session = ort.InferenceSession(path, options, providers=providers)
            self.input_name = self.session.get_inputs()[0].name
        else:
            import torch

            self.model = torch.jit.load(path, map_location=self.device).eval()
        self.initialized = True
        logger.info("sign model %s loaded on %s", serialized, self.device)

    def _frames(self, body):
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        landmarks = body.get("landmarks")
        if not isinstance(landmarks, list) or not landmarks:
            raise ValueError("'landmarks' must be a non-empty list of frames")
        kept = landmarks[: self.frames]
        try:
            # One numpy conversion for the whole sequence; frames of points ([x, y, z] ...)
            # become a 3-d array, flattened per frame.
            flat = np.asarray(kept, dtype=np.float32)
            flat = flat.reshape(flat.shape[0], -1)
        except ValueError:
            # Ragged points (a last point shorter than the others): flatten frame by frame.
            rows = [[v for p in f for v in (p if isinstance(p, list) else [p])] for f in kept]
            sizes = {len(r) for r in rows}
            if len(sizes) != 1:
                raise ValueError(f"frames differ in length: {sorted(sizes)}") from None
            flat = np.asarray(rows, dtype=np.float32)
        if flat.shape[1] != self.features:
            raise ValueError(
                f"a frame has {flat.shape[1]} features, expected {self.features} "
                f"(input shape [<= {self.frames}, {self.features}])"
            )
        out = np.zeros((self.frames, self.features), dtype=np.float32)
        out[: flat.shape[0]] = flat
        return out, int(body.get("topk", 5))

    def handle(self, data, context):
        if data is None:
            return None
        rows = [self._frames(row.get("data") or row.get("body")) for row in data]
        batch = np.stack([r[0] for r in rows])
        if self.onnx:
            logits = self.session.run(None, {self.input_name: batch})[0]
        else:
            import torch

            with torch.inference_mode():
                logits = self.model(torch.from_numpy(batch).to(self.device)).cpu().numpy()
        results = []
        for row_logits, (_, k) in zip(logits, rows):
            e = np.exp(row_logits - row_logits.max())
            probs = e / e.sum()
            top = np.argsort(-probs, kind="stable")[: max(1, min(k, probs.size))]
            results.append(
                {
                    "predictions": [
                        {"label": self.labels.get(str(i), str(i)), "confidence": float(probs[i])}
                        for i in top
                    ],
                    "device": self.device,
                }
            )
        return results
