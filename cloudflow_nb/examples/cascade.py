"""The paper's image cascade on real digit models.

A cheap model labels every image; images it is unsure of (confidence below ``threshold``) also
go to an expensive model on a GPU worker; a final step keeps the more confident answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.examples.digits import CnnDigits, LinearDigits

__all__ = ["cascade_flow"]


def check_image(row: Any) -> np.ndarray:
    """Validate and normalize one 8x8 image to float32 in [0, 1]."""
    image = np.asarray(row["image"], dtype=np.float32)
    if image.shape != (8, 8):
        raise ValueError(f"expected an 8x8 image, got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


def pick_best(row: Any) -> tuple[int, str]:
    """The expensive model's answer when it ran and is more confident, else the cheap one's."""
    if row["label2"] is not None and row["conf2"] > row["conf"]:
        return row["label2"], "cnn"
    return row["label"], "linear"


def cascade_flow(threshold: float = 0.85) -> cf.Flow:
    """Build the cascade: ``image`` in, ``answer`` and the ``model`` that gave it out."""
    flow = cf.Flow("digits-cascade", image=np.ndarray)
    images = flow.map(check_image, names={"image": np.ndarray})
    cheap = images.map(LinearDigits, names={"label": int, "conf": float}, batching=True)
    unsure = cheap.filter(lambda row: row["conf"] < threshold, name="unsure")
    expensive = unsure.map(CnnDigits, names={"label2": int, "conf2": float}, batching=True, gpu=True)
    return cheap.join(expensive, how="left").map(pick_best, names={"answer": int, "model": str})
