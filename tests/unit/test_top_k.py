"""The postprocess's top-k ranks exactly as the full stable sort it replaces, ties and all."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from models.image_pipeline import top_k_stable


def stable_sort_top_k(values: NDArray[np.float64], k: int) -> NDArray[np.intp]:
    return np.argsort(-values, axis=1, kind="stable")[:, :k]


def rows(kind: str, rng: np.random.Generator) -> NDArray[np.float64]:
    shape = (int(rng.integers(1, 20)), int(rng.integers(1, 60)))
    if kind == "distinct":
        return rng.normal(size=shape)
    if kind == "few values":  # ties at the k-th value, inside and outside the top k
        return rng.integers(0, 4, size=shape).astype(np.float64)
    if kind == "all equal":
        return np.zeros(shape)
    values = rng.integers(0, 3, size=shape).astype(np.float64)
    values[rng.random(shape) < 0.1] = np.inf
    values[rng.random(shape) < 0.1] = -np.inf
    if kind == "nan":
        values[rng.random(shape) < 0.1] = np.nan
    return values


@pytest.mark.parametrize("kind", ["distinct", "few values", "all equal", "infinite", "nan"])
def test_the_top_k_equals_the_stable_sorts_first_k(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    for _ in range(300):
        values = rows(kind, rng)
        k = int(rng.integers(1, values.shape[1] + 3))  # also k >= the row's length
        np.testing.assert_array_equal(top_k_stable(values, k), stable_sort_top_k(values, k))


def test_the_classifier_sized_top_5_breaks_ties_by_class_index() -> None:
    logits = np.random.default_rng(3).normal(size=(16, 1000))
    logits[2, 40:50] = 9.0  # ten classes tie for first place: the five lowest win, in order
    logits[5, [999, 7, 500]] = 9.0
    top = top_k_stable(logits, 5)
    np.testing.assert_array_equal(top, stable_sort_top_k(logits, 5))
    assert top[2].tolist() == [40, 41, 42, 43, 44] and top[5, :3].tolist() == [7, 500, 999]
