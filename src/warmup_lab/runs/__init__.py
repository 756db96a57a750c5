"""Runs from config to records: ``run`` (``run`` and ``run_group``, the entries), ``validate``
and ``schema`` (bad input in one line), ``identity`` (what defines a run), ``rundir`` (its
records, lock and integrity), ``checkpoint``, ``signals``, ``tb`` (TensorBoard), ``runinfo``
(metadata), ``progress`` (console lines), ``cli`` (the command-line check), ``process``
(the ``train.py`` process: its start-up and Hydra's composition)."""
