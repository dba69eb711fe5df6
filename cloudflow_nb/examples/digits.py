"""Real models for the image-cascade example: two plain-torch digit classifiers.

The data is scikit-learn's bundled handwritten digits (1,797 8x8 images, no download). The
weights are trained once (a few seconds on one CPU core), cached under
``$CLOUDFLOW_NB_CACHE`` (default ``~/.cache/cloudflow_nb``) and checked against a SHA-256
written beside them; a missing or corrupt file is retrained.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import threading
from typing import Any

import numpy as np

__all__ = ["CnnDigits", "LinearDigits", "digits_dataset", "weights_path"]

WEIGHTS_VERSION = "digits-v1"
_train_lock = threading.Lock()


def cache_dir() -> pathlib.Path:
    """Where downloaded or trained artefacts live."""
    root = os.environ.get("CLOUDFLOW_NB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "cloudflow_nb")
    path = pathlib.Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def digits_dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)``; images are float32 8x8 in [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    labels = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    split = 1200
    return images[:split], labels[:split], images[split:], labels[split:]


def _linear() -> Any:
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def _cnn() -> Any:
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def _train(model: Any, images: np.ndarray, labels: np.ndarray, epochs: int) -> None:
    import torch

    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights_path() -> pathlib.Path:
    """The cached weights of both models, trained now if missing or corrupt."""
    import torch

    path = cache_dir() / f"{WEIGHTS_VERSION}.pt"
    digest = path.with_suffix(".sha256")
    with _train_lock:
        if path.exists() and digest.exists() and digest.read_text().strip() == _sha256(path):
            return path
        torch.manual_seed(0)
        train_x, train_y, _, _ = digits_dataset()
        linear, cnn = _linear(), _cnn()
        _train(linear, train_x, train_y, epochs=30)
        _train(cnn, train_x, train_y, epochs=12)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"linear": linear.state_dict(), "cnn": cnn.state_dict()}, tmp)
        os.replace(tmp, path)
        digest.write_text(_sha256(path) + "\n")
    return path


class _DigitModel:
    """A batching classifier: rows with an ``image`` column -> ``(label, confidence)`` per row."""

    key = ""

    def __init__(self) -> None:
        import torch

        import cloudflow_nb as cf

        self.torch = torch
        self.device = cf.device()
        self.model = _linear() if self.key == "linear" else _cnn()
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)[self.key]
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()

    def __call__(self, rows: list[Any]) -> list[tuple[int, float]]:
        torch = self.torch
        batch = torch.from_numpy(np.stack([r["image"] for r in rows]).astype(np.float32)).unsqueeze(1)
        with torch.inference_mode():
            probs = torch.softmax(self.model(batch.to(self.device)), dim=1).cpu()
        conf, label = probs.max(dim=1)
        return [(int(lab), float(c)) for lab, c in zip(label, conf, strict=True)]


class LinearDigits(_DigitModel):
    """The cheap model: a linear classifier (about 95% accurate)."""

    key = "linear"


class CnnDigits(_DigitModel):
    """The expensive model: a small CNN (about 98% accurate)."""

    key = "cnn"
