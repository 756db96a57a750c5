"""A claim as data: the YAML schema, its validation, and where named claims live.

A claim is a mapping (docs/claims.md, "Write your own claim"): under ``study.claim`` of an
experiment preset, in a YAML file (``study.claim=PATH``, ``analyze.py --claim-file PATH``), or a
preset's name (``study.claim=warmup_fraction``: the mapping under ``study.claim`` of
``conf/experiment/warmup_fraction.yaml``). :func:`parse_claim` checks every field and returns a
:class:`ClaimSpec`; a bad field raises :class:`ClaimError`, whose message is one line naming the
field and what is allowed. Nothing here reads runs or imports torch.

Effects are arithmetic over arm names (``a - b``, ``(a - b) - (c - d)``, ``(a + b) / 2``):
``+ - * /``, unary minus, parentheses and numbers, parsed with :mod:`ast` and evaluated on
per-seed numpy vectors, never with ``eval``.
"""

from __future__ import annotations

import ast
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

RULES = ("greater", "not_greater", "negligible", "positive")
FAILURES = ("l0", "exclude", "keep")
TRANSFORMS = (None, "log10")
DEFAULT_METRIC = "final_val_loss"
DEFAULT_MARGIN = 0.02
CLAIM_FIELDS = ("name", "title", "statement", "metric", "margin", "level", "arms", "best_over", "reduce",
                "parts", "context", "headline", "notes")
PART_FIELDS = ("id", "name", "effect", "rule", "primary", "metric", "reduce", "transform", "failures",
               "family", "margin", "detail")


class ClaimError(ValueError):
    """A bad claim: the message is one line naming the field and what is allowed."""


@dataclass(frozen=True)
class PartSpec:
    """One tested statement: ``effect`` (arm arithmetic) judged by ``rule`` at ``margin``.

    ``metric`` (default: the claim's) is read per run from metrics.json (``trained`` is 1 for a
    run that trained, 0 for a failed one). ``failures``: ``l0`` counts a failed run at the
    initial loss L0 and caps every value at L0 (the default for metrics ending in ``loss``),
    ``exclude`` drops failed runs, ``keep`` uses the value as it is (the default otherwise).
    ``transform: log10`` takes log10 of positive values (others are missing). ``reduce`` names a
    reducer (``analysis.reducers``) that turns an arm's values over its ``best_over`` levels
    into one value per seed; ``best`` (the lowest seed-mean level, re-chosen in every bootstrap
    resample) by default. Parts sharing a ``family`` form one question asked of k arms: their
    intervals are Bonferroni-widened to level 1 - alpha / k. ``primary: false`` parts are
    reported and not voted."""

    id: str
    name: str
    effect: str
    rule: str
    arms: tuple[str, ...]
    primary: bool = True
    metric: str = DEFAULT_METRIC
    reduce: str = "best"
    transform: str | None = None
    failures: str = "l0"
    family: str | None = None
    margin: float = DEFAULT_MARGIN
    detail: str = ""
    context: bool = False


@dataclass(frozen=True)
class ClaimSpec:
    name: str
    title: str
    statement: str
    metric: str
    margin: float
    level: float
    arms: dict[str, dict[str, tuple]]           # arm -> key -> allowed values (any of)
    best_over: dict[str, tuple[str, ...]]       # arm -> keys whose best level the arm takes
    parts: tuple[PartSpec, ...]
    headline: str = "first"
    notes: tuple[str, ...] = ()
    source: str = ""

    @property
    def all_parts(self) -> tuple[PartSpec, ...]:
        return self.parts

    @property
    def decisive(self) -> tuple[PartSpec, ...]:
        """The parts a verdict needs decided: primary parts and context parts."""
        return tuple(p for p in self.parts if p.primary or p.context)


# -- effects --------------------------------------------------------------------------------------
_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.Div: lambda a, b: a / b}


def parse_effect(text: str, where: str) -> ast.AST:
    """The expression's tree; only arm names, numbers, ``+ - * /``, unary minus and parentheses."""
    try:
        tree = ast.parse(str(text), mode="eval").body
    except SyntaxError:
        raise ClaimError(f"{where}={text!r} is invalid: write arithmetic over arm names, e.g. "
                         f"'a - b' or '(a - b) - (c - d)'") from None
    for node in ast.walk(tree):
        ok = isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.USub, ast.UAdd, *_BINOPS)) or (
            isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool))
        if not ok:
            raise ClaimError(f"{where}={text!r} is invalid: only arm names, numbers, + - * / and "
                             f"parentheses are allowed")
    return tree


