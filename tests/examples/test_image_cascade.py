"""The real image cascade: real photos get real ImageNet labels, on both engines."""

from __future__ import annotations

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.examples import image_cascade, imagenet
from cloudflow_nb.examples.assets import AssetError

CATS = {"Egyptian cat", "tabby", "tiger cat", "Persian cat", "Siamese cat"}


@pytest.fixture(scope="module", autouse=True)
def _assets() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        image_cascade.setup()
    except AssetError as exc:
        pytest.skip(f"the ImageNet weights or class names could not be fetched: {exc}")


@pytest.fixture(scope="module")
def cascade() -> cf.Flow:
    return image_cascade.flow(small=True)


def test_real_photos_get_real_labels(run, cascade: cf.Flow) -> None:
    photos = image_cascade.photos()
    cat, coffee = run(cascade, [{"image": photos["chelsea"]}, {"image": photos["coffee"]}])
    assert cat["label"] in CATS
    assert 0.5 < cat["conf"] < image_cascade.THRESHOLD
    assert cat["model"] == "mobilenet_v2"
    assert cat["label2"] is not None  # unsure, so the expensive model ran too (and lost)
    assert cat["conf2"] < 0.01
    assert coffee["label"] == "espresso"
    assert coffee["conf"] > image_cascade.THRESHOLD
    assert coffee["label2"] is None  # confident: the expensive model never saw it


@pytest.mark.parametrize(
    ("image", "problem"),
    [(np.zeros((32, 32), np.uint8), "shape (32, 32)"), (np.zeros((32, 32, 3), np.float32), "dtype 'float32'")],
)
def test_bad_image_names_operator_and_column(run, cascade: cf.Flow, image: np.ndarray, problem: str) -> None:
    with pytest.raises(cf.FlowError) as info:
        run(cascade, {"image": image})
    message = str(info.value)
    assert "map 'preprocess'" in message
    assert "column 'image'" in message
    assert problem in message


def test_a_failing_request_fails_only_itself(cascade: cf.Flow) -> None:
    good = cascade.run({"image": image_cascade.photos()["coffee"]})
    with pytest.raises(cf.SchemaError):
        cascade.run({"image": np.zeros((4, 4, 4), np.uint8)})
    assert cascade.run({"image": image_cascade.photos()["coffee"]})[0]["label"] == good[0]["label"]


def test_flow_options_are_checked() -> None:
    with pytest.raises(cf.SchemaError, match=r"unknown expensive model 'inception'.*resnet101, resnet50"):
        image_cascade.flow(expensive="inception")
    with pytest.raises(cf.SchemaError, match=r"threshold must be between 0 and 1, got 1\.5"):
        image_cascade.flow(threshold=1.5)


def test_threshold_zero_never_calls_the_expensive_model() -> None:
    rows = image_cascade.flow(threshold=0.0, small=True).run(image_cascade.requests(3))
    assert all(row["label2"] is None and row["model"] == "mobilenet_v2" for row in rows)


def test_requests_are_real_photos_in_a_seeded_order() -> None:
    first, again, other = image_cascade.requests(9), image_cascade.requests(9), image_cascade.requests(9, seed=1)
    assert [r["image"] is s["image"] for r, s in zip(first, again, strict=True)] == [True] * 9
    assert any(r["image"] is not s["image"] for r, s in zip(first, other, strict=True))
    assert {id(r["image"]) for r in first} <= {id(p) for p in image_cascade.photos().values()}
    assert all(r["image"].dtype == np.uint8 and r["image"].shape[2] == 3 for r in first)


def test_pick_best_keeps_the_more_confident_answer() -> None:
    assert image_cascade.pick_best({"label": "a", "conf": 0.5, "label2": None, "conf2": None}) == (
        "a",
        0.5,
        "mobilenet_v2",
    )
    assert image_cascade.pick_best({"label": "a", "conf": 0.5, "label2": "b", "conf2": 0.9}, "x") == ("b", 0.9, "x")
    assert image_cascade.pick_best({"label": "a", "conf": 0.5, "label2": "b", "conf2": 0.1}, "x")[0] == "a"


def test_models_have_torchvisions_shapes_and_names() -> None:
    counts = {"mobilenet_v2": 3_504_872, "resnet50": 25_557_032, "resnet101": 44_549_160}
    models = {"mobilenet_v2": imagenet.mobilenet_v2(weights=False), "resnet50": imagenet.resnet(50)}
    models["resnet101"] = imagenet.resnet(101)
    for name, model in models.items():
        assert sum(p.numel() for p in model.parameters()) == counts[name], name
    assert {"features.18.0.weight", "features.2.conv.3.running_var", "classifier.1.bias"} <= set(
        models["mobilenet_v2"].state_dict()
    )
    assert {"layer3.22.conv3.weight", "layer4.0.downsample.1.weight", "fc.weight"} <= set(
        models["resnet101"].state_dict()
    )
    assert len(imagenet.class_names()) == 1000
    assert imagenet.class_names()[967] == "espresso"


@pytest.mark.parametrize("shape", [(300, 451, 3), (640, 200, 3), (10, 12, 3)])
def test_crop_gives_224_pixels(shape: tuple[int, int, int]) -> None:
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    pixels = imagenet.crop(image)
    assert pixels.shape == (224, 224, 3)
    assert pixels.dtype == np.uint8


def test_random_resnet_is_never_confident() -> None:
    pixels = imagenet.crop(image_cascade.photos()["astronaut"])[None]
    ((_, conf),) = imagenet.classify(imagenet.resnet(50, seed=3), pixels)
    assert conf < 0.01


def test_classifier_operator_checks_its_column() -> None:
    classifier = imagenet.MobileNetV2()
    assert classifier([]) == []
    with pytest.raises(cf.SchemaError, match=r"map 'MobileNetV2': column 'pixels' must be a 224x224x3 uint8 array"):
        classifier([{"pixels": np.zeros((3, 3, 3), np.uint8)}])
