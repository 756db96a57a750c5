"""One table of every knob of every option of the model, data and optimizer groups.

:func:`check` walks a composed config against :data:`SCHEMA` (types, ranges, allowed values,
and that no key is unknown) and then the rules that tie keys together (:func:`cross_checks`:
model vs data task, heads vs width, patches vs image size, batch vs data size, context vs
corpus, the data file itself). Each failure is a ``ConfigError`` with one line that names the key
and what is allowed. It runs before any data is loaded or model built (``validate.validate``).

Options are found by their ``_target_``; an option with a ``_target_`` this table does not know
(your own model class, say) gets only the generic checks. The scheduler group checks its own
knobs (``schedules.knobs``), the trainer group is declared here and range-checked in
``validate``.
"""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from warmup_lab.schedules.knobs import fmt  # a value as a Hydra override writes it (null, true, [1, 2])

INF = math.inf


class ConfigError(ValueError):
    """A bad config value; the message is a single line naming the key."""




@dataclass(frozen=True)
class Knob:
    """``kind``: int, float, bool, str, choice or unit_pair (two numbers in [0, 1))."""

    kind: str
    lo: float = -INF
    hi: float = INF
    lo_open: bool = False
    hi_open: bool = False
    null: bool = False
    choices: tuple = ()

    def allowed(self) -> str:
        if self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a string"
        elif self.kind == "choice":
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "unit_pair":
            text = "a list of two numbers in [0, 1), e.g. [0.9, 0.999]"
        else:
            what = "an integer" if self.kind == "int" else "a finite number"
            if self.lo > -INF and self.hi < INF:
                text = f"{what} in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
            elif self.lo > -INF:
                text = f"{what} {'>' if self.lo_open else '>='} {self.lo:g}"
            elif self.hi < INF:
                text = f"{what} {'<' if self.hi_open else '<='} {self.hi:g}"
            else:
                text = what
        return text + (" or null" if self.null else "")

    def ok(self, v) -> bool:
        if v is None:
            return self.null
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return isinstance(v, str)
        if self.kind == "choice":
            return v in self.choices and type(v) is type(self.choices[0])
        if self.kind == "unit_pair":
            return (isinstance(v, (list, tuple)) and len(v) == 2
                    and all(_number(x) and 0 <= x < 1 for x in v))
        if self.kind == "int" and not (isinstance(v, int) and not isinstance(v, bool)):
            return False
        if not _number(v) or not math.isfinite(v):
            return False
        if v < self.lo or (self.lo_open and v == self.lo) or v > self.hi or (self.hi_open and v == self.hi):
            return False
        return True


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def I(lo=-INF, hi=INF, null=False) -> Knob:  # noqa: E743
    return Knob("int", lo, hi, null=null)


def F(lo=-INF, hi=INF, lo_open=False, hi_open=False, null=False) -> Knob:
    return Knob("float", lo, hi, lo_open, hi_open, null)


BOOL, STR, BETAS = Knob("bool"), Knob("str"), Knob("unit_pair")
FRACTION = F(0, 1, lo_open=True, hi_open=True)

GENERIC = {"_target_": STR, "name": STR}
_OPT = {"lr": F(0, lo_open=True), "weight_decay": F(0), "decay_norm_and_bias": BOOL}
_ADAM = {**_OPT, "betas": BETAS, "eps": F(0, lo_open=True), "amsgrad": BOOL, "foreach": Knob("bool", null=True),
         "fused": Knob("bool", null=True), "maximize": BOOL, "capturable": BOOL}

