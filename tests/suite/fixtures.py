"""Builds the archives and inputs of the TorchServe regression suite (tests/suite/cases.py) into
a folder, with the real torch-model-archiver. TorchServe's own collections use pretrained
model-zoo archives; these are small models with the same handlers and the same archive forms
(TorchScript with `image_classifier`, an eager model with a custom handler), deterministic, and
trained on nothing: what the suite checks is that both servers give the same answers.

Usage: fixtures.py OUT_DIR   (needs torch, torchvision and torch-model-archiver)
"""
import base64
import io
import json
import os
import shutil
import subprocess
import sys

import torch
from PIL import Image, ImageDraw
from torch import nn

LABELS = ["tabby", "tiger_cat", "Egyptian_cat", "lynx", "tiger", "cougar", "leopard",
          "jaguar", "lion", "cheetah"]

# The image-classifier archives of TorchServe's collections, by file name; `_scripted` ones are
# TorchScript in TorchServe's model zoo too.
IMAGE_CLASSIFIERS = ["squeezenet1_1", "densenet161", "resnet-18", "resnet-152-batch", "alexnet",
                     "vgg16", "squeezenet1_1_scripted", "densenet161_scripted",
                     "resnet-18_scripted", "alexnet_scripted", "vgg16_scripted",
                     "resnet-152-batch_scripted"]


class Colours(nn.Module):
    """[B, 3, H, W] -> 10 logits from colour statistics in four quadrants: a different picture,
    crop or normalisation gives clearly different probabilities."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(self.pool(x).flatten(1)) * 3.0


MNIST_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=3)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))
'''

# A custom handler on top of TorchServe's ImageClassifier, as the MNIST example's: grey images
# normalised with MNIST's statistics, the best class as the answer (captum explanations come
# from the base class).
MNIST_HANDLER = '''
from torchvision import transforms
from ts.torch_handler.image_classifier import ImageClassifier


class DigitClassifier(ImageClassifier):
    image_processing = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize((0.1307,), (0.3081,)),
    ])

    def postprocess(self, data):
        return data.argmax(1).tolist()
'''


# Detection and segmentation models for TorchServe's object_detector and image_segmenter
# handlers, eager (a model file and its state dict, one nn.Module class each, as the handlers
# load them) or TorchScript: small heads on colour statistics, with the output shapes those
# handlers read (torchvision's detection dicts; segmentation logits under "out").
DETECTOR = '''
import torch
from torch import nn


class Detector(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 12)

    def forward(self, images):
        out = []
        for image in images:
            v = self.fc(image.mean(dim=(1, 2)))
            out.append({"boxes": v[:8].reshape(2, 4).abs() * 100,
                        "labels": torch.tensor([1, 2]),
                        "scores": torch.sigmoid(v[8:10] * 4)})
        return out
'''
SEGMENTER = '''
from typing import Dict

import torch
from torch import nn


class Segmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(4)

    def forward(self, x) -> Dict[str, torch.Tensor]:
        return {"out": self.pool(self.conv(x)) * 3}
'''
# (archive name, handler, model source, TorchScript?)
VISION = [("fastrcnn", "object_detector", DETECTOR, False),
          ("maskrcnn", "object_detector", DETECTOR, False),
          ("fcn_resnet_101", "image_segmenter", SEGMENTER, False),
          ("fcn_resnet_101_scripted", "image_segmenter", SEGMENTER, True),
          ("deeplabv3_resnet_101_eager", "image_segmenter", SEGMENTER, False),
          ("deeplabv3_resnet_101_scripted", "image_segmenter", SEGMENTER, True)]


def vision_archives(work, out, labels):
    for i, (name, handler, source, scripted) in enumerate(VISION):
        folder = os.path.join(work, "vision-" + name)
        os.makedirs(folder, exist_ok=True)
        model_file = os.path.join(folder, "model.py")
        with open(model_file, "w") as f:
            f.write(source)
        namespace = {}
        exec(compile(source, model_file, "exec"), namespace)
        cls = next(v for k, v in namespace.items()
                   if isinstance(v, type) and issubclass(v, nn.Module) and v is not nn.Module)
        torch.manual_seed(200 + i)
        model = cls().eval()
        weights = os.path.join(folder, f"{name}.pt")
        if scripted:
            torch.jit.script(model).save(weights)
            extra = []
        else:
            torch.save(model.state_dict(), weights)
            extra = ["--model-file", model_file]
        archiver("--model-name", name, "--version", "1.0", "--serialized-file", weights,
                 "--handler", handler, "--extra-files", labels, *extra, "--export-path", out)


# Workflows for the workflow collections (their model-zoo .war files, rebuilt on the same
# handlers): spec, handler source and workflow name, by file name.
WORKFLOW_FUNCTIONS = '''
import time


def pre(data, context):
    """Passes each request's body on to the model."""
    if data is None:
        return None
    return [row.get("data") if row.get("data") is not None else row.get("body") for row in data]


