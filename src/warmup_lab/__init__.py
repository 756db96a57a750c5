"""warmup-lab: test claims about learning-rate warmup with seeds, numbers and intervals."""

import os

from omegaconf import OmegaConf

# ${wl_pid:} in run directory names keeps two runs started in the same microsecond apart.
OmegaConf.register_new_resolver("wl_pid", lambda: str(os.getpid()), use_cache=True, replace=True)

__version__ = "0.1.0"
