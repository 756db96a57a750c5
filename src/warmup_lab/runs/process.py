"""The ``train.py`` process around its runs: the garbage collector paused while the process starts,
and Hydra's config composed once instead of twice (docs/performance.md, "The whole process").

* ``train.py`` turns the collector off before its imports. :class:`EndStartup`, a Hydra callback
  (``conf/hydra/default.yaml``), ends the pause once Hydra has composed the config and before a
  run or a sweep starts: :func:`end_startup`.
* ``train.py`` calls :func:`compose_once` before ``@hydra.main`` runs: Hydra then skips the
  composition it makes only to read ``hydra.mode``, wherever nothing can set that key.
"""

from __future__ import annotations

import atexit
import gc
import re
from pathlib import Path

import yaml
from hydra.experimental.callback import Callback

CONF = Path(__file__).resolve().parents[3] / "conf"


def end_startup() -> None:
    """End the start-up pause: freeze every object made so far and turn the garbage collector
    back on; at exit, freeze again. A no-op once the collector is on (a later run or sweep of the
    process; tests; a program that imports the package without ``train.py``'s pause).

    Start-up creates about 350 000 long-lived objects (torch, ``torch._dynamo`` with sympy,
    Hydra, OmegaConf) and almost no cyclic garbage, yet the collector walked all of them six
    times there (0.5 s), and once more at interpreter shutdown (another 0.3-0.5 s). Frozen
    objects are never walked again, so:

    * what start-up left unreachable in cycles (a few thousand objects, once per process) and the
      composed config of the first run (OmegaConf nodes link to their parents) are never freed;
    * cyclic garbage made after the exit freeze, or frozen by it, gets no finalizer at shutdown
      (Python does not promise one either). Every file a run writes is closed before its job
      returns, and logging's own exit handler, which flushes the log files, runs after this
      one (handlers run last-registered first)."""
    if gc.isenabled():
        return
    gc.freeze()
    gc.enable()
    atexit.register(gc.freeze)


class EndStartup(Callback):
    """Hydra callback: :func:`end_startup` when a run or a sweep starts (after the config is
    composed; before the run directory, the sweeper and the launcher). Every path passes here:
    a run alone, a sweep whose jobs run in this process (basic and fused launchers) and one
    whose jobs run elsewhere (joblib, SLURM), whichever sweeper is configured."""

    def on_run_start(self, config, **kwargs) -> None:
        end_startup()

    def on_multirun_start(self, config, **kwargs) -> None:
        end_startup()


# the only command-line flags that leave Hydra's mode probe out (other flags either change where
# the config comes from, -cd/-cp/-cn/--experimental-rerun, or never reach the probe)
RUN_MODE_FLAGS = ("-m", "--multirun")
_WORD_MODE = re.compile(r"\bmode\b")
_PACKAGE = re.compile(r"^#\s*@package\s+(\S+)", re.MULTILINE)
_RELOCATION = re.compile(r"@(?!package\b)")  # a defaults entry placed in another package (foo@bar)


def sets_hydra_mode(argv: list[str], conf: Path = CONF) -> bool:
    """Whether ``hydra.mode`` may be set other than by ``-m``; errs towards yes.

    Yes for a command line with any flag but ``-m``/``--multirun`` (another config source, in
    full or abbreviated as argparse allows), an override naming ``hydra.mode`` or
    ``hydra.searchpath``, or a package override (``@``); and for a YAML file under ``conf`` (the
    git-ignored ``conf/local/`` included) that cannot be read, that mentions ``searchpath``, that
    places a defaults entry in another package (``foo@bar``), or that sets ``mode`` in the
    ``hydra`` package: ``hydra: {mode: ...}`` in a global file, ``mode`` at the top of a file
    whose package is ``hydra`` (``conf/hydra/*.yaml`` without a header, or ``# @package
    hydra``). Search-path plugins of other packages are not seen."""
    for arg in argv:
        if (arg.startswith("-") and arg not in RUN_MODE_FLAGS) or "@" in arg \
                or "hydra.mode" in arg or "hydra.searchpath" in arg:
            return True
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for path in sorted(conf.rglob("*.yaml")):
        try:
            text = path.read_text()
        except OSError:
            return True
        if "searchpath" in text or _RELOCATION.search(text):
            return True
        if not _WORD_MODE.search(text):
            continue
        try:
            node = yaml.load(text, Loader=loader)
        except yaml.YAMLError:
            return True
        if isinstance(node, dict) and "mode" in (_hydra_node(node, _package(path, text, conf)) or {}):
            return True
    return False


def _package(path: Path, text: str, conf: Path) -> str:
    """The package a config file's keys land in, dotted ("" = the root), as Hydra places it."""
    group = ".".join(path.relative_to(conf).parent.parts)
    header = _PACKAGE.search(text)
    package = header.group(1) if header else "_group_"
    package = package.replace("_group_", group)
    if package == "_global_" or (not header and not group):  # the primary config (train.yaml)
        return ""
    return package.removeprefix("_global_.")


def _hydra_node(node: dict, package: str):
    """The mapping of a file that lands at ``hydra``, or None."""
    if package == "":
        hydra = node.get("hydra")
        return hydra if isinstance(hydra, dict) else None
    return node if package == "hydra" else None


def compose_once(argv: list[str], conf: Path = CONF) -> bool:
    """Let Hydra compose the config once instead of twice; returns whether it will.

    Before running, ``@hydra.main`` composes the whole config once only to read ``hydra.mode``
    (``Hydra.get_mode``; 60 ms here), then composes it again to run. Where nothing sets
    ``hydra.mode`` (:func:`sets_hydra_mode`) that first composition returns None, and Hydra then
    picks the mode from ``-m``/``--multirun`` alone (``_run_app``); this makes ``get_mode``
    answer None without composing, so every run and sweep starts as before. The replacement is
    for the whole process (``train.py`` calls this once, before ``@hydra.main``). Hydra versions
    without ``get_mode`` are left as they are."""
    from hydra._internal.hydra import Hydra

    if not callable(getattr(Hydra, "get_mode", None)) or sets_hydra_mode(argv, conf):
        return False
    Hydra.get_mode = _no_mode
    return True


def _no_mode(self, config_name, overrides):
    """``Hydra.get_mode`` where nothing sets ``hydra.mode`` (:func:`compose_once`)."""
    return None
