"""The example flows the golden files render: the paper's pipelines, with stand-in models."""

from __future__ import annotations

import cloudflow_nb as cf

__all__ = ["cascade", "chain", "nmt", "racing_router", "recommender", "video"]


def preprocess(row):
    return row["img"]


def resnet(rows):
    return [(1, 0.9) for _ in rows]


def inception(row):
    return (2, 0.95)


def unsure(row):
    return row["conf"] < 0.85


def pick_best(row):
    return row["label"] if row["label2"] is None else row["label2"]


def cascade() -> cf.Flow:
    """Image cascade: preprocess -> ResNet (gpu, batching) -> unsure? -> Inception, left-joined back."""
    flow = cf.Flow("cascade", img=bytes)
    top = flow.map(preprocess, names={"img": bytes}).map(
        resnet, names={"label": int, "conf": float}, gpu=True, batching=True, name="resnet"
    )
    low = top.filter(unsure).map(inception, names={"label2": int, "conf2": float}, gpu=True)
    return top.join(low, how="left").map(pick_best, names={"label": int})


def language(rows):
    return ["fr" for _ in rows]


def is_fr(row):
    return row["lang"] == "fr"


def is_de(row):
    return row["lang"] == "de"


def translate_fr(row):
    return "bonjour"


def translate_de(row):
    return "hallo"


def nmt() -> cf.Flow:
    """Translation: batched language id, then two racing translators, outer-joined."""
    flow = cf.Flow("nmt", text=str).map(language, names={"lang": str}, batching=True)
    fr = flow.filter(is_fr).map(translate_fr, names={"fr": str}, high_variance=True)
    de = flow.filter(is_de).map(translate_de, names={"de": str}, high_variance=True)
    return fr.join(de, how="outer")


def category(row):
    return f"cat:{row['recent'] % 3}"


def top5(row):
    return [0, 1, 2, 3, 4]


def recommender() -> cf.Flow:
    """Recommender: user vector and category products by dynamic lookups (dynamic dispatch)."""
    flow = cf.Flow("recommender", user=str, recent=int)
    users = flow.lookup("user", dynamic=True, into="uvec")
    cats = users.map(category, names={"category": str}).lookup("category", dynamic=True, into="products")
    return cats.map(top5, names={"top": list})


def detect(row):
    return "person"


def is_person(row):
    return row["cls"] == "person"


def is_car(row):
    return row["cls"] == "car"


def video() -> cf.Flow:
    """Video: detection, then a classifier per class, outer-joined (run whole=True in the paper)."""
    flow = cf.Flow("video", frame=bytes).map(detect, names={"cls": str}, gpu=True)
    people = flow.filter(is_person).map(resnet, names={"who": int, "p": float}, gpu=True, batching=True, name="people")
    cars = flow.filter(is_car).map(resnet, names={"make": int, "q": float}, gpu=True, batching=True, name="cars")
    return people.join(cars, how="outer")


def fast(row):
    return row["x"] + 1


def slow(row):
    return row["x"] + 1


def racing_router() -> cf.Flow:
    """Two models behind an anyof router, the slow one high-variance."""
    flow = cf.Flow("router", x=int)
    a = flow.map(fast, names={"y": int})
    b = flow.map(slow, names={"y": int}, high_variance=True)
    return a.anyof(b).map(fast, names={"z": int}, name="after")


def step(row):
    return row["x"] + 1


def chain(length: int) -> cf.Flow:
    """``length`` maps in a row, named ``m1`` ... ``mN``."""
    flow = cf.Flow("chain", x=int)
    for i in range(1, length + 1):
        flow = flow.map(step, names={"x": int}, name=f"m{i}")
    return flow
