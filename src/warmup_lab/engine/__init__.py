"""The training engine: the trainer loop (``trainer``), the optimizer builder (``optim``), the
on-device metric buffer (``step_buffer``), the fast-path switches (``fastpath``) and K runs
trained as one fused model (``fused``)."""
