"""The command line checked before Hydra composes it: a typo gets one line, not a traceback.

Hydra reports an unknown option (``scheduler=warmupcosin``), an unknown key
(``optimizer.lrr=0.1``) or a parse error in 6-29 lines and exit code 1, and accepts
``+trainer.foo=1`` silently although nothing reads it. :func:`check_command_line` reads the
overrides with Hydra's own parser and the option files under ``conf/`` (plain YAML, a few
milliseconds), and raises ``ConfigError`` with one line naming the key, what is allowed and the
closest valid name. It checks only what it can know without composing: group options, and keys
under the config groups and the top level. Everything else is left to Hydra and then to
``validate`` and ``schema`` (the composed config).
"""

from __future__ import annotations

import difflib
import functools
from pathlib import Path

import yaml

from warmup_lab.runs.schema import METRICS_KEYS, ConfigError

CONF = Path(__file__).resolve().parents[3] / "conf"
OPTION_GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "experiment", "launcher", "arm")
KEY_GROUPS = ("model", "data", "optimizer", "scheduler", "trainer")
FREE = ("hydra", "study", "local")           # keys Hydra, presets or your local file own
# Hydra's flags that take a value (the value is not an override)
VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--cfg", "-c", "--package",
               "-p", "--info", "-i", "--experimental-rerun", "--shell-completion", "-sc")


@functools.lru_cache(maxsize=None)
def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _flat_keys(node, prefix: str, out: set) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.add(key)
            _flat_keys(v, key, out)


@functools.lru_cache(maxsize=None)
def group_keys(group: str) -> set[str]:
    """Every key (and key prefix) of every option of ``group``, as ``group.a.b``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    keys: set[str] = set()
    for path in sorted((CONF / group).glob("*.yaml")):
        node = yaml.load(path.read_text(), Loader=loader) or {}
        _flat_keys({k: v for k, v in node.items() if k != "defaults"}, group, keys)
    if group == "trainer":
        keys.update(f"trainer.metrics.{k}" for k in METRICS_KEYS)
    return keys


@functools.lru_cache(maxsize=None)
def option_keys(group: str, option: str) -> set[str] | None:
    path = CONF / group / f"{option}.yaml"
    if not path.is_file():
        return None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    node = yaml.load(path.read_text(), Loader=loader) or {}
    keys: set[str] = set()
    _flat_keys({k: v for k, v in node.items() if k != "defaults"}, group, keys)
    if group == "trainer":
        keys.update(f"trainer.metrics.{k}" for k in METRICS_KEYS)
    return keys


@functools.lru_cache(maxsize=None)
def _defaults_choice(path: Path, group: str) -> str | None:
    """The option of ``group`` that a config file's defaults list selects, if it does."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        node = yaml.load(path.read_text(), Loader=loader) or {}
    except (OSError, yaml.YAMLError):
        return None
    for entry in node.get("defaults") or []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                if str(k).replace("override ", "").strip().lstrip("/") == group and isinstance(v, str):
                    return v
    return None


def selected_options(group: str, parsed) -> list[str] | None:
    """The options of ``group`` this command line runs with: its own override (every value of a
    sweep), else the experiment preset's choice, else train.yaml's default; None if unknown."""
    for o in parsed:
        if o.key_or_group == group and not o.is_delete():
            vals = _values(o)
            return [str(v) for v in vals] or None
    for o in parsed:
        if o.key_or_group == "experiment" and not o.is_sweep_override():
            choice = _defaults_choice(CONF / "experiment" / f"{o.value()}.yaml", group)
            if choice:
                return [choice]
    choice = _defaults_choice(CONF / "train.yaml", group)
    return [choice] if choice else None


@functools.lru_cache(maxsize=None)
def schema_keys(group: str, option: str | None = None) -> frozenset[str]:
    """Knobs the schema table accepts for the group's options (or the one option): torch's own
    keyword arguments such as ``optimizer.amsgrad`` are knobs although no YAML file sets them."""
    from warmup_lab.runs.schema import SCHEMA

    table = SCHEMA.get(group, {})
    if option is not None:
        target = None
        path = CONF / group / f"{option}.yaml"
        if path.is_file():
            node = yaml.safe_load(path.read_text()) or {}
            target = node.get("_target_")
        tables = [table.get(target, {})]
    else:
        tables = list(table.values())
    return frozenset(f"{group}.{k}" for t in tables for k in t)


