"""The options of a conversion as typed, frozen objects: :class:`Recipe` (what a converter route consumes and
accuracy recovery varies) and :class:`ConversionOptions` (the recipe and the rest of what the user asked for).

One object serves :func:`edgeopt.convert` and the CLI (:meth:`ConversionOptions.from_keywords` reads their
keywords, :meth:`ConversionOptions.keywords` writes them back), deploy's cache key (the keywords, so that the
same request gives the same key), the manifest (:meth:`Recipe.to_manifest`, :meth:`ConversionOptions.to_manifest`)
and the converters (``job.recipe``; a recovery candidate is a :meth:`Recipe.replace`, never a changed job).

Light on purpose (no numpy): the CLI and ``import edgeopt`` may import it.
"""
from __future__ import annotations

import dataclasses
import re

from edgeopt.conversion.defaults import (
    CALIBRATION_METHODS,
    DEFAULT_BIAS_CORRECTION,
    DEFAULT_PERCENTILE,
    WEIGHT_ROUNDINGS,
)
from edgeopt.errors import UsageError

__all__ = ["Recipe", "ConversionOptions", "parse_target", "parse_max_float_layers", "target_str"]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a route quantizes: activation ranges, weight granularity and rounding, bias correction and the layers
    kept in float. The defaults are the converters' bare recipe (min-max, per-channel, nearest rounding, no bias
    correction, all INT8); the user-facing defaults (``auto``, GPTQ, bias correction) are
    :meth:`ConversionOptions.from_keywords`'s."""

    calibration_method: str = "minmax"
    per_channel: bool = True
    bias_correction: bool = False
    calib_percentile: float | None = None   # percentile calibration's percentile (None: DEFAULT_PERCENTILE)
    histogram_samples: int | None = None    # calibration samples histogram methods see (percentile, entropy)
    float_layers: tuple[str, ...] = ()      # layers (TFLite tensors / ONNX nodes) kept in float
    weight_rounding: str = "nearest"        # WEIGHT_ROUNDINGS: "gptq", the converters' own "nearest", "gptq_act"

    def __post_init__(self):
        # a list given by a caller would make the frozen object mutable through the back door
        object.__setattr__(self, "float_layers", tuple(self.float_layers))

    def replace(self, **changes) -> Recipe:
        """A copy with ``changes`` (dataclasses.replace): how recovery makes a candidate recipe."""
        return dataclasses.replace(self, **changes)

    def to_manifest(self) -> dict:
        """The manifest's ``calibration.recipe`` (docs/manifest.md): the float layers as a count, ``percentile``
        and ``calibration_samples`` only where they apply."""
        r = {"calibration_method": self.calibration_method, "per_channel": bool(self.per_channel),
             "float_layers": len(self.float_layers)}
        r["bias_correction"] = bool(self.bias_correction)
        r["weight_rounding"] = self.weight_rounding
        if self.calibration_method == "percentile":
            r["percentile"] = float(self.calib_percentile or DEFAULT_PERCENTILE)
        if self.histogram_samples and self.calibration_method != "minmax":
            r["calibration_samples"] = int(self.histogram_samples)
        return r

    @classmethod
    def from_manifest(cls, recipe: dict, float_layers=None) -> Recipe:
        """The recipe a manifest's ``calibration.recipe`` describes. The manifest counts the float layers;
        their names (``recovery.chosen.float_layers``) are ``float_layers``, required when the count is not 0."""
        names = tuple(float_layers or ())
        count = int(recipe.get("float_layers") or 0)
        if count != len(names):
            raise ValueError(f"the recipe keeps {count} layers in float; {len(names)} names were given")
        method = recipe.get("calibration_method") or "minmax"
        return cls(calibration_method=method, per_channel=bool(recipe.get("per_channel", True)),
                   bias_correction=bool(recipe.get("bias_correction")),
                   calib_percentile=recipe.get("percentile") if method == "percentile" else None,
                   histogram_samples=recipe.get("calibration_samples"), float_layers=names,
                   weight_rounding=recipe.get("weight_rounding") or "nearest")


