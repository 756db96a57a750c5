"""The training engine: the loop of K >= 1 runs (``trainer``; a run alone is K = 1), how K models
train as one (``stacking``), the optimizer builder (``optim``), the on-device metric buffer
(``step_buffer``) and the fast-path switches (``fastpath``)."""
