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

    # Inputs: a cat-coloured picture (the collections' kitten.jpg) and a hand-drawn zero.
    kitten = Image.new("RGB", (320, 240))
    kitten.putdata([((x * 3) % 256, (y * 2 + x) % 256, (x * y) % 256)
                    for y in range(240) for x in range(320)])
    kitten.save(os.path.join(out, "kitten.jpg"), quality=90)
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