def slow(data, context):
    """Slower than its node's timeout."""
    if data is None:
        return None
    time.sleep(3)
    return pre(data, context)
'''
WORKFLOWS = {
    "densenet_wf": ("densenet", WORKFLOW_FUNCTIONS, """
models:
  min-workers: 1
  max-workers: 1
  batch-size: 1
  densenet161:
    url: densenet161.mar
dag:
  pre: [densenet161]
"""),
    "timeout-retry-test": ("densenet", WORKFLOW_FUNCTIONS, """
models:
  min-workers: 1
  max-workers: 1
  timeout-ms: 500
  retry-attempts: 1
  densenet161:
    url: densenet161.mar
dag:
  slow: [densenet161]
"""),
    "dog_breed_wf": ("dog_breed_wf", WORKFLOW_FUNCTIONS, """
models:
  min-workers: 1
  max-workers: 1
  dog_breed:
    url: resnet-18.mar
dag:
  pre: [dog_breed]
"""),
    # A handler needing a package that is not installed.
    "custom_python_dep": ("custom_python_dep", "import ferroserve_suite_missing_package\n"
                          + WORKFLOW_FUNCTIONS, "models:\n  min-workers: 1\ndag:\n  pre: []\n"),
    # A function that runs out of memory as it loads.
    "loading-memory-error": ("loading_memory_error", '''
def big(data, context):
    raise MemoryError("the model does not fit")
''', "models:\n  min-workers: 1\ndag:\n  big: []\n"),
}


# A handler for the Open Inference Protocol's ModelInfer: it is given the request as KServe v2
# JSON and answers v2 JSON. It echoes the request as it received it (key order, base64 BYTES,
# what a datatype carries) and answers each input transformed, in the input's datatype.
OIP_HANDLER = '''
import json


def handle(data, context):
    if data is None:
        return None
    answers = []
    for row in data:
        request = row.get("body")
        if request.get("id") == "fail":
            raise ValueError("asked to fail")
        outputs = [{"name": "request", "datatype": "BYTES", "shape": [1],
                    "data": [json.dumps(request)]}]
        for tensor in request["inputs"]:
            kind, values = tensor["datatype"], tensor.get("data", [])
            if kind == "BOOL":
                values = [not v for v in values]
            elif kind != "BYTES":
                values = [v * 2 for v in values]
            outputs.append({"name": tensor["name"] + "_out", "datatype": kind,
                            "shape": tensor["shape"], "data": values})
        answers.append({"id": request["id"], "model_name": request["model_name"],
                        "model_version": "1.0", "outputs": outputs})
    return answers
