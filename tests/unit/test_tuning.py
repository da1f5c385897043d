"""The process tuning every ordermesh process applies."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ordermesh.tuning import GEN0_THRESHOLD, describe, tune_gc


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)
    gc.unfreeze()


def test_the_young_generation_threshold_is_raised_and_older_ones_kept() -> None:
    gc.set_threshold(700, 7, 9)
    tune_gc()
    assert gc.get_threshold() == (GEN0_THRESHOLD, 7, 9)
    assert gc.get_freeze_count() > 0 and f"{GEN0_THRESHOLD}/7/9" in describe()


def test_a_deliberate_choice_is_left_alone() -> None:
    gc.set_threshold(0)  # collection disabled on purpose
    tune_gc()
    assert gc.get_threshold()[0] == 0
    gc.set_threshold(50_000, 10, 10)  # already higher
    tune_gc()
    assert gc.get_threshold()[0] == 50_000