def effect_arms(text: str, where: str = "effect") -> tuple[str, ...]:
    """Arm names an effect uses, in order of first appearance."""
    names: list[str] = []
    for node in ast.walk(parse_effect(text, where)):
        if isinstance(node, ast.Name) and node.id not in names:
            names.append(node.id)
    return tuple(names)


def evaluate_effect(text: str, values: dict):
    """The effect with each arm name bound to ``values[name]`` (numbers or numpy arrays)."""
    def ev(node):
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return -ev(node.operand) if isinstance(node.op, ast.USub) else ev(node.operand)
        if isinstance(node, ast.Name):
            return values[node.id]
        return node.value
    return ev(parse_effect(text, "effect"))


# -- parsing --------------------------------------------------------------------------------------
def _unknown(fields, allowed, where: str) -> None:
    for k in fields:
        if k not in allowed:
            close = difflib.get_close_matches(str(k), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ClaimError(f"{where}: unknown field '{k}' (allowed: {', '.join(allowed)}){hint}")


def _number(v, where: str, lo: float = -math.inf, hi: float = math.inf, lo_open: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or v < lo or v > hi or (lo_open and v == lo):
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
        raise ClaimError(f"{where}={v!r} is invalid: must be a number in {rng}")
    return float(v)


def _text(v, where: str, required: bool = True) -> str:
    if v is None and not required:
        return ""
    if not isinstance(v, str) or not v.strip():
        raise ClaimError(f"{where}={v!r} is invalid: must be a non-empty string")
    return v.strip()


def _keys(v, where: str) -> tuple[str, ...]:
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(isinstance(k, str) and k for k in v):
        raise ClaimError(f"{where}={v!r} is invalid: must be a list of config keys, e.g. [optimizer.lr]")
    return tuple(v)


def _arm_values(v) -> tuple:
    """An arm's allowed values for one key: a list means any of them (a list-valued key is
    matched by a nested list, e.g. ``optimizer.betas: [[0.9, 0.98]]``)."""
    if isinstance(v, (list, tuple)):
        return tuple(tuple(x) if isinstance(x, list) else x for x in v)
    return (v,)


def _reducer_names():
    from warmup_lab.analysis.reducers import REDUCERS

    return REDUCERS


def parse_claim(node, source: str = "claim") -> ClaimSpec:
    """Check a claim mapping field by field and build its :class:`ClaimSpec`."""
    if hasattr(node, "items") and not isinstance(node, dict):  # an OmegaConf node
        from omegaconf import OmegaConf

        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict):
        raise ClaimError(f"{source}: a claim must be a mapping with name, statement, arms and parts "
                         f"(docs/claims.md), got {type(node).__name__}")
    _unknown(node, CLAIM_FIELDS, source)
    name = _text(node.get("name"), f"{source}.name")
    where = f"claim {name}"
    reducers = _reducer_names()
    metric = node.get("metric", DEFAULT_METRIC)
    _text(metric, f"{where}: metric")
    claim_reduce = node.get("reduce")
    if not isinstance(metric, str):
        raise ClaimError(f"{where}: metric={metric!r} is invalid: must be a metrics.json key or a reducer name")
    if metric in reducers:  # `metric: lr_sensitivity`: a reducer over the default loss
        claim_reduce, metric = claim_reduce or metric, DEFAULT_METRIC
    margin = _number(node.get("margin", DEFAULT_MARGIN), f"{where}: margin", 0.0)
    level = _number(node.get("level", 0.95), f"{where}: level", 0.5, 1.0, lo_open=False)
    if level >= 1.0:
        raise ClaimError(f"{where}: level={level} is invalid: must be a number in [0.5, 1)")

    arms_node = node.get("arms")
    if not isinstance(arms_node, dict) or not arms_node:
        raise ClaimError(f"{where}: arms is required: a mapping arm name -> {{config key: value}}, e.g. "
                         f"{{constant: {{scheduler.name: constantwarmup}}}}")
    arms: dict[str, dict[str, tuple]] = {}
    for arm, sel in arms_node.items():
        if not isinstance(arm, str) or not arm.isidentifier():
            raise ClaimError(f"{where}: arms.{arm} is invalid: an arm name must be an identifier "
                             f"(letters, digits, _), so effects can name it")
        if not isinstance(sel, dict) or not sel:
            raise ClaimError(f"{where}: arms.{arm}={sel!r} is invalid: must be a mapping config key -> "
                             f"value (or list of values), e.g. {{optimizer.name: adamw}}")
        for k in sel:
            if not isinstance(k, str) or not k:
                raise ClaimError(f"{where}: arms.{arm} has a key {k!r}: keys are config keys as in "
                                 f".hydra/config.yaml, e.g. scheduler.warmup_ratio")
        arms[arm] = {k: _arm_values(v) for k, v in sel.items()}

    bo = node.get("best_over")
    if isinstance(bo, dict):
        for arm in bo:
            if arm != "*" and arm not in arms:
                raise ClaimError(f"{where}: best_over.{arm} names no arm (arms: {', '.join(arms)})")
        default = _keys(bo.get("*"), f"{where}: best_over.*")
        best_over = {a: _keys(bo[a], f"{where}: best_over.{a}") if a in bo else default for a in arms}
    else:
        keys = _keys(bo, f"{where}: best_over")
        best_over = {a: keys for a in arms}
    for a, keys in best_over.items():
        for k in keys:
            if k in arms[a]:
                if len(arms[a][k]) < 2:
                    raise ClaimError(f"{where}: best_over of arm {a} names {k}, which the arm fixes to "
                                     f"{arms[a][k][0]!r}: list several values or drop it from best_over")
    if claim_reduce is not None and (not isinstance(claim_reduce, str) or claim_reduce not in reducers):
        raise ClaimError(f"{where}: reduce={claim_reduce} is invalid: allowed {', '.join(reducers)}")

    parts: list[PartSpec] = []
    for section, is_context in (("parts", False), ("context", True)):
        items = node.get(section)
        if section == "parts" and (not isinstance(items, list) or not items):
            raise ClaimError(f"{where}: parts is required: a list of {{effect, rule}} (docs/claims.md)")
        if items is None:
            continue
        if not isinstance(items, list):
            raise ClaimError(f"{where}: {section} must be a list of {{effect, rule}}")
        for i, p in enumerate(items):
            parts.append(_parse_part(p, f"{where}: {section}[{i}]", arms, metric, claim_reduce or "best",
                                     margin, is_context, reducers))
    ids = [p.id for p in parts]
    dup = next((i for i in ids if ids.count(i) > 1), None)
    if dup is not None:
        raise ClaimError(f"{where}: two parts have the id or name {dup!r}: give each part its own id")
    if not any(p.primary for p in parts):
        raise ClaimError(f"{where}: no primary part: at least one part must be voted (primary: true)")
    headline = node.get("headline", "first")
    if headline not in ("first", "largest") and headline not in ids:
        raise ClaimError(f"{where}: headline={headline!r} is invalid: allowed first, largest or a part id "
                         f"({', '.join(ids)})")
    notes = node.get("notes") or ()
    if isinstance(notes, str):
        notes = (notes,)
    return ClaimSpec(name=name, title=_text(node.get("title"), f"{where}: title", False) or name,
                     statement=_text(node.get("statement"), f"{where}: statement"), metric=metric,
                     margin=margin, level=level, arms=arms, best_over=best_over, parts=tuple(parts),
                     headline=headline, notes=tuple(str(n) for n in notes), source=source)


def _parse_part(p, where: str, arms: dict, metric: str, reduce: str, margin: float, is_context: bool,
                reducers) -> PartSpec:
    if not isinstance(p, dict):
        raise ClaimError(f"{where}={p!r} is invalid: a part is a mapping with effect and rule")
    _unknown(p, PART_FIELDS, where)
    effect = _text(p.get("effect"), f"{where}.effect")
    used = effect_arms(effect, f"{where}.effect")
    for a in used:
        if a not in arms:
            close = difflib.get_close_matches(a, list(arms), n=1)
            raise ClaimError(f"{where}.effect={effect!r} names an unknown arm '{a}' (arms: {', '.join(arms)})"
                             + (f"; did you mean '{close[0]}'?" if close else ""))
    if not used:
        raise ClaimError(f"{where}.effect={effect!r} is invalid: it names no arm")
    rule = p.get("rule")
    if not isinstance(rule, str) or rule not in RULES:
        raise ClaimError(f"{where}.rule={rule!r} is invalid: allowed {', '.join(RULES)}")
    name = _text(p.get("name"), f"{where}.name", False) or f"{effect} ({rule})"
    pid = _text(p.get("id"), f"{where}.id", False) or name
    m = p.get("metric", metric)
    _text(m, f"{where}.metric")
    red = p.get("reduce", reduce)
    if m in reducers and m != "best":
        red, m = m, metric
    if not isinstance(red, str) or red not in reducers:
        raise ClaimError(f"{where}.reduce={red!r} is invalid: allowed {', '.join(reducers)}")
    transform = p.get("transform")
    if not (transform is None or isinstance(transform, str)) or transform not in TRANSFORMS:
        raise ClaimError(f"{where}.transform={transform!r} is invalid: allowed null, log10")
    failures = p.get("failures", "l0" if m.endswith("loss") else "keep")
    if not isinstance(failures, str) or failures not in FAILURES:
        raise ClaimError(f"{where}.failures={failures!r} is invalid: allowed {', '.join(FAILURES)}")
    primary = p.get("primary", not is_context)
    if not isinstance(primary, bool):
        raise ClaimError(f"{where}.primary={primary!r} is invalid: must be true or false")
    if is_context and primary:
        raise ClaimError(f"{where}.primary=true is invalid: context parts cap the verdict, they are not voted")
    family = p.get("family")
    if family is not None and not isinstance(family, str):
        raise ClaimError(f"{where}.family={family!r} is invalid: must be a name shared by the parts of one "
                         f"question")
    return PartSpec(id=pid, name=name, effect=effect, rule=rule, arms=used, primary=primary, metric=m,
                    reduce=red, transform=transform, failures=failures, family=family,
                    margin=_number(p.get("margin", margin), f"{where}.margin", 0.0),
                    detail=_text(p.get("detail"), f"{where}.detail", False), context=is_context)


# -- where claims come from -------------------------------------------------------------------------
def conf_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "conf"


def preset_names() -> list[str]:
    """Experiment presets whose ``study.claim`` is a claim mapping (the named claims)."""
    folder = conf_dir() / "experiment"
    out = []
    for path in sorted(folder.glob("*.yaml")):
        claim = ((_read_yaml(path) or {}).get("study") or {}).get("claim")
        if isinstance(claim, dict):
            out.append(path.stem)
    return out


def _read_yaml(path: Path):
    """The file's YAML as plain data, read as OmegaConf (and Hydra) read it: YAML 1.2 numbers, so
    ``1e-3`` is a float in a claim file exactly as in an experiment preset; interpolations stay text."""
    from omegaconf import OmegaConf

    try:
        text = Path(path).read_text()
        yaml.safe_load(text)  # a syntax error: reported with its line below
        node = OmegaConf.create(text)
        return OmegaConf.to_container(node, resolve=False)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ClaimError(f"{path}: not valid YAML{at}: {getattr(err, 'problem', err)}") from None
    except OSError as err:
        raise ClaimError(f"{path}: cannot be read: {err.strerror}") from None


def load_claim(ref, where: str = "study.claim") -> ClaimSpec:
    """A claim from a mapping, a YAML file's path, or a preset name."""
    if ref is None:
        raise ClaimError(f"{where} is not set")
    if not isinstance(ref, (str, Path)):
        return parse_claim(ref, where)
    text = str(ref)
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ClaimError(f"{where}={text}: no such file (give a claim YAML file or a preset name: "
                             f"{', '.join(preset_names())})")
        node = _read_yaml(path)
        if isinstance(node, dict) and "claim" in node and "arms" not in node:
            node = node["claim"]  # a file holding `claim: {...}`
        return parse_claim(node, str(path))
    node = None
    for stem in dict.fromkeys((text, text.removesuffix("_gpu"))):  # a _gpu preset inherits its claim
        preset = conf_dir() / "experiment" / f"{stem}.yaml"
        node = ((_read_yaml(preset) or {}).get("study") or {}).get("claim") if preset.is_file() else None
        if isinstance(node, dict):
            break
    if not isinstance(node, dict):
        names = preset_names()
        close = difflib.get_close_matches(text, names, n=1)
        raise ClaimError(f"{where}={text} is neither a claim file nor a preset with a claim (presets: "
                         f"{', '.join(names)})" + (f"; did you mean '{close[0]}'?" if close else ""))
    return parse_claim(node, f"conf/experiment/{text}.yaml")
