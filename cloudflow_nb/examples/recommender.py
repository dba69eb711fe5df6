"""The paper's recommender pipeline: two dynamic lookups, then scoring, no neural model.

A request names a ``user`` and the ids of five things they saw ``recent``ly. The flow reads the
user's vector from the key-value store, works out the request's category, reads that category's
item matrix, scores every item against the user's vector and returns the best five ``items``.
Both lookups are dynamic (their key is computed mid-request), so the optimizer splits the plan
there and routes each half to a worker that holds the key: the paper's dynamic dispatch.

Two data sets, chosen with ``data=`` (pass the same options to :func:`flow`, :func:`store_data`
and :func:`requests`):

``"synthetic"`` (the paper's setup)
    512-d user vectors; per category a 2500x512 float32 item matrix (5.1 MB); the category of a
    request is ``sum(recent) % categories`` with ``recent`` five product-set ids in ``0..999``.
    The paper has 100,000 users and 1,000 categories (5.1 GB of matrices). ``small=False`` keeps
    10,000 users and 100 categories (512 MB); ``small=True`` (CI, notebooks) 100 users and 4
    categories (20 MB). Random vectors are faithful here: the pipeline has no model.
``"movielens"`` (real data)
    MovieLens-100K (943 users, 1,682 movies, 100,000 ratings), read from the ``recbole==1.2.1``
    wheel (fetched, never installed), factorised at set-up by ALS in numpy (32 factors, 10 sweeps;
    cached). Categories are the 19 genres; a request's category is the first listed genre of its
    most recent movie, and ``recent`` holds the user's five latest rated movies. A genre's items
    are its movies with at least 20 ratings (rarer movies have noisy factors). ``small`` has no
    effect: the whole data set is small.

Store keys: ``user:<id>`` (vector) and ``category:<c>`` (``(item ids, item matrix)``);
``movielens:user:<id>``, ``movielens:genre:<name>`` and ``movielens:item-genre`` (each movie's
genre index into :data:`cloudflow_nb.examples.movielens.GENRES`; titles from
:func:`~cloudflow_nb.examples.movielens.movie_titles`).

Examples
--------
Local runs read a dict:

>>> from cloudflow_nb.examples import recommender
>>> store = recommender.store_data(small=True)
>>> out = recommender.flow().run(recommender.requests(3), store=store)
>>> [len(items) for items in out.column("items")]
[5, 5, 5]

A cluster holds the same contents in its store, key by key (each key is placed, and replicated,
on its own workers; ``update`` sends them in one message per worker):

>>> with cf.LocalCluster() as cluster:  # doctest: +SKIP
...     cluster.store.update(recommender.store_data(small=True))
...     dep = cluster.deploy(recommender.flow())
...     dep.predict(recommender.requests(3))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

import cloudflow_nb as cf
from cloudflow_nb.examples.movielens import GENRES, movielens

__all__ = ["DATA", "SUBSTITUTIONS", "flow", "rank", "requests", "store_data"]

DATA = ("synthetic", "movielens")
DIM = 512  # the paper's user and item vector size
ITEMS = 2500  # items per category in the paper
TOP = 5
RECENT = 5  # recent ids per request
PRODUCT_SETS = 1000  # the paper's recent ids are product sets 0..999
MIN_RATINGS = 20  # MovieLens: a movie is recommended only with this many ratings (rarer: noisy factors)
SUBSTITUTIONS = (
    "no model (as in the paper); synthetic: random 512-d user vectors and 2500x512 float32 item matrices, "
    "100 users and 4 categories (small) or 10,000 users and 100 categories (full; the paper: 100,000 and 1,000); "
    "movielens: MovieLens-100K ratings from the recbole 1.2.1 wheel, ALS factors (k=32) computed at set-up"
)


@dataclass(frozen=True)
class Scale:
    """How much synthetic data: users and categories (each category holds ``ITEMS`` items)."""

    users: int
    categories: int


SMALL = Scale(users=100, categories=4)
FULL = Scale(users=10_000, categories=100)


# -- the flow ---------------------------------------------------------------------------------


def flow(data: str = "synthetic", small: bool = True) -> cf.Flow:
    """The recommender: ``user`` (int) and ``recent`` (list of ints) in, top-5 ``items`` out.

    Parameters
    ----------
    data : {"synthetic", "movielens"}
        Which store contents the flow reads (see the module docstring).
    small : bool
        Synthetic data only: the category count of ``store_data(small=...)``.
    """
    _check(data)
    prefix = "movielens:" if data == "movielens" else ""
    source = cf.Flow(f"recommender-{data}", user=int, recent=list)
    users = source.map(functools.partial(user_key, prefix=prefix), names={"user_key": str})
    users = users.lookup("user_key", dynamic=True, into="vector", type=np.ndarray)
    if data == "movielens":
        users = users.lookup("movielens:item-genre", into="item_genre", type=np.ndarray)
        categories = users.map(latest_genre, names={"category": str})
    else:
        count = _scale(small).categories
        categories = users.map(functools.partial(product_category, categories=count), names={"category": str})
    # the category's (ids, matrix) lands in ``items`` and the scorer replaces it by the top ids,
    # so the 5 MB matrix never travels back to the client
    scored = categories.lookup("category", dynamic=True, into="items", type=tuple)
    return scored.map(top_items, names={"items": list})


def user_key(row: Any, prefix: str = "") -> str:
    """The store key of the request's user vector."""
    return f"{prefix}user:{row['user']}"


