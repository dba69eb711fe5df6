"""The paper's video-stream pipeline on a real pedestrian video: detect people, classify the crops.

A request is one clip: ``{"frames": ...}``, a list or an array of HxWx3 uint8 RGB frames (the
paper sends 30). The flow checks the clip, finds people in every frame, makes one row per
detection (``explode``), and classifies each person's crop with the ImageNet model. The result
has one row per detection: ``frame`` (its index in the clip), ``box`` (``x, y, w, h`` in pixels,
inside the frame), ``kind``, ``score``, ``crop`` (the person's box, head to knees) and the crop's
ImageNet ``label`` and ``conf``.

What is real and what stands in for the paper's parts:

* Frames: ``vtest.avi`` from Debian's ``opencv-doc`` (768x576, 795 frames at 10 fps, people
  walking), fetched and sha256-checked on first use, decoded with OpenCV.
* Detector: OpenCV's HOG people detector (the paper uses YOLOv3; no YOLO or COCO weights install
  offline). It runs on the CPU, about 200 ms per full frame on one core, so 30 frames cost about
  6 s; ``requests(frames=...)`` and ``scale=`` make clips shorter or smaller (below about 0.75,
  people shrink under HOG's 64x128 window and recall collapses).
* Classifier: MobileNetV2 with torchvision's real ImageNet weights (``model="mobilenet_v2"``),
  batching, on GPU workers, as the paper places its ResNet-101. ImageNet has no "person" class,
  so a pedestrian's crop is labelled by what dominates it (``jean``, ``trench coat``, ...).
  ``model="resnet101"`` runs the paper's ResNet-101 with RANDOM weights: its cost is faithful,
  its labels mean nothing.
* Serving: a 30-frame clip keeps one detector replica busy for several seconds, so deploy
  with a ``timeout`` well above that (``cluster.deploy(video.flow(), timeout=600)``); it also
  bounds how long one call may run before its replica counts as hung.
* One branch, not two: the paper filters YOLO's detections into a person branch and a car branch
  and joins them (outer). No real car detector works offline here (HOG finds people only; the
  parked cars in this video do not move, so motion does not find them either), and a branch
  that never receives a row would only show the plan's shape. ``kind`` is kept on every row so
  a second detector's rows can be filtered into their own branch and joined the paper's way.

Examples
--------
>>> from cloudflow_nb.examples import video
>>> flow = video.flow()
>>> flow.columns
('qid', 'frame', 'box', 'kind', 'score', 'crop', 'label', 'conf')
>>> rows = flow.run(video.requests(1, frames=2)[0])  # doctest: +SKIP
>>> [(r["frame"], r["box"], r["label"]) for r in rows][:2]  # doctest: +SKIP
[(0, (453, 146, 68, 135), 'solar dish'), (0, (491, 238, 70, 140), 'sweatshirt')]
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.errors import SchemaError
from cloudflow_nb.examples import imagenet
from cloudflow_nb.examples.assets import Asset, fetch

__all__ = [
    "MAX_FRAMES",
    "MODELS",
    "SUBSTITUTIONS",
    "VIDEO",
    "CropClassifier",
    "PeopleDetector",
    "check_frames",
    "flow",
    "person_crop",
    "read_frames",
    "requests",
]

VIDEO = Asset(
    "vtest.avi",
    "45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf",
    "debian:opencv-doc",
    "usr/share/doc/opencv-doc/examples/data/vtest.avi",
)
VIDEO_FRAMES = 795
SUBSTITUTIONS = (
    "detector: OpenCV's HOG people detector (the paper: YOLOv3; no car branch, no car detector works offline); "
    "crops: MobileNetV2 with real ImageNet weights (the paper: ResNet-101); frames: vtest.avi from Debian's opencv-doc"
)
MAX_FRAMES = 300
"""The most frames one request may carry (the paper sends 30)."""
MAX_SIDE = 4096
"""The largest frame height or width accepted."""

_decode_lock = threading.Lock()


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:
        raise cf.FlowError(
            "the video example needs OpenCV 4 (5.x has no HOG people detector): "
            "pip install 'opencv-python-headless>=4.9,<5'"
        ) from exc
    if not hasattr(cv2, "HOGDescriptor"):
        raise cf.FlowError(
            f"OpenCV {cv2.__version__} has no HOG people detector (5.x removed it): "
            "pip install 'opencv-python-headless>=4.9,<5'"
        )
    return cv2


# -- data ---------------------------------------------------------------------------------------


def read_frames(indices: list[int], scale: float = 1.0) -> dict[int, np.ndarray]:
    """Frames of ``vtest.avi`` by index, as HxWx3 uint8 RGB arrays, resized by ``scale``."""
    if not 0 < scale <= 1:
        raise SchemaError(f"video: scale must be in (0, 1], got {scale!r}")
    wanted = set(indices)
    bad = sorted(i for i in wanted if not 0 <= i < VIDEO_FRAMES)
    if bad:
        raise SchemaError(f"video: frame {bad[0]!r} is not in vtest.avi (it has {VIDEO_FRAMES} frames)")
    cv2 = _cv2()
    out: dict[int, np.ndarray] = {}
    with _decode_lock:
        capture = cv2.VideoCapture(str(fetch(VIDEO)))
        try:
            for index in range(max(wanted, default=-1) + 1):
                ok, bgr = capture.read()
                if not ok:
                    raise cf.FlowError(f"video: could not decode frame {index} of {VIDEO.name}")
                if index in wanted:
                    if scale != 1:
                        bgr = cv2.resize(bgr, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                    out[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
    return out


def requests(n: int, seed: int = 0, frames: int = 30, scale: float = 1.0) -> list[dict[str, Any]]:
    """``n`` requests, each a clip of ``frames`` consecutive real frames of ``vtest.avi``.

    Clips start at seeded random offsets; a request is ``{"frames": array}`` with shape
    ``(frames, H, W, 3)``, uint8 RGB, 576x768 at ``scale=1``. Clips that overlap share memory.
    """
    if not 1 <= frames <= min(MAX_FRAMES, VIDEO_FRAMES):
        raise SchemaError(
            f"video.requests: frames must be between 1 and {min(MAX_FRAMES, VIDEO_FRAMES)}, got {frames!r}"
        )
    starts = np.random.default_rng(seed).integers(0, VIDEO_FRAMES - frames + 1, size=n).tolist()
    decoded = read_frames([s + i for s in starts for i in range(frames)], scale)
    return [{"frames": np.stack([decoded[s + i] for i in range(frames)])} for s in starts]


def check_frames(row: Any) -> np.ndarray:
    """Map operator: the request's ``frames`` as one NxHxWx3 uint8 array, else a clear ``SchemaError``."""
    value = row["frames"]
    where = "map 'check_frames': column 'frames'"
    if isinstance(value, (list, tuple)):
        if not value:
            raise SchemaError(f"{where} is an empty list; send at least one HxWx3 uint8 RGB frame")
        for i, frame in enumerate(value):
            if not isinstance(frame, np.ndarray):
                raise SchemaError(f"{where}: frame {i} must be an HxWx3 uint8 RGB array, got {type(frame).__name__}")
        shapes = {frame.shape for frame in value}
        if len(shapes) > 1:
            raise SchemaError(f"{where}: frames must all have one shape, got {sorted(shapes)!r}")
        if len(value) > MAX_FRAMES:
            raise SchemaError(f"{where}: {len(value)} frames is more than the {MAX_FRAMES} a request may carry")
        value = np.stack(value)
    elif not isinstance(value, np.ndarray):
        raise SchemaError(
            f"{where} must be a list or an array of HxWx3 uint8 RGB frames, got {type(value).__name__} {value!r:.40}"
        )
    if value.ndim != 4 or value.shape[3] != 3:
        raise SchemaError(f"{where} must have shape (frames, height, width, 3), got {value.shape!r}")
    if value.dtype != np.uint8:
        raise SchemaError(f"{where} must hold uint8 RGB pixels, got dtype {str(value.dtype)!r}")
    if len(value) == 0 or min(value.shape[1:3]) == 0:
        raise SchemaError(f"{where} holds no pixels (shape {value.shape!r}); send at least one frame")
    if len(value) > MAX_FRAMES or max(value.shape[1:3]) > MAX_SIDE:
        raise SchemaError(
            f"{where}: shape {value.shape!r} exceeds the limits "
            f"({MAX_FRAMES} frames of at most {MAX_SIDE} pixels a side)"
        )
    return value


