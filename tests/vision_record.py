"""Builds the vision fixtures (tests/fixtures/vision/) and records TorchServe 0.12's answers to
them: TorchServe's built-in image_classifier, image_segmenter and object_detector handlers over
small TorchScript models, real torch-model-archiver archives, a varied image set; the answers
go to expected.json, which tests/vision.rs compares ferroserve's native handlers with.

Usage: vision_record.py PYTHON   (PYTHON: the interpreter of scripts/python-env.sh, with
torchserve, torch-model-archiver, torchvision, captum; `onnx` importable for the ONNX twin, e.g.
`pip install --target DIR onnx` and PYTHONPATH=DIR; Java 17 on PATH). Run again only when the
fixtures change; the images and models are deterministic.
"""
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "vision")

GRID = '''
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn, Tensor


class Grid(nn.Module):
    """[B, 3, H, W] -> 10 logits from the mean colour of an 8 x 8 grid of cells: a pixel
    shifted, resampled or normalised differently changes the probabilities."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(192, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(x, 8).flatten(1)) * 4.0
'''
MODELS = GRID + '''

class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3, stride=2)

    def forward(self, x) -> Dict[str, Tensor]:
        return {"out": F.adaptive_avg_pool2d(self.conv(x), 16) * 4.0}


class Detector(nn.Module):
    """Three boxes per image from a 4 x 4 grid of mean colours; scores around 0.5."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(48, 15)

    def one(self, image: Tensor) -> Dict[str, Tensor]:
        v = self.fc(F.adaptive_avg_pool2d(image, 4).flatten())
        return {"boxes": v[:12].reshape(3, 4).abs() * 100,
                "labels": torch.tensor([1, 2, 3]),
                "scores": torch.sigmoid(v[12:15] * 4)}

    def forward(self, images: Tensor) -> List[Dict[str, Tensor]]:
        return [self.one(images[i]) for i in range(images.shape[0])]


class TorchvisionStyle(nn.Module):
    """The same detector with a scripted torchvision detector's signature: a list of images
    in, (losses, detections) out."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images: List[Tensor]) -> Tuple[Dict[str, Tensor], List[Dict[str, Tensor]]]:
        losses: Dict[str, Tensor] = {}
        return losses, [self.detector.one(image) for image in images]
'''

CLASSES = ["tabby", "tiger_cat", "Egyptian_cat", "lynx", "tiger", "cougar", "leopard",
           "jaguar", "lion", "caf\u00e9 cat"]


