"""The sweep file (docs/sweep.md): models x targets x recipes [x devices], read and checked strictly.

A sweep file comes from anywhere: it is read with a size bound, every key is known, every value has its type and
range, names are plain (they become cell ids and history labels), and paths are relative to the file. Reading
it writes nothing. Any problem is one :class:`UsageError` naming the file and the key (exit 2).

Light on purpose (no numpy): the CLI imports it before any work.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from edgeopt import targets
from edgeopt.conversion.defaults import CALIBRATION_METHODS, IO_DTYPES, WEIGHT_ROUNDINGS
from edgeopt.conversion.options import ConversionOptions
from edgeopt.errors import UsageError

__all__ = ["Model", "Recipe", "Sweep", "Cell", "load", "parse", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 1 << 20          # a sweep file is a few KiB; more is not a sweep file
MAX_ITEMS = 64                    # models, targets, recipes, devices: each
MAX_CELLS = 4096                  # models x targets x recipes
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

_TOP = {"name", "models", "targets", "recipes", "devices", "inventory", "bench"}
_MODEL = {"name", "path", "calib", "val", "input_shapes", "mean", "std"}
_RECIPE = {"name", "calibration", "accuracy_target", "max_float_layers", "per_channel", "bias_correction",
           "calib_percentile", "io", "allow_float_fallback", "min_cosine", "max_samples", "max_val_samples",
           "weight_rounding"}
_BENCH = {"warmup": int, "runs": int, "min_seconds": (int, float), "threads": int, "seed": int,
          "lock_timeout": (int, float)}


@dataclasses.dataclass(frozen=True)
class Model:
    """A model of the sweep with its data (absolute paths; ``calib`` may be ``"random"``)."""

    name: str
    path: str
    calib: str | None = None
    val: str | None = None
    input_shapes: tuple[str, ...] = ()
    mean: str | None = None
    std: str | None = None

    def convert_keywords(self) -> dict:
        """The data keywords of :func:`edgeopt.convert` this model gives."""
        kw = {"calib": self.calib, "val": self.val, "input_shapes": list(self.input_shapes) or None,
              "mean": self.mean, "std": self.std}
        return {k: v for k, v in kw.items() if v is not None}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A named set of conversion options (the keywords of :func:`edgeopt.convert`, those given only)."""

    name: str
    options: tuple[tuple[str, object], ...] = ()

    def convert_keywords(self) -> dict:
        """The recipe as :func:`edgeopt.convert` keywords."""
        return dict(self.options)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One conversion of the matrix: a model for a target with a recipe; ``devices`` are those it is benchmarked
    on (those of the sweep whose target matches, as ``deploy`` selects them)."""

    model: Model
    target: str
    recipe: Recipe
    devices: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        """``model.target.recipe``: unique in its sweep (names are plain, targets are profile names)."""
        return f"{self.model.name}.{self.target}.{self.recipe.name}"

    def convert_keywords(self) -> dict:
        """Everything :func:`edgeopt.devices.deploy.convert_cached` is given for this cell, beyond model/target."""
        return {**self.model.convert_keywords(), **self.recipe.convert_keywords()}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A checked sweep file."""

    path: str
    name: str
    models: tuple[Model, ...]
    targets: tuple[str, ...]
    recipes: tuple[Recipe, ...]
    devices: tuple[str, ...] = ()
    inventory: str | None = None
    bench: tuple[tuple[str, object], ...] = ()

    def cells(self, device_targets: dict | None = None) -> list[Cell]:
        """Every cell, models outermost. ``device_targets``: {device name: its target profile, or ``"*"`` for
        this machine, which runs every target}; a cell is benchmarked on the devices whose target is the cell's
        (deploy's rule)."""
        device_targets = device_targets or {}
        out = []
        for model in self.models:
            for target in self.targets:
                for recipe in self.recipes:
                    devs = tuple(d for d in self.devices if device_targets.get(d) == "*" or (
                        device_targets.get(d) and targets.in_family(device_targets[d], target)))
                    out.append(Cell(model=model, target=target, recipe=recipe, devices=devs))
        return out


