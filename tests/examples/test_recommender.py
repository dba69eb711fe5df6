"""The recommender pipeline: its top 5 equal a brute-force numpy ranking, locally and deployed."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import cloudflow_nb as cf
from cloudflow_nb.examples import movielens, recommender

DATA = recommender.DATA


@pytest.fixture(scope="module")
def stores() -> dict[str, dict[str, Any]]:
    """Each variant's small store (MovieLens is fetched and factorised on first use, then cached)."""
    return {data: recommender.store_data(small=True, data=data) for data in DATA}


@pytest.fixture(scope="module")
def cluster(stores: dict[str, dict[str, Any]]) -> Iterator[Any]:
    """Two CPU worker processes whose store holds both variants, each key its own entry, on one
    worker only (so a lookup is local on one worker and remote on the other)."""
    with cf.LocalCluster(workers=2, gpu_workers=0, dashboard=False) as cluster:
        cluster.store.replicas = 1
        for contents in stores.values():
            cluster.store.update(contents)
        yield cluster


def brute_force(store: dict[str, Any], data: str, request: dict[str, Any]) -> list[int]:
    """Score every item of the request's category with plain numpy and sort them all."""
    if data == "movielens":
        genre = movielens.GENRES[store["movielens:item-genre"][request["recent"][-1]]]
        ids, matrix = store[f"movielens:genre:{genre}"]
        vector = store[f"movielens:user:{request['user']}"]
    else:
        ids, matrix = store[f"category:{sum(request['recent']) % recommender.SMALL.categories}"]
        vector = store[f"user:{request['user']}"]
    scores = np.array([float(np.dot(item, vector)) for item in matrix])
    return [int(ids[i]) for i in np.argsort(-scores, kind="stable")[: recommender.TOP]]


@pytest.mark.parametrize("data", DATA)
def test_local_top_five_equal_a_brute_force_ranking(data, stores):
    requests = recommender.requests(20, seed=1, data=data)
    out = recommender.flow(data=data).run(requests, store=stores[data])
    assert len(out) == 20
    for request, row in zip(requests, out, strict=True):
        assert row["items"] == brute_force(stores[data], data, request)


@pytest.mark.cluster
@pytest.mark.parametrize("data", DATA)
def test_deployed_top_five_equal_a_brute_force_ranking(data, stores, cluster):
    requests = recommender.requests(12, seed=2, data=data)
    expected = [brute_force(stores[data], data, r) for r in requests]
    for options in (cf.Optimize(), False):
        with cluster.deploy(recommender.flow(data=data), optimize=options) as dep:
            one_by_one = [dep.predict(r, timeout=60)[0]["items"] for r in requests]
            together = dep.predict(requests, timeout=60).column("items")
        assert one_by_one == expected
        assert together == expected


@pytest.mark.cluster
def test_scoring_runs_on_the_worker_holding_the_categorys_matrix(cluster):
    requests = [r for r in recommender.requests(40, seed=3) if sum(r["recent"]) % recommender.SMALL.categories == 1]
    with cluster.deploy(recommender.flow()) as dep:
        for request in requests:
            dep.predict(request, timeout=60)
        scoring = dep.stats()["stages"]["lookup-top_items"]
    calls = {replica["worker"]: replica["calls"] for replica in scoring["replicas"]}
    assert calls[cluster.store.location("category:1")] == len(requests) > 0


@pytest.mark.cluster
def test_an_unknown_user_is_a_missing_key_locally_and_deployed(stores, cluster):
    flow = recommender.flow()
    request = {"user": 10**6, "recent": [1, 2, 3, 4, 5]}
    with pytest.raises(cf.MissingKeyError, match="'user:1000000'"):
        flow.run(request, store=stores["synthetic"])
    with cluster.deploy(flow) as dep:
        with pytest.raises(cf.MissingKeyError, match="'user:1000000'"):
            dep.predict(request, timeout=60)
        assert dep.predict(recommender.requests(1)[0], timeout=60)[0]["items"]  # other requests still served


@pytest.mark.parametrize("data", DATA)
def test_the_plan_splits_at_both_lookups_and_routes_each_half_to_its_key(data):
    flow = recommender.flow(data=data)
    plan = flow.optimize()
    assert [s.locality for s in plan.stages] == [None, "user_key", "category"]
    text = flow.explain()
    assert "near store[category]" in text
    assert "runs on a worker holding store[row['category']] (dynamic dispatch" in text
    assert [s.locality for s in flow.optimize(cf.Optimize(locality=False)).stages if s.locality] == []


def test_the_synthetic_store_has_the_papers_shapes():
    store = recommender.store_data(small=True)
    ids, matrix = store["category:0"]
    assert matrix.shape == (2500, 512)
    assert matrix.dtype == np.float32
    assert store["user:0"].shape == (512,)
    assert sum(k.startswith("category:") for k in store) == recommender.SMALL.categories
    assert sum(k.startswith("user:") for k in store) == recommender.SMALL.users
    assert list(ids[:2]) == [0, 1]


def test_bad_options_name_the_valid_choices():
    with pytest.raises(cf.SchemaError, match=r"unknown data 'netflix' \(must be one of 'synthetic', 'movielens'\)"):
        recommender.flow(data="netflix")


def test_movielens_requests_are_real_users_and_their_latest_movies(stores):
    titles = movielens.movie_titles()
    assert titles[1] == "Toy Story (1995)"
    for request in recommender.requests(5, data="movielens"):
        assert f"movielens:user:{request['user']}" in stores["movielens"]
        assert len(request["recent"]) == 5
        assert all(m in titles for m in request["recent"])


def test_als_recovers_a_low_rank_matrix():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40))
    rows, cols = np.nonzero(rng.random(truth.shape) < 0.6)
    values = truth[rows, cols] + 3.0
    u, v = movielens.als(rows, cols, values, 60, 40, factors=3, sweeps=30, regularization=0.001)
    fitted = np.sum(u[rows] * v[cols], axis=1) + values.mean()
    assert np.sqrt(np.mean((fitted - values) ** 2)) < 0.05 * values.std()


def test_full_size_requests_reach_the_full_stores_users():
    users = {r["user"] for r in recommender.requests(200, small=False)}
    assert max(users) >= recommender.SMALL.users
    assert max(users) < recommender.FULL.users


def test_an_unknown_movie_fails_only_its_request(stores):
    flow = recommender.flow(data="movielens")
    with pytest.raises(cf.OperatorError, match="unknown movie id 99999"):
        flow.run({"user": 1, "recent": [1, 99999]}, store=stores["movielens"])
    assert len(flow.run({"user": 1, "recent": [1, 2]}, store=stores["movielens"])[0]["items"]) == 5
