"""Regenerates the bundled sign models and the reference outputs the tests compare against.

Needs torch, onnx, onnxruntime and torch-model-archiver: the environment of
scripts/python-env.sh has all but onnx (`pip install --target DIR onnx`, then PYTHONPATH=DIR).
Neither the server nor the tests need any of that: they use the committed files.

Outputs:
  model-store/sign.mar        TorchScript sign model (64 frames x 469 features -> 100 classes)
  model-store/sign_onnx.mar   the same weights exported to ONNX
  examples/sign_py.mar        the TorchScript sign model for the Python-handler path
  tests/fixtures/sign_reference.json  inputs (by formula) and expected logits
  tests/fixtures/probe.mar    test-only TorchScript model: slow, failing and batch-revealing on
                              request (see Probe)
  tests/fixtures/noop.mar, tests/fixtures/noop_onnx.mar
                              an identity model (TorchScript, ONNX) for the native json_tensor
                              handler (TorchServe's BaseHandler contract; handlers/tensor_handler.py
                              on TorchServe): the no-op case of the benchmarks
  tests/fixtures/image_classifier.mar + tests/fixtures/image.png
                              a tiny TorchScript image model for TorchServe's built-in
                              image_classifier handler, and a picture to classify
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
from torch import nn

FRAMES, FEATURES, CLASSES = 64, 469, 100
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class SignTransformer(nn.Module):
    """Linear embedding + sinusoidal positions + transformer encoder + masked mean pool."""

    def __init__(self, d_model=128, nhead=4, layers=2, ff=256):
        super().__init__()
        self.embedding = nn.Linear(FEATURES, d_model)
        pe = torch.zeros(FRAMES, d_model)
        pos = torch.arange(FRAMES, dtype=torch.float).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        self.register_buffer("pe", pe.unsqueeze(0))
        layer = nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.classifier = nn.Linear(d_model, CLASSES)

    def forward(self, x):
        h = self.encoder(self.embedding(x) + self.pe[:, : x.size(1)])
        active = (x.abs().sum(dim=-1) > 1e-6).float().unsqueeze(-1)
        pooled = (h * active).sum(dim=1) / active.sum(dim=1).clamp_min(1.0)
        return self.classifier(pooled)


class Probe(nn.Module):
    """Input [B, 1, 4]. x[:, 0, 0] = work units (the batch's max; each unit is one 256x256
    matmul), x[:, 0, 1] > 0.5 raises an error. Output [B, 2] = [log(B), 0], so the reply's
    confidence for label "batch" is B / (B + 1): the batch size the model saw."""

    def __init__(self):
        super().__init__()
        self.register_buffer("w", torch.full((256, 256), 1.0 / 256))

    def forward(self, x):
        work = int(x[:, 0, 0].max().item())
        y = torch.ones(256, 256)
        for _ in range(work):
            y = torch.mm(y, self.w)
        if bool((x[:, 0, 1] > 0.5).any()):
            raise RuntimeError("probe: failure requested")
        b = x.size(0)
        out = torch.zeros(b, 2)
        out[:, 0] = torch.log(torch.full([b], float(b)))
        return out + y[0, 0] * 0.0


def probe_archive(tmp):
    path = os.path.join(tmp, "probe.pt")
    torch.jit.script(Probe()).save(path)
    cfg_dir = os.path.join(tmp, "probe-cfg")
    os.makedirs(cfg_dir)
    labels = os.path.join(cfg_dir, "index_to_name.json")
    with open(labels, "w") as f:
        json.dump({"0": "batch", "1": "rest"}, f)
    config = os.path.join(cfg_dir, "model-config.yaml")
    with open(config, "w") as f:
        f.write(
            "ferroserve:\n  native_handler: json_tensor_classifier\n"
            "handler:\n  frames: 1\n  features: 4\nminWorkers: 1\nmaxWorkers: 1\n"
        )
    subprocess.run(
        [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", "probe", "--version", "1.0", "--serialized-file", path,
            "--handler", os.path.join(ROOT, "handlers", "sign_handler.py"),
            "--extra-files", labels, "--config-file", config,
            "--export-path", os.path.join(ROOT, "tests", "fixtures"), "--force",
        ],
        check=True,
    )


class Identity(nn.Module):
    def forward(self, x):
        return x


def noop_archives(tmp):
    ts_path = os.path.join(tmp, "noop.pt")
    torch.jit.script(Identity()).save(ts_path)
    onnx_path = os.path.join(tmp, "noop.onnx")
    torch.onnx.export(
        Identity(), (torch.zeros(2, 8),), onnx_path, input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch", 1: "n"}, "y": {0: "batch", 1: "n"}}, dynamo=False,
    )
    cfg_dir = os.path.join(tmp, "noop-cfg")
    os.makedirs(cfg_dir)
    config = os.path.join(cfg_dir, "model-config.yaml")
    with open(config, "w") as f:
        f.write(
            "# Served natively by ferroserve; TorchServe runs handlers/tensor_handler.py.\n"
            "ferroserve:\n  native_handler: json_tensor\nminWorkers: 1\nmaxWorkers: 1\n"
        )
    for name, path in (("noop", ts_path), ("noop_onnx", onnx_path)):
        subprocess.run(
            [
                sys.executable, "-m", "model_archiver.model_packaging",
                "--model-name", name, "--version", "1.0", "--serialized-file", path,
                "--handler", os.path.join(ROOT, "handlers", "tensor_handler.py"),
                "--config-file", config,
                "--export-path", os.path.join(ROOT, "tests", "fixtures"), "--force",
            ],
            check=True,
        )


class TinyImageModel(nn.Module):
    """[B, 3, H, W] -> 10 classes from the mean colour: small, but a real vision model shape."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 10)

    def forward(self, x):
        return self.fc(x.mean(dim=(2, 3)))


