"""A check shared by the loss and quantiser experiments: one check per value of a column.

``ForEach("chunks", make)`` evaluates ``make(x)`` for every value ``x`` of the column ``chunks``
present in the results and combines them like :class:`~formerlab.lab.claims.AllOf`, so a claim
such as "for every chunk size" holds whatever sizes a preset measures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ..claims import NOT_TESTED, AllOf, Check, Results, Verdict

__all__ = ["ForEach"]


@dataclasses.dataclass
class ForEach(Check):
    """``make(x)`` holds for every value ``x`` of column ``over`` in the rows ``where``.

    Args:
        over: The column (e.g. ``"chunks"``, ``"codebook_size"``).
        make: ``x -> Check`` for one value.
        where: Restrict the rows whose values of ``over`` are collected.
        keep: Only values with ``keep(x)`` true (e.g. ``lambda c: c > 1``).
    """

    over: str
    make: Callable[[Any], Check]
    where: dict[str, Any] = dataclasses.field(default_factory=dict)
    keep: Callable[[Any], bool] | None = None

    def __call__(self, results: Results) -> Verdict:
        xs = sorted(x for x in results.distinct(self.over, **self.where)
                    if self.keep is None or self.keep(x))
        if not xs:
            return Verdict(NOT_TESTED, f"no rows with a value of {self.over!r}")
        return AllOf([self.make(x) for x in xs])(results)
