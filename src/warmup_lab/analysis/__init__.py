"""From runs to evidence: load a sweep, group runs into arms, aggregate over seeds, judge claims.

Modules: ``load`` (run directories: config, metrics.json, full-resolution scalars), ``arms``
(grouping and per-arm aggregates), ``stats`` (t, bootstrap and Wilson intervals), ``claimspec``
(a claim as YAML data: schema and validation), ``reducers`` (named per-arm statistics),
``claims`` (judging a claim on runs: decision rules, verdicts), ``sequential`` (run until decided:
alpha spending across rounds of seeds), ``power`` (seeds a part needs), ``plots``, ``tblayout``
(TensorBoard custom scalars), ``report`` (:func:`analyze`, which writes everything). CLI:
``scripts/analyze.py``.
"""

import importlib

_EXPORTS = {"ClaimError": "claimspec", "load_claim": "claimspec", "parse_claim": "claimspec",
            "evaluate_claim": "claims", "named_claims": "claims", "analyze": "report"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The package's names, imported on first use: a training process imports the sweeper plugin,
    which needs only ``claimspec``, and should not pay for matplotlib and the report (1.4 s)."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"warmup_lab.analysis.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'warmup_lab.analysis' has no attribute {name!r}")