SCHEMA: dict[str, dict[str, dict[str, Knob]]] = {
    "model": {
        "warmup_lab.models.cifar_resnet": {"depth": I(8), "width": I(1), "shortcut": Knob("choice", choices=("A", "B"))},
        "warmup_lab.models.resnet18": {},
        "warmup_lab.models.resnet1d": {"depth": I(8), "width": I(1), "kernel_size": I(1),
                                       "shortcut": Knob("choice", choices=("A", "B"))},
        "warmup_lab.models.transformer": {
            "n_layers": I(1), "d_model": I(1), "n_heads": I(1), "d_ff": I(1, null=True), "dropout": F(0, 1, hi_open=True),
            "context_length": I(1, null=True), "norm_first": BOOL, "final_norm": BOOL, "patch_size": I(1),
            "tie_embeddings": BOOL},
    },
    "data": {
        "warmup_lab.data.load_bytes": {"path": Knob("str", null=True), "max_bytes": I(2), "val_fraction": FRACTION,
                                       "context_length": I(1), "eval_sequences": I(1)},
        "warmup_lab.data.load_cifar10": {"root": STR, "download": BOOL, "augment": BOOL, "train_subset": I(1, null=True)},
        "warmup_lab.data.load_digits": {"val_fraction": FRACTION, "split_seed": I(0)},
        "warmup_lab.data.load_mnist1d": {"num_samples": I(10), "seed": I(0), "train_split": FRACTION, "cache": BOOL,
                                         "cache_dir": Knob("str", null=True)},
    },
    "optimizer": {
        "torch.optim.SGD": {**_OPT, "momentum": F(0, 1, hi_open=True), "nesterov": BOOL, "dampening": F(0, 1)},
        "torch.optim.Adam": _ADAM,
        "torch.optim.AdamW": _ADAM,
        "torch.optim.RAdam": {**_ADAM, "decoupled_weight_decay": BOOL},
        "torch.optim.RMSprop": {**_OPT, "alpha": F(0, 1, hi_open=True), "eps": F(0, lo_open=True),
                                "momentum": F(0, 1, hi_open=True), "centered": BOOL},
    },
}

# the trainer's knobs (conf/trainer/default.yaml); values are range-checked in validate.py
TRAINER_KEYS = ("device", "max_steps", "epochs", "batch_size", "eval_interval", "log_interval", "grad_clip",
                "precision", "channels_last", "compile", "compile_optimizer", "stack", "seed", "deterministic",
                "threads", "progress", "checkpoint_interval", "resume", "metrics")
METRICS_KEYS = ("jitter_window", "spike_threshold", "loss_threshold", "early_fraction", "layer_interval",
                "update_ratio", "layers", "curvature_interval", "curvature_iters", "curvature_batch")
TOP_KEYS = ("seed", "task_name", "paths", "study", "model", "data", "optimizer", "scheduler", "trainer", "hydra")
IMAGE_DATA = {"warmup_lab.data.load_digits": ("digits", 1, 8, 1797), "warmup_lab.data.load_cifar10": ("cifar10", 3, 32, 50000)}
SIGNAL_DATA = {"warmup_lab.data.load_mnist1d": ("mnist1d", 1, 40)}  # 1-D signals: (name, channels, length)
IMAGE_MODELS = ("warmup_lab.models.cifar_resnet", "warmup_lab.models.resnet18")
DIGITS_PER_CLASS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)


def _unknown_key(key: str, known, where: str) -> ConfigError:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(known), n=1)
    hint = f"; did you mean '{key.rsplit('.', 1)[0]}.{close[0]}'?" if close else ""
    return ConfigError(f"{key} is not a knob of {where}: known knobs are {', '.join(sorted(known))}{hint}")


def check_group(group: str, node) -> None:
    """Types, ranges and unknown keys of the option in ``node`` (a plain dict)."""
    target = node.get("_target_")
    table = SCHEMA[group].get(target)
    if table is None:  # an option of your own: only what every option has
        return
    known = {**GENERIC, **table}
    option = node.get("name", target)
    for key, value in node.items():
        if key not in known:
            raise _unknown_key(f"{group}.{key}", known, f"{group}={option}")
        knob = known[key]
        if not knob.ok(value):
            raise ConfigError(f"{group}.{key}={fmt(value)} is invalid: must be {knob.allowed()}")


STACKS = ("auto", "grouped", "vmap", "loop")  # trainer.stack: how K runs share a step (engine/stacking.py)
GROUPED_MODELS = ("warmup_lab.models.cifar_resnet", "warmup_lab.models.resnet1d")  # what trainer.stack=grouped takes

# trainer knobs whose type this table checks (ranges and the rest: validate.py, fastpath.compile_mode)
TRAINER_TYPES = {"channels_last": BOOL, "compile_optimizer": BOOL, "deterministic": BOOL, "progress": BOOL,
                 "resume": BOOL, "seed": I(), "device": STR,
                 "stack": Knob("choice", choices=STACKS)}