# edgeopt.convert's keywords that set a Recipe field (the others of ConversionOptions are fields of their own)
_RECIPE_KEYWORDS = ("calibration_method", "per_channel", "bias_correction", "calib_percentile", "histogram_samples",
                    "weight_rounding")


@dataclasses.dataclass(frozen=True)
class ConversionOptions:
    """Everything a conversion was asked for beyond its data, I/O and gates: the recipe, the accuracy target
    and what recovery may do to meet it, and what the source model may do (``trust_model_code``)."""

    recipe: Recipe = Recipe()
    accuracy_target: dict | None = None     # parse_target's {"top1": 0.99, "sqnr": 30.0}
    max_float_layers: dict | None = None    # parse_max_float_layers' {"layers": N} or {"percent": P}
    allow_cpu_ops: bool = False
    allow_float_fallback: bool = False
    explain: bool = False
    trust_model_code: bool = False

    KEYWORDS = frozenset(_RECIPE_KEYWORDS + ("accuracy_target", "max_float_layers", "allow_cpu_ops",
                                             "allow_float_fallback", "explain", "trust_model_code"))

    def replace(self, **changes) -> ConversionOptions:
        """A copy with ``changes`` (dataclasses.replace)."""
        return dataclasses.replace(self, **changes)

    def with_recipe(self, **changes) -> ConversionOptions:
        """A copy whose recipe has ``changes``."""
        return dataclasses.replace(self, recipe=self.recipe.replace(**changes))

    @classmethod
    def from_keywords(cls, **keywords) -> ConversionOptions:
        """The options :func:`edgeopt.convert`'s keywords (and the CLI's flags) ask for, the user-facing
        defaults filled in: ``calibration_method`` auto, ``weight_rounding`` gptq_act, bias correction
        DEFAULT_BIAS_CORRECTION.

        None means "the default" for every keyword. A keyword not in KEYWORDS is a TypeError naming it (a
        misspelt option must not be silently ignored); a bad ``accuracy_target`` or ``max_float_layers``, or
        ``max_float_layers`` without a target, is a UsageError. The calibration method is not checked here:
        the pipeline checks it against the target; the weight rounding is (a UsageError)."""
        unknown = sorted(set(keywords) - cls.KEYWORDS)
        if unknown:
            raise TypeError(f"convert() got unexpected keyword argument(s): {', '.join(unknown)}")
        target = parse_target(keywords.get("accuracy_target"))
        budget = parse_max_float_layers(keywords.get("max_float_layers"))
        if budget is not None and not target:  # it bounds recovery only: without a target it would be ignored
            raise UsageError("--max-float-layers bounds --accuracy-target's recovery; give --accuracy-target too")
        bias = keywords.get("bias_correction")
        rounding = keywords.get("weight_rounding") or WEIGHT_ROUNDINGS[0]
        if rounding not in WEIGHT_ROUNDINGS:
            raise UsageError(f"--weight-rounding {rounding!r}: expected one of {', '.join(WEIGHT_ROUNDINGS)}")
        per_channel = keywords.get("per_channel")
        recipe = Recipe(calibration_method=keywords.get("calibration_method") or CALIBRATION_METHODS[0],
                        per_channel=True if per_channel is None else bool(per_channel),
                        bias_correction=DEFAULT_BIAS_CORRECTION if bias is None else bool(bias),
                        calib_percentile=keywords.get("calib_percentile"),
                        histogram_samples=keywords.get("histogram_samples"), weight_rounding=rounding)
        return cls(recipe=recipe, accuracy_target=target, max_float_layers=budget,
                   allow_cpu_ops=bool(keywords.get("allow_cpu_ops")),
                   allow_float_fallback=bool(keywords.get("allow_float_fallback")),
                   explain=bool(keywords.get("explain")), trust_model_code=bool(keywords.get("trust_model_code")))

    def keywords(self) -> dict:
        """The :func:`edgeopt.convert` keywords that give these options, those at their default left out (the
        CLI passes only what was given, so the same request keeps the same deploy cache key). The inverse of
        :meth:`from_keywords` for options of a conversion not yet run (float layers are recovery's)."""
        r, res = self.recipe, {}
        if self.accuracy_target:
            res["accuracy_target"] = dict(self.accuracy_target)
        if self.max_float_layers is not None:
            res["max_float_layers"] = _budget_spec(self.max_float_layers)
        for name in ("allow_cpu_ops", "allow_float_fallback", "explain", "trust_model_code"):
            if getattr(self, name):
                res[name] = True
        if r.calibration_method != CALIBRATION_METHODS[0]:
            res["calibration_method"] = r.calibration_method
        if not r.per_channel:
            res["per_channel"] = False
        if r.bias_correction != DEFAULT_BIAS_CORRECTION:
            res["bias_correction"] = r.bias_correction
        if r.calib_percentile is not None:
            res["calib_percentile"] = r.calib_percentile
        if r.histogram_samples is not None:
            res["histogram_samples"] = r.histogram_samples
        if r.weight_rounding != WEIGHT_ROUNDINGS[0]:
            res["weight_rounding"] = r.weight_rounding
        return res

    def to_manifest(self) -> dict:
        """What the manifest's ``options`` records of these (beside ``io`` and ``input_shapes``, which are the
        pipeline's): ``allow_float_fallback`` always, the others only when set. The accuracy target is added
        by the pipeline with the recovery report it belongs to."""
        res = {"allow_float_fallback": bool(self.allow_float_fallback)}
        if self.allow_cpu_ops:
            res["allow_cpu_ops"] = True
        if self.max_float_layers is not None:
            res["max_float_layers"] = self.max_float_layers
        if self.trust_model_code:
            res["trust_model_code"] = True
        return res