def image_classifier_archive(tmp):
    from PIL import Image

    torch.manual_seed(3)
    path = os.path.join(tmp, "tiny_image.pt")
    torch.jit.script(TinyImageModel().eval()).save(path)
    labels = os.path.join(tmp, "index_to_name.json")
    with open(labels, "w") as f:
        json.dump({str(i): name for i, name in enumerate(
            ["cat", "dog", "bird", "fish", "horse", "frog", "deer", "ship", "truck", "plane"])}, f)
    subprocess.run(
        [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", "image_classifier", "--version", "1.0", "--serialized-file", path,
            "--handler", "image_classifier", "--extra-files", labels,
            "--export-path", os.path.join(ROOT, "tests", "fixtures"), "--force",
        ],
        check=True,
    )
    img = Image.new("RGB", (64, 48))
    img.putdata([((x * 4) % 256, (y * 5) % 256, 128) for y in range(48) for x in range(64)])
    img.save(os.path.join(ROOT, "tests", "fixtures", "image.png"))


def formula_frames(seed, n_frames):
    """Deterministic input, reproduced bit-for-bit-enough by the Rust tests (computed in f64)."""
    idx = np.arange(n_frames * FEATURES, dtype=np.float64)
    vals = np.sin(idx * 0.001 * (seed + 1) + seed) * 0.5
    return vals.astype(np.float32).reshape(n_frames, FEATURES)


def pad(frames):
    out = np.zeros((FRAMES, FEATURES), dtype=np.float32)
    n = min(FRAMES, frames.shape[0])
    out[:n] = frames[:n]
    return out


def archive(name, serialized, tmp, extra, config="model-config.yaml", export="model-store"):
    subprocess.run(
        [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name, "--version", "1.0",
            "--serialized-file", serialized,
            "--handler", os.path.join(ROOT, "handlers", "sign_handler.py"),
            "--extra-files", ",".join(extra),
            "--config-file", os.path.join(tmp, config),
            "--export-path", os.path.join(ROOT, export), "--force",
        ],
        check=True,
    )


def sensitive(model):
    """Scales the embedding (so the input, not the positions, dominates the encoder) and the
    classifier (logits spread over ~20 units, a peaked softmax), so that a wrong handling of
    the input moves the answer far beyond the tests' tolerance."""
    with torch.no_grad():
        for layer, scale in ((model.embedding, 8.0), (model.classifier, 16.0)):
            layer.weight.mul_(scale)
            layer.bias.mul_(scale)
    return model