def check_trainer_keys(node) -> None:
    for key in node:
        if key not in TRAINER_KEYS:
            raise _unknown_key(f"trainer.{key}", TRAINER_KEYS, "trainer")
        knob = TRAINER_TYPES.get(key)
        if knob is not None and not knob.ok(node[key]):
            raise ConfigError(f"trainer.{key}={fmt(node[key])} is invalid: must be {knob.allowed()}")
    for key in node.get("metrics") or {}:
        if key not in METRICS_KEYS:
            raise _unknown_key(f"trainer.metrics.{key}", METRICS_KEYS, "trainer.metrics")


def check(cfg) -> None:
    """Every knob of the model, data and optimizer options, the trainer's key set, top-level
    keys, then :func:`cross_checks`."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in plain:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(key, TOP_KEYS, n=1)
            raise ConfigError(f"{key} is not a config key: the top level has {', '.join(TOP_KEYS[:-1])}"
                              + (f"; did you mean '{close[0]}'?" if close else ""))
    for group in SCHEMA:
        check_group(group, plain.get(group) or {})
    check_trainer_keys(plain.get("trainer") or {})
    cross_checks(plain)


# -- rules across keys ---------------------------------------------------------------------------------------
def cross_checks(c: dict) -> None:
    model, data, opt, tr = c.get("model") or {}, c.get("data") or {}, c.get("optimizer") or {}, c.get("trainer") or {}
    mt, dt = model.get("_target_"), data.get("_target_")
    image = IMAGE_DATA.get(dt)
    lm = dt == "warmup_lab.data.load_bytes"
    signal = SIGNAL_DATA.get(dt)
    if mt in IMAGE_MODELS and lm:
        raise ConfigError(f"model={model.get('name')} needs image data (data=digits or data=cifar10), but "
                          f"data={data.get('name')} is a byte-level language-model corpus: use model=transformer")
    if mt in IMAGE_MODELS and signal is not None:
        raise ConfigError(f"model={model.get('name')} needs image data (data=digits or data=cifar10), but "
                          f"data={data.get('name')} is 1-D signals: use model=resnet1d or model=transformer")
    if mt == "warmup_lab.models.resnet1d":
        if signal is None and dt in (*IMAGE_DATA, "warmup_lab.data.load_bytes"):
            raise ConfigError(f"model=resnet1d needs 1-D signals (data=mnist1d), but data={data.get('name')} is "
                              f"{'a byte-level corpus' if lm else 'images'}: use "
                              f"{'model=transformer' if lm else 'model=resnet20 or model=transformer'}")
        if (model["depth"] - 2) % 6:
            raise ConfigError(f"model.depth={model['depth']} is invalid: a ResNet here has 6n+2 layers (8, 14, 20, "
                              f"32, ...)")
        if model["kernel_size"] % 2 == 0:
            raise ConfigError(f"model.kernel_size={model['kernel_size']} is invalid: it must be odd (3, 5, 7, ...) so "
                              f"the padding keeps the length")
    if mt == "warmup_lab.models.cifar_resnet" and (model["depth"] - 2) % 6:
        raise ConfigError(f"model.depth={model['depth']} is invalid: a CIFAR ResNet has 6n+2 layers (8, 14, 20, 32, "
                          f"44, 56, 110, ...)")
    if mt == "warmup_lab.models.transformer":
        if model["d_model"] % model["n_heads"]:
            raise ConfigError(f"model.n_heads={model['n_heads']} is invalid: it must divide model.d_model="
                              f"{model['d_model']} (e.g. {', '.join(str(h) for h in _divisors(model['d_model'])[:6])})")
        if image is not None:
            side = image[2]
            if side % model["patch_size"]:
                raise ConfigError(f"model.patch_size={model['patch_size']} is invalid: it must divide the image side "
                                  f"{side} of data={image[0]}")
            tokens = (side // model["patch_size"]) ** 2
        elif signal is not None:
            length = signal[2]
            if length % model["patch_size"]:
                raise ConfigError(f"model.patch_size={model['patch_size']} is invalid: it must divide the signal "
                                  f"length {length} of data={signal[0]} "
                                  f"({', '.join(str(d) for d in _divisors(length))})")
            tokens = length // model["patch_size"]
        else:
            tokens = data.get("context_length")
        ctx = model.get("context_length")
        if ctx is not None and tokens is not None and ctx < tokens:
            raise ConfigError(f"model.context_length={ctx} is invalid: the model must cover the {tokens} tokens of a "
                              f"sequence ({'data.context_length' if lm else 'image patches'}); use >= {tokens} or null")
    if opt.get("_target_") == "torch.optim.SGD" and opt.get("nesterov") and not opt.get("momentum"):
        raise ConfigError(f"optimizer.nesterov=true needs optimizer.momentum > 0 (it is {fmt(opt.get('momentum'))})")
    batch = tr.get("batch_size")
    if signal is not None and isinstance(batch, int):
        from warmup_lab.data.mnist1d import split_sizes

        n_train = split_sizes(data["num_samples"], data["train_split"])[0]
        if batch > n_train:
            raise ConfigError(f"trainer.batch_size={batch} is invalid: the training split of data={signal[0]} has "
                              f"{n_train} signals (data.num_samples={data['num_samples']} x data.train_split="
                              f"{fmt(data['train_split'])}); use at most {n_train} or more samples")
    if image is not None and isinstance(batch, int):
        n_train = _image_train_size(dt, data, image)
        if batch > n_train:
            raise ConfigError(f"trainer.batch_size={batch} is invalid: the training split of data={image[0]} has "
                              f"{n_train} images; use at most {n_train}")
    if lm:
        check_corpus(data)
    if dt == "warmup_lab.data.load_cifar10" and not data.get("download"):
        from warmup_lab.data.cifar import FOLDER, TEST_FILE, TRAIN_FILES

        folder = Path(str(data.get("root"))).expanduser() / FOLDER
        missing = [n for n in [*TRAIN_FILES, TEST_FILE] if not (folder / n).is_file()]
        if missing:
            raise ConfigError(f"data.root={data.get('root')}: data=cifar10 expects {folder}/ with "
                              f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''} missing; set data.root=DIR "
                              f"or run once with data.download=true on a machine with a network")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _image_train_size(target: str, data: dict, image) -> int:
    if target == "warmup_lab.data.load_digits":  # the stratified split of data/digits.py
        vf = data.get("val_fraction", 0.2)
        return sum(n - int(round(vf * n)) for n in DIGITS_PER_CLASS)
    return min(data.get("train_subset") or image[3], image[3])


def check_corpus(data: dict) -> None:
    """``data.path`` is a non-empty UTF-8 text file, and the corpus is long enough for the
    context length on both sides of the split."""
    path, max_bytes = data.get("path"), data.get("max_bytes")
    size = max_bytes
    if path is not None:
        p = Path(str(path)).expanduser()
        if p.is_dir():
            raise ConfigError(f"data.path={path} is a directory: give a UTF-8 text file")
        if not p.is_file():
            raise ConfigError(f"data.path={path} does not exist: give an existing UTF-8 text file")
        if not os.access(p, os.R_OK):
            raise ConfigError(f"data.path={path} cannot be read (permissions): give a readable UTF-8 text file")
        raw = p.read_bytes()
        if not raw.strip():
            raise ConfigError(f"data.path={path} is empty: give a UTF-8 text file with text in it")
        nul = raw.find(b"\0")
        if nul >= 0:
            raise ConfigError(f"data.path={path} is a binary file (a NUL byte at offset {nul}), not UTF-8 text")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"data.path={path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset "
                              f"{err.start}): convert it, e.g. iconv -t utf-8") from None
        size = min(len(raw), max_bytes)
    ctx, vf = data.get("context_length"), data.get("val_fraction")
    if size is None or ctx is None or vf is None:
        return
    split = int(size * (1 - vf))
    val, train = size - split, split
    if val < ctx + 1 or train < ctx + 2:
        need = math.ceil((ctx + 1) / vf) if vf else None
        raise ConfigError(f"data.context_length={ctx} is too long for a corpus of {size} bytes with data.val_fraction="
                          f"{fmt(vf)}: each split needs at least {ctx + 1} bytes"
                          + (f" (a corpus of >= {need} bytes, or a shorter context)" if need else ""))
