"""One run (or one fused group of runs) from config to records: ``run`` (the entry), ``validate``
and ``schema`` (bad input in one line), ``identity`` (what defines a run), ``rundir`` (its
records, lock and integrity), ``checkpoint``, ``signals``, ``tb`` (TensorBoard), ``runinfo``
(metadata), ``progress`` (console lines), ``cli`` (the command-line check), ``fused_runs``."""
