"""Competitive execution decisions, without Dask."""

from __future__ import annotations

from cloudflow_nb.runtime.racing import AllLost, Keep, Race, Win


def test_first_answer_wins_and_names_the_losers():
    race = Race(["a", "b", "c"])
    assert race.answered("b", "table-b") == Win("b", "table-b", ("a", "c"))
    assert race.answered("a", "table-a") == Keep()


def test_a_request_error_is_an_answer_too():
    race = Race(["a", "b"])
    error = ValueError("boom")
    assert race.answered("a", error) == Win("a", error, ("b",))


def test_losses_make_way_for_the_others():
    race = Race(["a", "b"])
    assert race.lost("a") == Keep()
    assert race.answered("b", 1) == Win("b", 1, ())


def test_all_lost():
    race = Race(["a", "b"])
    assert race.lost("b") == Keep()
    assert race.lost("a") == AllLost()
