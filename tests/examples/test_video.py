"""The video pipeline on real frames of vtest.avi: people found, crops labelled, engines agree."""

from __future__ import annotations

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.examples import imagenet, video

HEIGHT, WIDTH = 576, 768


@pytest.fixture(scope="module")
def clip() -> dict:
    """One real request: three consecutive full-size frames."""
    return video.requests(1, seed=3, frames=3)[0]


@pytest.fixture(scope="module")
def result(clip) -> cf.Table:
    return video.flow().run(clip)


def test_requests_are_consecutive_real_frames():
    first, second = video.requests(2, seed=5, frames=4)
    again = video.requests(1, seed=5, frames=4)[0]
    for request in (first, second):
        frames = request["frames"]
        assert frames.shape == (4, HEIGHT, WIDTH, 3)
        assert frames.dtype == np.uint8
        assert frames.std() > 20  # real pictures, not blank frames
        assert 0 < np.abs(frames[1].astype(int) - frames[0]).mean() < 20  # consecutive: close but not equal
    assert np.array_equal(first["frames"], again["frames"])  # seeded
    small = video.requests(1, frames=2, scale=0.5)[0]["frames"]
    assert small.shape == (2, HEIGHT // 2, WIDTH // 2, 3)


def test_people_are_found_with_sane_boxes(clip, result):
    assert result.columns == ("qid", "frame", "box", "kind", "score", "crop", "label", "conf")
    assert len(result) >= 3, "vtest.avi shows several pedestrians in every frame"
    assert {r["frame"] for r in result} == {0, 1, 2}
    assert [r["qid"] for r in result] == list(range(len(result)))
    for r in result:
        x, y, w, h = r["box"]
        assert min(x, y) >= 0, r["box"]
        assert x + w <= WIDTH, r["box"]
        assert y + h <= HEIGHT, r["box"]
        assert 1.5 <= h / w <= 2.5, f"not people-shaped: {r['box']}"
        assert 64 <= h <= HEIGHT, f"not people-sized: {r['box']}"
        assert r["kind"] == "person"
        assert r["score"] >= video.PeopleDetector.min_score
        assert r["crop"].dtype == np.uint8
        assert r["crop"].shape == (max(1, 3 * h // 4), w, 3)
        assert np.array_equal(r["crop"], clip["frames"][r["frame"]][y : y + r["crop"].shape[0], x : x + w])


def test_crops_get_imagenet_labels(result):
    names = set(imagenet.class_names())
    assert all(r["label"] in names and 0 < r["conf"] <= 1 for r in result)


def test_a_list_of_frames_is_the_same_request(clip, result):
    as_list = video.flow().run({"frames": list(clip["frames"])})
    assert [(r["frame"], r["box"], r["label"]) for r in as_list] == [(r["frame"], r["box"], r["label"]) for r in result]


FRAME = np.zeros((64, 64, 3), np.uint8)


@pytest.mark.parametrize(
    ("frames", "words"),
    [
        ("clip.avi", ["'frames'", "list or an array", "str"]),
        (7, ["'frames'", "int"]),
        ([], ["'frames'", "empty list"]),
        (np.zeros((0, 64, 64, 3), np.uint8), ["'frames'", "no pixels"]),
        (np.zeros((2, 64, 64, 3), np.float32), ["'frames'", "uint8", "'float32'"]),
        (np.zeros((64, 64, 3), np.uint8), ["'frames'", "(frames, height, width, 3)", "(64, 64, 3)"]),
        ([FRAME, "frame"], ["frame 1", "str"]),
        ([FRAME, np.zeros((32, 32, 3), np.uint8)], ["one shape"]),
        ([FRAME] * (video.MAX_FRAMES + 1), ["more than the 300"]),
    ],
)
def test_bad_input_gives_a_clear_flow_error(frames, words):
    with pytest.raises(cf.FlowError) as info:
        video.flow().run({"frames": frames})
    assert isinstance(info.value, cf.SchemaError)
    for word in ["map 'check_frames'", *words]:
        assert word in str(info.value)


def test_unknown_model_lists_the_choices():
    with pytest.raises(cf.SchemaError, match=r"unknown model 'yolo' \(must be one of mobilenet_v2, resnet101\)"):
        video.flow(model="yolo")
    assert video.flow(model="resnet101").columns == video.flow().columns


@pytest.mark.cluster
@pytest.mark.slow
def test_deployed_unoptimized_and_optimized_agree_with_the_local_engine(serving_cluster, clip, result):
    expected = [(r["frame"], r["box"], r["label"]) for r in result]
    for options in (False, cf.Optimize()):
        with serving_cluster.deploy(video.flow(), optimize=options, timeout=300) as dep:
            served = dep.predict(clip)
        assert [(r["frame"], r["box"], r["label"]) for r in served] == expected
        assert np.allclose([r["conf"] for r in served], [r["conf"] for r in result], atol=1e-4)