def load(path: str) -> Sweep:
    """Read and check the sweep file at ``path`` (at most MAX_FILE_BYTES)."""
    p = Path(path)
    try:
        if not p.is_file():
            raise UsageError(f"{path}: no such file" if not p.exists() else f"{path}: not a file")
        with open(p, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise UsageError(f"{path}: over {MAX_FILE_BYTES >> 10} KiB: not a sweep file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text") from None
    return parse(text, path)


def _toml(text: str, path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: not valid TOML: {e}") from None
    except RecursionError:  # deeply nested arrays: the parser recurses
        raise UsageError(f"{path}: not valid TOML: nested too deeply") from None


def parse(text: str, path: str) -> Sweep:
    """Check the text of a sweep file; relative paths are taken from ``path``'s directory."""
    data = _toml(text, path)
    base = Path(path).resolve().parent
    where = os.fspath(path)

    def fail(msg: str):
        raise UsageError(f"{where}: {msg}", hint="the sweep file format is in docs/sweep.md")

    _known(data, _TOP, "", fail)
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not NAME.match(name):
        fail(f"name {str(name)[:80]!r}: letters, digits, '-' and '_' (at most 64)")

    models = [_model(m, i, base, fail) for i, m in enumerate(_list(data, "models", dict, fail, required=True))]
    tnames = []
    for t in _list(data, "targets", str, fail, required=True):
        try:
            tnames.append(targets.get(t).name)
        except KeyError as e:
            fail(f"targets: {e.args[0]}")
    recipes = [_recipe(r, i, fail) for i, r in enumerate(_list(data, "recipes", dict, fail))] or [Recipe("default")]
    devices = _list(data, "devices", str, fail)
    for d in devices:
        if d != "local" and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", d):
            fail(f"devices: {d[:80]!r} is not a device name")
    for what, names in (("models", [m.name for m in models]), ("targets", tnames),
                        ("recipes", [r.name for r in recipes]), ("devices", devices)):
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            fail(f"{what}: {dup[0]!r} twice")
    if len(models) * len(tnames) * len(recipes) > MAX_CELLS:
        fail(f"{len(models)} models x {len(tnames)} targets x {len(recipes)} recipes: over {MAX_CELLS} cells")
    inventory = data.get("inventory")
    if inventory is not None:
        if not isinstance(inventory, str) or not inventory:
            fail("inventory: a path")
        inventory = _path(inventory, base, "inventory", fail)
    bench = data.get("bench", {})
    if not isinstance(bench, dict):
        fail("bench: a table")
    _known(bench, set(_BENCH), "bench.", fail)
    for k, v in bench.items():
        if isinstance(v, bool) or not isinstance(v, _BENCH[k]) or not 0 <= v <= (10**6):
            fail(f"bench.{k}: a number from 0 to 1000000")
    return Sweep(path=str(Path(path).resolve()), name=name, models=tuple(models), targets=tuple(tnames),
                 recipes=tuple(recipes), devices=tuple(devices), inventory=inventory,
                 bench=tuple(sorted(bench.items())))


def _known(table: dict, keys: set, prefix: str, fail):
    unknown = sorted(set(table) - keys)
    if unknown:
        fail(f"unknown key {prefix}{str(unknown[0])[:80]!r} (known: {', '.join(sorted(keys))})")


def _list(data: dict, key: str, kind, fail, required: bool = False) -> list:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        fail(f"{key}: a list of {'tables' if kind is dict else 'strings'}")
    if required and not value:
        fail(f"{key}: at least one is needed")
    if len(value) > MAX_ITEMS:
        fail(f"{key}: {len(value)} entries, at most {MAX_ITEMS}")
    return value


def _path(value: str, base: Path, key: str, fail) -> str:
    if "\0" in value or len(value) > 4096:
        fail(f"{key}: not a path")
    p = Path(os.path.expanduser(value))
    p = p if p.is_absolute() else base / p
    if not p.exists():
        fail(f"{key}: {value[:200]}: no such file or directory")
    return str(p)


def _model(m: dict, i: int, base: Path, fail) -> Model:
    key = f"models[{i}]"
    _known(m, _MODEL, f"{key}.", fail)
    path = m.get("path")
    if not isinstance(path, str) or not path:
        fail(f"{key}.path: the model file is required")
    path = _path(path, base, f"{key}.path", fail)
    name = m.get("name", Path(path).name.split(".")[0])
    if not isinstance(name, str) or not NAME.match(name):
        fail(f"{key}.name {str(name)[:80]!r}: letters, digits, '-' and '_' (at most 64)")
    data = {}
    for k in ("calib", "val"):
        v = m.get(k)
        if v is None:
            continue
        if not isinstance(v, str) or not v:
            fail(f"{key}.{k}: a path or 'random'")
        data[k] = v if (k == "calib" and v == "random") else _path(v, base, f"{key}.{k}", fail)
    shapes = m.get("input_shapes", [])
    if not isinstance(shapes, list) or not all(isinstance(s, str) and re.match(r"^[^=]{1,256}=[0-9,]{1,64}$", s)
                                               for s in shapes) or len(shapes) > MAX_ITEMS:
        fail(f"{key}.input_shapes: a list of 'NAME=1,3,224,224'")
    for k in ("mean", "std"):
        v = m.get(k)
        if v is not None and (not isinstance(v, str) or not re.match(r"^[-0-9.eE, ]{1,200}$", v)):
            fail(f"{key}.{k}: per-channel numbers, e.g. '0.485,0.456,0.406'")
    return Model(name=name, path=path, calib=data.get("calib"), val=data.get("val"), input_shapes=tuple(shapes),
                 mean=m.get("mean"), std=m.get("std"))


def _recipe(r: dict, i: int, fail) -> Recipe:
    key = f"recipes[{i}]"
    _known(r, _RECIPE, f"{key}.", fail)
    name = r.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        fail(f"{key}.name: required; letters, digits, '-' and '_' (at most 64)")
    opts = {}
    method = r.get("calibration")
    if method is not None:
        if method not in CALIBRATION_METHODS:
            fail(f"{key}.calibration {str(method)[:80]!r}: one of {', '.join(CALIBRATION_METHODS)}")
        opts["calibration_method"] = method
    rounding = r.get("weight_rounding")
    if rounding is not None:
        if rounding not in WEIGHT_ROUNDINGS:
            fail(f"{key}.weight_rounding {str(rounding)[:80]!r}: one of {', '.join(WEIGHT_ROUNDINGS)}")
        opts["weight_rounding"] = rounding
    for k in ("per_channel", "bias_correction", "allow_float_fallback"):
        if k in r:
            if not isinstance(r[k], bool):
                fail(f"{key}.{k}: true or false")
            opts[k] = r[k]
    for k in ("accuracy_target", "max_float_layers"):
        if k in r:
            if not isinstance(r[k], (str, int)) or isinstance(r[k], bool) or len(str(r[k])) > 200:
                fail(f"{key}.{k}: a string such as {'top1=0.99' if k == 'accuracy_target' else '10%'}")
            opts[k] = r[k]
    for k, lo, hi in (("calib_percentile", 50, 100), ("min_cosine", 0, 1)):
        if k in r:
            if isinstance(r[k], bool) or not isinstance(r[k], (int, float)) or not lo <= r[k] <= hi:
                fail(f"{key}.{k}: a number from {lo} to {hi}")
            opts[k] = float(r[k])
    for k in ("max_samples", "max_val_samples"):
        if k in r:
            if isinstance(r[k], bool) or not isinstance(r[k], int) or not 1 <= r[k] <= 10**6:
                fail(f"{key}.{k}: a whole number from 1 to 1000000")
            opts[k] = r[k]
    if "io" in r:
        if r["io"] not in IO_DTYPES:
            fail(f"{key}.io: one of {', '.join(IO_DTYPES)}")
        opts["io"] = r["io"]
    try:  # the checks of edgeopt.convert itself (a target's spelling, a budget without a target), now
        ConversionOptions.from_keywords(**{k: v for k, v in opts.items() if k in ConversionOptions.KEYWORDS})
    except UsageError as e:
        fail(f"{key}: {e.message}")
    return Recipe(name=name, options=tuple(sorted(opts.items())))