@functools.lru_cache(maxsize=None)
def top_keys() -> set[str]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    node = yaml.load((CONF / "train.yaml").read_text(), Loader=loader) or {}
    keys: set[str] = set()
    _flat_keys({k: v for k, v in node.items() if k != "defaults"}, "", keys)
    return keys


def _closest(word: str, words) -> str:
    close = difflib.get_close_matches(word, sorted(words), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def overrides_of(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a.startswith("-"):
            skip = a in VALUE_FLAGS
            continue
        out.append(a)
    return out


def _values(o) -> list:
    """The values an override gives its key (each value of a sweep), or [] when it cannot say."""
    if o.is_sweep_override():
        try:
            return list(o.sweep_string_iterator())
        except Exception:  # a range or glob over a group: Hydra decides
            return []
    v = o.value()
    return [v] if isinstance(v, (str, int, float)) and not isinstance(v, bool) else []


def check_command_line(argv: list[str]) -> None:
    """Raise ``ConfigError`` (one line) for an override that cannot mean anything here."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    args = overrides_of(argv)
    if not args:
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except OverrideParseException as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "cannot be parsed"
        raise ConfigError(f"{first} (write key=value, group=option, or key=a,b,c to sweep)") from None
    multirun = any(a in ("-m", "--multirun") for a in argv) or any(
        o.key_or_group == "hydra.mode" and str(o.value()).upper() == "MULTIRUN" for o in parsed)
    sweep = next((o for o in parsed if o.is_sweep_override()), None)
    if sweep is not None and not multirun:
        raise ConfigError(f"{sweep.input_line} sweeps over several values: add -m (python train.py -m ...) to run "
                          f"one job per value")
    tops = top_keys()
    for o in parsed:
        key = o.key_or_group.split("@")[0]
        if o.is_delete() or key.split(".")[0] in FREE or key.startswith("hydra/"):
            continue
        head = key.split(".")[0]
        if key in OPTION_GROUPS:
            allowed = options(key)
            for v in _values(o):
                if str(v) not in allowed and v is not None and str(v) != "null":
                    raise ConfigError(f"{key}={v} is not an option of {key}: allowed {', '.join(allowed)}"
                                      f"{_closest(str(v), allowed)}")
            continue
        if head in KEY_GROUPS:
            known = group_keys(head) | schema_keys(head)
            if key not in known:
                sign = "+" if o.is_add() else ""
                what = (f"{sign}{key}: no option of {head} has this knob, so nothing would read it" if o.is_add()
                        else f"{key} is not a knob of any {head} option")
                raise ConfigError(f"{what}{_closest(key, known)} (python train.py --cfg job shows the composed config)")
            # option-specific checks only where the command line itself picks the option: a preset
            # (experiment=, +arm=, local) may select another one, through its own defaults chain
            presets = any(o2.key_or_group.split("@")[0] in ("experiment", "arm", "local") for o2 in parsed)
            chosen = (selected_options(head, parsed) or []) if not presets else []
            for option in chosen:
                keys = option_keys(head, option)
                if keys is None or o.is_force_add():
                    continue
                if key not in keys | schema_keys(head, option) and not o.is_add():
                    owners = [x for x in options(head) if key in (option_keys(head, x) or set())]
                    raise ConfigError(f"{key} is not a knob of {head}={option}: it belongs to "
                                      f"{head}={'|'.join(owners)}; choose one of those options")
                if key in keys and o.is_add():
                    raise ConfigError(f"+{key}: {head}={option} has this key already; set it without the +")
            continue
        if key not in tops and head not in tops:
            raise ConfigError(f"{key} is not a config key: allowed at the top level: "
                              f"{', '.join(sorted(k for k in tops if '.' not in k))}, and the groups "
                              f"{', '.join(OPTION_GROUPS)}{_closest(key, tops | set(OPTION_GROUPS))}")
        if key not in tops and "." in key:
            raise ConfigError(f"{key} is not a config key{_closest(key, tops)}")
