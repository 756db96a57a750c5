"""From runs to evidence: load a sweep, group runs into arms, aggregate over seeds, judge claims.

Modules: ``load`` (run directories: config, metrics.json, full-resolution scalars), ``arms``
(grouping and per-arm aggregates), ``stats`` (t, bootstrap and Wilson intervals), ``claims``
(claims, decision rules, verdicts), ``plots``, ``tblayout`` (TensorBoard custom scalars),
``report`` (:func:`analyze`, which writes everything). CLI: ``scripts/analyze.py``.
"""

from .claims import CLAIMS, evaluate_claim
from .report import analyze

__all__ = ["CLAIMS", "analyze", "evaluate_claim"]
