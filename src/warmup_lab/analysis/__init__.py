"""From runs to evidence: load a sweep, group runs into arms, aggregate over seeds, judge claims.

Modules: ``load`` (run directories: config, metrics.json, full-resolution scalars), ``arms``
(grouping and per-arm aggregates), ``stats`` (t, bootstrap and Wilson intervals), ``claimspec``
(a claim as YAML data: schema and validation), ``reducers`` (named per-arm statistics),
``claims`` (judging a claim on runs: decision rules, verdicts), ``sequential`` (run until decided:
alpha spending across rounds of seeds), ``power`` (seeds a part needs), ``plots``, ``tblayout``
(TensorBoard custom scalars), ``report`` (:func:`analyze`, which writes everything). CLI:
``scripts/analyze.py``.
"""

from warmup_lab.analysis.claims import evaluate_claim, named_claims
from warmup_lab.analysis.claimspec import ClaimError, load_claim, parse_claim
from warmup_lab.analysis.report import analyze

__all__ = ["ClaimError", "analyze", "evaluate_claim", "load_claim", "named_claims", "parse_claim"]