# -- detection ----------------------------------------------------------------------------------


def person_crop(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The top three quarters of ``box`` (head to knees), what gets classified.

    ImageNet has no "person" class; cut at the knees, a pedestrian's crop shows the clothing
    classes it does have (``trench coat``, ``abaya``, ``jean``...) instead of legs and pavement.
    """
    x, y, w, h = box
    return np.ascontiguousarray(frame[y : y + max(1, (3 * h) // 4), x : x + w])


def _clip(box: Any, height: int, width: int) -> tuple[int, int, int, int]:
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return x0, y0, x1 - x0, y1 - y0


class PeopleDetector:
    """Map operator: every person in every frame, by OpenCV's HOG people detector.

    Built once per replica. It returns, per clip, a list of ``(frame, box, kind, score, crop)``
    with ``box = (x, y, w, h)`` inside the frame and ``crop`` from ``person_crop``. Subclasses
    may change ``min_score`` (the SVM margin a detection needs), ``stride`` or ``pyramid``
    (the detector's window stride and scale step: larger is faster and finds fewer people).
    """

    min_score = 1.0
    stride = 8
    pyramid = 1.05
    threads: int | None = 1

    def __init__(self) -> None:
        self.cv2 = _cv2()
        if self.threads is not None:
            self.cv2.setNumThreads(self.threads)
        self.hog = self.cv2.HOGDescriptor()
        self.hog.setSVMDetector(self.cv2.HOGDescriptor_getDefaultPeopleDetector())

    def __call__(self, row: Any) -> list[tuple[int, tuple[int, int, int, int], str, float, np.ndarray]]:
        found = []
        for index, frame in enumerate(row["frames"]):
            height, width = frame.shape[:2]
            boxes, scores = self.hog.detectMultiScale(
                frame, winStride=(self.stride, self.stride), padding=(8, 8), scale=self.pyramid
            )
            for raw, score in zip(boxes, np.ravel(scores), strict=True):
                box = _clip(raw, height, width)
                if score >= self.min_score and box[2] > 0 and box[3] > 0:
                    found.append((index, box, "person", float(score), person_crop(frame, box)))
        return found


# -- classification -----------------------------------------------------------------------------


class CropClassifier(imagenet.ImageNetClassifier):
    """Batching map operator: each row's ``crop`` resized and center-cropped (``imagenet.crop``),
    then classified; ``(label, conf)`` per row. MobileNetV2 with real ImageNet weights."""

    model_name = "mobilenet_v2"
    column = "crop"

    def __call__(self, rows: list[Any]) -> list[tuple[str, float]]:
        if not rows:
            return []
        pixels = np.stack([imagenet.crop(row[self.column]) for row in rows])
        return imagenet.classify(self.model, pixels, self.device)


class ResNet101CropClassifier(CropClassifier):
    """The paper's ResNet-101 on the crops, with RANDOM weights: faithful cost, meaningless labels."""

    model_name = "resnet101"


MODELS = {"mobilenet_v2": CropClassifier, "resnet101": ResNet101CropClassifier}
"""The crop classifiers ``flow(model=...)`` accepts."""


def flow(model: str = "mobilenet_v2", detector: type = PeopleDetector) -> cf.Flow:
    """The video pipeline: ``frames`` in, one row per detected person out.

    Parameters
    ----------
    model : str
        The crop classifier: ``"mobilenet_v2"`` (real weights) or ``"resnet101"`` (random weights).
    detector : type
        The detection operator (``PeopleDetector`` or a subclass with other settings).
    """
    if model not in MODELS:
        raise SchemaError(f"video.flow: unknown model {model!r} (must be one of {', '.join(MODELS)})")
    clip = cf.Flow("video", frames=object).map(check_frames, names={"frames": np.ndarray})
    detections = clip.map(detector, names={"detections": list}, name="detect_people")
    people = detections.explode(
        "detections",
        names={"frame": int, "box": tuple, "kind": str, "score": float, "crop": np.ndarray},
        keep=(),
    )
    return people.map(MODELS[model], names={"label": str, "conf": float}, batching=True, gpu=True, name="classify")
