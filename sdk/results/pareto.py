"""The Pareto front of latency against accuracy: the points no other point beats on both at once.

Pure and light (no numpy): the sweep report calls it on the cells it read back from the history, and the tests
on hand-made values.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

__all__ = ["pareto_front"]


def _finite(v) -> bool:
    # a boolean is an int to Python, and a crafted history can hold anything: only real finite numbers count
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def pareto_front(points: Sequence[tuple] | Iterable[tuple]) -> list[int]:
    """Indices of the points ``(latency, accuracy)`` on the Pareto front, fastest first.

    Lower latency and higher accuracy are better. A point is on the front when no other point is at least as
    good on both and strictly better on one. Equal points do not beat each other, so every copy of a point on
    the front is on it (in index order). A point whose latency or accuracy is missing (``None``), not a number,
    NaN or infinite is on no front; it is simply left out.
    """
    valid = [(x, y, i) for i, (x, y) in enumerate(points) if _finite(x) and _finite(y)]
    # fastest first, and at equal latency the most accurate first: then a point is on the front exactly when
    # it is more accurate than everything before it (which is all at least as fast), or a copy of the last one
    valid.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[int] = []
    best, last = -math.inf, None
    for x, y, i in valid:
        if y > best:
            front.append(i)
            best, last = y, (x, y)
        elif (x, y) == last:
            front.append(i)
    return front