def product_category(row: Any, categories: int) -> str:
    """The paper's category: the sum of the recent product-set ids, modulo the category count."""
    return f"category:{sum(int(i) for i in row['recent']) % categories}"


def latest_genre(row: Any) -> str:
    """MovieLens: the first genre of the request's most recent movie."""
    if not row["recent"]:
        raise ValueError("recent is empty: the category comes from the most recent movie")
    movie = int(row["recent"][-1])
    table = row["item_genre"]
    if not 0 < movie < len(table):
        raise ValueError(f"unknown movie id {movie!r} in recent (ids are 1..{len(table) - 1})")
    return f"movielens:genre:{GENRES[table[movie]]}"


def top_items(row: Any) -> list[int]:
    """Score the category's items against the user's vector; the best ``TOP`` item ids."""
    ids, matrix = row["items"]
    return rank(ids, matrix, row["vector"])


def rank(ids: np.ndarray, matrix: np.ndarray, vector: np.ndarray, top: int = TOP) -> list[int]:
    """The ``top`` ids of ``ids`` by ``matrix @ vector``, best first."""
    scores = matrix @ vector
    k = min(top, len(scores))
    best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(k)
    best = best[np.argsort(-scores[best], kind="stable")]
    return [int(i) for i in ids[best]]


# -- store contents and requests --------------------------------------------------------------


def store_data(small: bool = True, data: str = "synthetic", seed: int = 0) -> dict[str, Any]:
    """The store's contents for ``flow(data=data, small=small)``: key -> value.

    Local runs pass it as ``flow.run(request, store=...)``; clusters load it into
    ``cluster.store`` key by key. MovieLens is fetched and factorised on first use (cached).
    """
    _check(data)
    if data == "movielens":
        model = movielens()
        out: dict[str, Any] = {f"movielens:user:{u}": model.users[u] for u in range(1, len(model.users))}
        for g, name in enumerate(GENRES):
            ids = np.flatnonzero(model.genres[:, g] & (model.counts >= MIN_RATINGS))
            out[f"movielens:genre:{name}"] = (ids, model.items[ids])
        out["movielens:item-genre"] = model.first_genre
        return out
    scale = _scale(small)
    rng = np.random.default_rng(seed)
    out = {f"user:{u}": v for u, v in enumerate(_vectors(rng, scale.users))}
    for c in range(scale.categories):
        ids = np.arange(c * ITEMS, (c + 1) * ITEMS)
        out[f"category:{c}"] = (ids, _vectors(rng, ITEMS))
    return out


def requests(n: int, seed: int = 0, data: str = "synthetic", small: bool = True) -> list[dict[str, Any]]:
    """``n`` requests for ``flow(data=data, small=small)``: ``{"user": ..., "recent": [...]}``.

    Synthetic users are drawn from the users of ``store_data(small=small)``, ``recent`` from
    the paper's 1,000 product sets; MovieLens requests are real users with their five latest
    rated movies, oldest first.
    """
    _check(data)
    rng = np.random.default_rng(seed)
    if data == "movielens":
        model = movielens()
        users = rng.integers(1, len(model.users), size=n)
        return [{"user": int(u), "recent": [int(i) for i in model.recent[u]]} for u in users]
    users = rng.integers(0, _scale(small).users, size=n)
    recent = rng.integers(0, PRODUCT_SETS, size=(n, RECENT))
    return [{"user": int(u), "recent": [int(i) for i in r]} for u, r in zip(users, recent, strict=True)]


def _vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, DIM), dtype=np.float32) / np.float32(np.sqrt(DIM))


def _scale(small: bool) -> Scale:
    return SMALL if small else FULL


def _check(data: str) -> None:
    if data not in DATA:
        raise cf.SchemaError(f"recommender: unknown data {data!r} (must be one of {', '.join(map(repr, DATA))})")