def _budget_spec(budget: dict):
    """parse_max_float_layers' result back as the keyword that gives it: N or "P%"."""
    return budget["layers"] if "layers" in budget else f"{budget['percent']:g}%"


# ------------------------------------------------------------------------ the values of two keywords

_KEYS = {"top1": "top1", "top1_agreement": "top1", "sqnr": "sqnr", "sqnr_db": "sqnr"}


def parse_target(spec) -> dict | None:
    """'top1=0.99' / 'sqnr=30' / 'top1=0.98,sqnr=25' (or a dict) -> {'top1': 0.99, 'sqnr': 30.0}."""
    if spec is None or spec == "" or spec == {}:
        return None
    items = spec.items() if isinstance(spec, dict) else [p.split("=", 1) if "=" in p else (p, None)
                                                          for p in re.split(r"[,\s]+", str(spec).strip()) if p]
    res = {}
    for k, v in items:
        key = _KEYS.get(str(k).strip().lower())
        try:
            val = float(v)
        except (TypeError, ValueError):
            val = None
        if key is None or val is None:
            raise UsageError(f"--accuracy-target {spec!r}: expected top1=FRACTION and/or sqnr=DB, "
                             "e.g. top1=0.99 or sqnr=30")
        if key == "top1" and not 0 < val <= 1:
            raise UsageError(f"--accuracy-target {spec!r}: top1 is a fraction in (0, 1], e.g. top1=0.99")
        res[key] = val
    return res


def target_str(target: dict) -> str:
    """A parsed target as the flag spells it: 'top1=0.99,sqnr=30'."""
    return ",".join(f"{k}={v:g}" for k, v in target.items())


def parse_max_float_layers(spec) -> dict | None:
    """``--max-float-layers``: N (an integer >= 0) or P% (0..100) -> {"layers": N} or {"percent": P};
    None: the default (recover.DEFAULT_FLOAT_BUDGET percent)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, bool):
        raise UsageError(f"--max-float-layers {spec!r}: expected a number of layers (e.g. 3) or a percentage "
                         "(e.g. 10%)")
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            pct = float(text[:-1])
            if not 0 <= pct <= 100 or pct != pct:
                raise ValueError
            return {"percent": pct}
        n = float(text)
        if n != int(n) or n < 0:
            raise ValueError
        return {"layers": int(n)}
    except (ValueError, OverflowError):  # OverflowError: int(float("inf"))
        raise UsageError(f"--max-float-layers {spec!r}: expected a number of layers >= 0 (e.g. 3) or a percentage "
                         "of the quantizable layers (e.g. 10%)") from None