def images():
    """name -> (bytes, what it is). Deterministic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)

    def photo(w, h, noise=20.0, texture=True):
        y, x = np.mgrid[0:h, 0:w]
        r = np.sin(x / 17.0) * 80 + 128 + rng.normal(0, noise, (h, w))
        g = np.cos(y / 23.0) * 70 + 120 + ((x * y % 97) if texture else np.sin(x * y / 9e4) * 40)
        b = (x * 3 + y * 2) % 256
        return Image.fromarray(np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8), "RGB")

    def save(img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    out = {
        "baseline-420.jpg": save(photo(320, 240), "JPEG", quality=90),
        "progressive-420.jpg": save(photo(500, 375), "JPEG", quality=85, progressive=True),
        "baseline-444.jpg": save(photo(233, 300), "JPEG", quality=90, subsampling=0),
        "baseline-422.jpg": save(photo(401, 299), "JPEG", quality=75, subsampling=1),
        "tiny.jpg": save(photo(17, 11), "JPEG", quality=90),
        "large-3000.jpg": save(photo(3000, 1800, noise=0.5, texture=False), "JPEG", quality=60),
        "rgb.png": save(photo(200, 150), "PNG"),
        "tiny.png": save(photo(5, 9), "PNG"),
        "rgb.bmp": save(photo(160, 120), "BMP"),
        "lossless.webp": save(photo(200, 180), "WEBP", lossless=True),
        "lossy.webp": save(photo(300, 280), "WEBP", quality=80),
        "rgb.tiff": save(photo(150, 160), "TIFF"),
        # Modes the handlers' transforms cannot take, and broken files.
        "palette.png": save(photo(64, 48).convert("P"), "PNG"),
        "grey.jpg": save(photo(64, 48).convert("L"), "JPEG"),
        "cmyk.jpg": save(photo(64, 48).convert("CMYK"), "JPEG"),
        "rgba.png": save(photo(64, 48).convert("RGBA"), "PNG"),
        "first-frame.gif": save(photo(64, 48), "GIF"),
    }
    out["truncated.jpg"] = out["baseline-420.jpg"][: len(out["baseline-420.jpg"]) * 3 // 5]
    out["not-an-image.bin"] = b"these bytes are no image format" * 10
    return out


def build(python):
    import torch

    work = tempfile.mkdtemp(prefix="vision-")
    sys.path.insert(0, work)
    with open(os.path.join(work, "vision_models.py"), "w") as f:
        f.write(MODELS)
    import vision_models as vm

    torch.manual_seed(20)
    grid = vm.Grid().eval()
    torch.manual_seed(21)
    seg = vm.Segmenter().eval()
    torch.manual_seed(22)
    det = vm.Detector().eval()
    files = {
        "grid.pt": torch.jit.script(grid),
        "segmenter.pt": torch.jit.script(seg),
        "detector.pt": torch.jit.script(det),
        "detector_tv.pt": torch.jit.script(vm.TorchvisionStyle(det)),
    }
    for name, module in files.items():
        module.save(os.path.join(work, name))
    torch.onnx.export(grid, (torch.zeros(1, 3, 224, 224),), os.path.join(work, "grid.onnx"),
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    torch.save(grid.state_dict(), os.path.join(work, "grid_state.pt"))
    with open(os.path.join(work, "grid_eager.py"), "w") as f:
        f.write(GRID)
    labels = os.path.join(work, "index_to_name.json")
    with open(labels, "w") as f:
        json.dump({str(i): ["n%08d" % i, name] for i, name in enumerate(CLASSES)}, f)
    det_labels = os.path.join(work, "detector", "index_to_name.json")
    os.makedirs(os.path.dirname(det_labels))
    with open(det_labels, "w") as f:
        json.dump({"object_type_names": ["__background__", "person", "bicycle", "car"]}, f)
    archiver = os.path.join(os.path.dirname(python), "torch-model-archiver")
    archives = [
        ("vclass", "grid.pt", "image_classifier", labels, []),
        ("vclass_onnx", "grid.onnx", "image_classifier", labels, []),
        ("vclass_eager", "grid_state.pt", "image_classifier", labels,
         ["--model-file", os.path.join(work, "grid_eager.py")]),
        ("vseg", "segmenter.pt", "image_segmenter", None, []),
        ("vdet", "detector.pt", "object_detector", det_labels, []),
        ("vdet_tv", "detector_tv.pt", "object_detector", det_labels, []),
    ]
    os.makedirs(OUT, exist_ok=True)
    for name, serialized, handler, extra, more in archives:
        cmd = [archiver, "--model-name", name, "--version", "1.0", "--serialized-file",
               os.path.join(work, serialized), "--handler", handler, "--export-path", OUT,
               "--force", *more]
        if extra:
            cmd += ["--extra-files", extra]
        subprocess.run(cmd, check=True)
    for name, data in images().items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
    shutil.rmtree(work)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(url, body=None, content_type=None):
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


CONTENT = {"jpg": "image/jpeg", "png": "image/png", "bmp": "image/bmp", "webp": "image/webp",
           "tiff": "image/tiff", "gif": "image/gif", "bin": "application/octet-stream"}


def summary(attributions):
    """Explanations of a 224 x 224 image are 150,528 numbers: their sums per channel, their
    absolute sum and every 997th value stand for them."""
    flat = [v for channel in attributions for row in channel for v in row]
    return {"channel_sums": [sum(v for row in c for v in row) for c in attributions],
            "abs_sum": sum(abs(v) for v in flat), "every_997th": flat[::997]}


def record(python):
    work = tempfile.mkdtemp(prefix="vision-ts-")
    store = os.path.join(work, "store")
    shutil.copytree(OUT, store)
    ports = {k: free_port() for k in "imx"}
    config = os.path.join(work, "config.properties")
    with open(config, "w") as f:
        f.write(f"inference_address=http://127.0.0.1:{ports['i']}\n"
                f"management_address=http://127.0.0.1:{ports['m']}\n"
                f"metrics_address=http://127.0.0.1:{ports['x']}\n"
                "disable_token_authorization=true\ndefault_workers_per_model=1\n"
                "load_models=vclass.mar,vseg.mar,vdet.mar\n")
    env = dict(os.environ, TORCH_DEVICE="cpu", TMPDIR=work)
    env["PATH"] = os.path.dirname(python) + os.pathsep + env["PATH"]
    log = open(os.path.join(work, "ts.log"), "wb")
    proc = subprocess.Popen(["torchserve", "--start", "--foreground", "--ncs", "--model-store",
                             store, "--ts-config", config], cwd=work, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    inference = f"http://127.0.0.1:{ports['i']}"
    management = f"http://127.0.0.1:{ports['m']}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert time.monotonic() < deadline, "TorchServe never had its workers ready"
            try:
                ready = all(json.loads(call(f"{management}/models/{m}")[1])[0]["workers"][0]
                            ["status"] == "READY" for m in ("vclass", "vseg", "vdet"))
                if ready:
                    break
            except (OSError, KeyError, IndexError, ValueError):
                pass
            time.sleep(1)
        answers = {}
        pictures = sorted(n for n in os.listdir(OUT) if n.rsplit(".", 1)[-1] in CONTENT)
        for model in ("vclass", "vseg", "vdet"):
            for name in pictures:
                with open(os.path.join(OUT, name), "rb") as f:
                    data = f.read()
                status, body = call(f"{inference}/predictions/{model}", data,
                                    CONTENT[name.rsplit(".", 1)[-1]])
                answers[f"{model} {name}"] = {"status": status, "body": body}
        with open(os.path.join(OUT, "baseline-420.jpg"), "rb") as f:
            b64 = json.dumps(base64.b64encode(f.read()).decode()).encode()
        status, body = call(f"{inference}/predictions/vclass", b64, "application/json")
        answers["vclass base64 baseline-420.jpg"] = {"status": status, "body": body}
        tensor = [[[round(((c * 7 + y * 3 + x) % 11) / 10 - 0.5, 2) for x in range(16)]
                   for y in range(16)] for c in range(3)]
        payload = json.dumps(tensor).encode()
        with open(os.path.join(OUT, "tensor.json"), "wb") as f:
            f.write(payload)
        for path in ("predictions", "explanations"):
            status, body = call(f"{inference}/{path}/vclass", payload, "application/json")
            answers[f"vclass {path} tensor.json"] = {"status": status, "body": body}
        with open(os.path.join(OUT, "baseline-420.jpg"), "rb") as f:
            status, body = call(f"{inference}/explanations/vclass", f.read(), "image/jpeg")
        answers["vclass explanations baseline-420.jpg"] = {
            "status": status, "summary": summary(json.loads(body)) if status == 200 else body}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(answers, f, indent=1, sort_keys=True)
        f.write("\n")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    build(sys.argv[1])
    record(sys.argv[1])