'''


def workflow_archives(work, out):
    tool = os.path.join(os.path.dirname(sys.executable), "torch-workflow-archiver")
    for file, (name, source, spec) in WORKFLOWS.items():
        folder = os.path.join(work, "wf-" + file)
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "spec.yaml"), "w") as f:
            f.write(spec)
        with open(os.path.join(folder, "handler.py"), "w") as f:
            f.write(source)
        # The archiver stages in $TMPDIR/<name> and names the file after the workflow.
        env = dict(os.environ, TMPDIR=folder)
        subprocess.run([tool, "--workflow-name", name, "--spec-file",
                        os.path.join(folder, "spec.yaml"), "--handler",
                        os.path.join(folder, "handler.py"), "--export-path", folder, "-f"],
                       check=True, env=env)
        shutil.move(os.path.join(folder, f"{name}.war"), os.path.join(out, f"{file}.war"))


def archiver(*args):
    tool = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
    subprocess.run([tool, *args, "--force"], check=True)


def main(out):
    os.makedirs(out, exist_ok=True)
    work = os.path.join(out, "build")
    os.makedirs(work, exist_ok=True)
    labels = os.path.join(work, "index_to_name.json")
    with open(labels, "w") as f:
        json.dump({str(i): name for i, name in enumerate(LABELS)}, f)
    for i, name in enumerate(IMAGE_CLASSIFIERS):
        torch.manual_seed(100 + i)
        pt = os.path.join(work, f"{name}.pt")
        torch.jit.script(Colours().eval()).save(pt)
        archiver("--model-name", name, "--version", "1.0", "--serialized-file", pt,
                 "--handler", "image_classifier", "--extra-files", labels, "--export-path", out)

    torch.manual_seed(7)
    with open(os.path.join(work, "mnist.py"), "w") as f:
        f.write(MNIST_MODEL)
    with open(os.path.join(work, "mnist_handler.py"), "w") as f:
        f.write(MNIST_HANDLER)
    sys.path.insert(0, work)
    import mnist  # noqa: E402  (written just above)

    torch.save(mnist.Net().state_dict(), os.path.join(work, "mnist_cnn.pt"))
    archiver("--model-name", "mnist", "--version", "1.0",
             "--model-file", os.path.join(work, "mnist.py"),
             "--serialized-file", os.path.join(work, "mnist_cnn.pt"),
             "--handler", os.path.join(work, "mnist_handler.py"), "--export-path", out)
    scripted = os.path.join(work, "mnist_scripted.pt")
    net = mnist.Net().eval()
    net.load_state_dict(torch.load(os.path.join(work, "mnist_cnn.pt")))
    torch.jit.script(net).save(scripted)
    archiver("--model-name", "mnist_scripted_v2", "--version", "1.0", "--serialized-file",
             scripted, "--handler", os.path.join(work, "mnist_handler.py"), "--export-path", out)
    # The model zoo's name for the same eager archive, fetched by URL in the inference suite.
    shutil.copy(os.path.join(out, "mnist.mar"), os.path.join(out, "mnist_v2.mar"))

    workflow_archives(work, out)
    vision_archives(work, out, labels)
    with open(os.path.join(work, "oip_handler.py"), "w") as f:
        f.write(OIP_HANDLER)
    archiver("--model-name", "oip_echo", "--version", "1.0", "--handler",
             os.path.join(work, "oip_handler.py"), "--export-path", out)

    # Inputs: a cat-coloured picture (the collections' kitten.jpg) and a hand-drawn zero.
    kitten = Image.new("RGB", (320, 240))
    kitten.putdata([((x * 3) % 256, (y * 2 + x) % 256, (x * y) % 256)
                    for y in range(240) for x in range(320)])
    kitten.save(os.path.join(out, "kitten.jpg"), quality=90)
    persons = Image.new("RGB", (256, 192))
    persons.putdata([((x * y) % 256, (x * 5) % 256, (y * 3) % 256)
                     for y in range(192) for x in range(256)])
    persons.save(os.path.join(out, "persons.jpg"), quality=90)
    digit = Image.new("L", (28, 28))
    ImageDraw.Draw(digit).ellipse((7, 4, 20, 23), outline=255, width=3)
    digit.save(os.path.join(out, "0.png"))
    png = io.BytesIO()
    digit.save(png, format="PNG")
    with open(os.path.join(out, "mnist_v1.json"), "w") as f:
        json.dump({"instances": [{"data": base64.b64encode(png.getvalue()).decode(),
                                  "target": 0}]}, f)
    pixels = [[round(digit.getpixel((x, y)) / 255, 4) for x in range(28)] for y in range(28)]
    with open(os.path.join(out, "mnist_v2.json"), "w") as f:
        json.dump({"id": "d3b15cad-50a2-4eaf-80ce-8b0a428bd298",
                   "inputs": [{"name": "input-0", "shape": [1, 28, 28], "datatype": "FP32",
                               "data": [pixels]}]}, f)


if __name__ == "__main__":
    main(sys.argv[1])