def check_sensitivity(model, cases, logits):
    """Fails the generation unless the reference cases have different answers and every
    input-handling mistake a server could make changes some logit by well over 0.1 (the
    tests' tolerance is 1e-5 relative)."""
    tops = {int(np.argmax(row)) for row in logits}
    assert len(tops) >= 2, f"reference cases share one top class: {tops}"
    frames = formula_frames(cases[1]["seed"], cases[1]["frames"])
    longer = formula_frames(cases[2]["seed"], cases[2]["frames"])
    wrong = {
        "frames reversed": pad(frames[::-1].copy()),
        "last frame dropped": pad(frames[:-1]),
        "shifted by a frame": pad(np.concatenate([np.zeros((1, FEATURES), np.float32), frames])),
        "padding not zero": pad(frames) + np.pad(np.full((FRAMES - len(frames), FEATURES), 1e-3, np.float32), ((len(frames), 0), (0, 0))),
        "kept the last frames": pad(longer[-FRAMES:]),
        "features transposed": pad(frames.reshape(len(frames), -1, 7).transpose(0, 2, 1).reshape(len(frames), FEATURES)),
    }
    with torch.inference_mode():
        for name, x in wrong.items():
            row = 2 if name == "kept the last frames" else 1
            got = model(torch.from_numpy(x).unsqueeze(0)).numpy()[0]
            moved = float(np.abs(got - logits[row]).max())
            print(f"{name}: max |logit change| = {moved:.3f}")
            assert moved > 0.1, name
    spread = float((logits.max(1) - logits.min(1)).min())
    print("top classes", sorted(tops), "smallest logit range", round(spread, 1))
    assert spread > 10


def main():
    torch.manual_seed(13)
    model = sensitive(SignTransformer().eval())
    tmp = tempfile.mkdtemp()
    try:
        ts_path = os.path.join(tmp, "sign.pt")
        torch.jit.script(model).save(ts_path)
        onnx_path = os.path.join(tmp, "sign.onnx")
        example = torch.zeros(2, FRAMES, FEATURES)
        torch.onnx.export(
            model, (example,), onnx_path, input_names=["landmarks"], output_names=["logits"],
            dynamic_axes={"landmarks": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
        )
        labels = {str(i): f"sign_{i:03d}" for i in range(CLASSES)}
        for i, word in enumerate(["hello", "thanks", "yes", "no", "please", "sorry", "help", "love"]):
            labels[str(i)] = word
        labels_path = os.path.join(tmp, "index_to_name.json")
        with open(labels_path, "w") as f:
            json.dump(labels, f, indent=1)
        with open(os.path.join(tmp, "model-config.yaml"), "w") as f:
            f.write(
                "# Served natively by ferroserve; TorchServe runs handlers/sign_handler.py.\n"
                "ferroserve:\n  native_handler: json_tensor_classifier\n"
                f"handler:\n  frames: {FRAMES}\n  features: {FEATURES}\n"
                "minWorkers: 1\nmaxWorkers: 1\n"
            )
        archive("sign", ts_path, tmp, [labels_path])
        archive("sign_onnx", onnx_path, tmp, [labels_path])
        # The same model without the native selection: served through TorchServe's Python
        # worker and handlers/sign_handler.py, by ferroserve or by TorchServe.
        with open(os.path.join(tmp, "model-config-python.yaml"), "w") as f:
            f.write(f"handler:\n  frames: {FRAMES}\n  features: {FEATURES}\nminWorkers: 1\nmaxWorkers: 1\n")
        os.makedirs(os.path.join(ROOT, "examples"), exist_ok=True)
        archive("sign_py", ts_path, tmp, [labels_path], config="model-config-python.yaml", export="examples")

        cases = [
            {"seed": 0, "frames": 64, "format": "flat"},
            {"seed": 1, "frames": 20, "format": "flat"},
            {"seed": 2, "frames": 80, "format": "flat"},
            {"seed": 3, "frames": 12, "format": "points"},
        ]
        batch = torch.from_numpy(np.stack([pad(formula_frames(c["seed"], c["frames"])) for c in cases]))
        with torch.inference_mode():
            logits = model(batch).numpy()
        import onnxruntime as ort

        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        onnx_logits = sess.run(None, {"landmarks": batch.numpy()})[0]
        print("max |torch - onnx| =", float(np.abs(onnx_logits - logits).max()))
        check_sensitivity(model, cases, logits)
        for c, row in zip(cases, logits):
            c["logits"] = [float(v) for v in row]
        probe_archive(tmp)
        noop_archives(tmp)
        image_classifier_archive(tmp)
        ref = {"frames": FRAMES, "features": FEATURES, "classes": CLASSES, "labels": labels, "cases": cases}
        with open(os.path.join(ROOT, "tests", "fixtures", "sign_reference.json"), "w") as f:
            json.dump(ref, f, indent=1)
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
