"""Accuracy recovery behind ``--accuracy-target``: find the layers that lose accuracy in INT8 and fix it.

1. Calibration recipes, cheapest first, where the backend has them: min-max (the plain recipe), then for
   ONNX QDQ percentile (edgeopt.conversion.ranges, 99.99) and entropy calibration (onnxruntime's calibrators; entropy only when
   percentile raised the output SQNR, as both clip activation outliers). The TFLite converter calibrates
   with min-max only. QDQ candidates reuse one calibration per recipe (onnx_qdq._reuse_calibration).
2. Bias correction (TFLite and QDQ): each convolution's bias absorbs the mean shift its INT8 weights cause
   (b - dW . E[x]); weights, ranges and kernels are unchanged, so size and latency are too. On
   EfficientNet-Lite0, where per-channel INT8 weights alone cost ~18 dB of output SQNR spread over all 50
   convolutions, this gains ~3.5 dB. Then the route's costlier all-INT8 weight roundings (gptq_act,
   weights fitted layer after layer to the INT8 model's inputs).
3. Per-layer error of the best recipe (TFLite: tf.lite.experimental.QuantizationDebugger; ONNX: QDQ vs.
   float intermediate tensors, edgeopt.converters.debug_onnx), ranked.
4. End-to-end sensitivity: the first SENS_CANDIDATES layers of that ranking are each kept in float alone and
   the gain in output SQNR is measured (the per-layer metric says where error is made, not how much of it
   reaches the output). Then prefixes of that order until the target is met, and bisection (TFLite:
   denylisted nodes run as float kernels on the CPU - rpi, or Coral with ``allow_cpu_ops``; ONNX:
   ``nodes_to_exclude`` with float inputs (onnx_qdq.float_inputs), which TensorRT runs in FP16). Output
   SQNR is the search signal; top-1 on ~100-200 samples is too coarse (and dominated by samples FP32 itself
   nearly ties on), so it only checks the target: a float-layer candidate is taken only if its output SQNR is
   above the all-INT8 one's.

Float layers are bounded: at most ``--max-float-layers`` (default DEFAULT_FLOAT_BUDGET of the float
candidates, rounded down, at least 1), and with the default budget no artifact over MAX_SIZE_RATIO of the
FP32 model's size is returned. A target that cannot be met within the budget returns the best all-INT8
artifact, and the report says what the best float-layer candidate reached and, for an ONNX source, what INT8
weights alone reach with the activations in float (:func:`weights_only_reference`): whether the loss is the
activations' INT8, which no weight recipe recovers.

Honest statistics (:func:`split_samples`, :func:`confirm`): the validation samples are split, interleaved,
into a selection part (even indices: recipes, the per-layer ranking, the sensitivity order and every
candidate are judged on it) and a confirmation part (odd indices: no choice sees it). The target is checked,
and the accuracy claimed, on the confirmation part, with the 95% Wilson interval of its top-1 agreement. A
top-1 target the confirmation part cannot resolve is refused before converting. Every candidate is run in
edgeopt.runtime, like the plain artifact; size and 1-thread latency (edgeopt.runtime.bench on this host) of
the chosen one are reported.

This module is the search only. What depends on the artifact's route (rebuilding it with a recipe, the
per-layer error, which layers may be kept in float, which calibration methods to try) is the route's: the
hooks of its converter module, found by artifact kind (edgeopt.converters.HOOKS). A candidate is a
:class:`edgeopt.conversion.options.Recipe`, float layers included, handed to the route's ``rebuild``.
"""
from __future__ import annotations

import math
import os

import numpy as np

from edgeopt import converters, runtime
from edgeopt.conversion.accuracy import gate
from edgeopt.conversion.options import parse_max_float_layers, parse_target, target_str
from edgeopt.converters import edgetpu
from edgeopt.errors import UsageError

__all__ = ["TOP_LAYERS", "DEBUG_SAMPLES", "DEFAULT_FLOAT_BUDGET", "MAX_SIZE_RATIO", "parse_target",
           "parse_max_float_layers", "float_budget", "split_samples", "confirmation_needed", "confirm", "reject_float",
           "failures", "tie_band", "weights_only_reference",
           "meets", "score", "target_str", "wilson", "brief_accuracy", "layers", "float_layer_policy", "recover",
           "step_entry"]

TOP_LAYERS = 20          # layers kept in the manifest
DEBUG_SAMPLES = 32       # samples the per-layer report runs on
MAX_ATTEMPTS = 12        # prefixes of the sensitivity order tried (and as many bisection steps)
SENS_CANDIDATES = 20     # worst layers of the per-layer ranking whose end-to-end effect is measured
HISTOGRAM_SAMPLES = 64   # calibration samples percentile/entropy calibration histograms (minutes per recipe)
ENTROPY_IF_DB = 0.5      # entropy calibration only when percentile gained at least this much output SQNR
DEFAULT_FLOAT_BUDGET = 10.0  # percent of the float candidates recovery may keep in float by default
MAX_SIZE_RATIO = 0.4     # with the default budget, no artifact over this fraction of the FP32 model's size
MIN_DISAGREEMENTS = 2    # a top-1 target must allow this many disagreements among the confirmation samples

def failures(outputs: dict, target: dict) -> list[str]:
    """What misses the target (empty list: met), one line per output and criterion."""
    return gate(outputs, target.get("sqnr"), target.get("top1"))


def meets(outputs: dict, target: dict) -> bool:
    return not failures(outputs, target)


def score(outputs: dict, target: dict) -> float:
    """Smallest margin to the target over outputs and criteria (>= 0: met); for picking the best miss."""
    margins = []
    for m in outputs.values():
        if "top1" in target and "top1_agreement" in m:
            margins.append(m["top1_agreement"] - target["top1"])
        if "sqnr" in target:
            margins.append((m["sqnr_db"] - target["sqnr"]) / 100.0)
    return min(margins) if margins else 0.0


def tie_band(outputs: dict, target: dict, n: int | None) -> float:
    """How far apart two candidates' :func:`score` may be and still tie: for a top-1 target, one binomial standard
    error of the lowest top-1 agreement on ``n`` samples (a sample or two either way is noise there; MobileNetV2
    jetson, 100 selection crops: gptq_act 0.85 / 19.1 dB against GPTQ's 0.86 / 18.3, and 0.93 / 19.0 against 0.85
    / 17.0 on 200 held-out crops); 0 otherwise (exact ties only). Ties go to the higher output SQNR."""
    tops = [m["top1_agreement"] for m in outputs.values() if "top1_agreement" in m]
    if "top1" not in target or not n or not tops:
        return 0.0
    p = min(tops)
    return math.sqrt(p * (1 - p) / n)


def wilson(p: float, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval of a proportion p measured on n samples."""
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def brief_accuracy(acc: dict) -> dict:
    """Per output: only top-1 agreement, SQNR and cosine (the numbers the recovery report shows)."""
    return {n: {k: m[k] for k in ("top1_agreement", "sqnr_db", "cosine") if k in m} for n, m in acc.items()}


# ------------------------------------------------------------------------- float budget, honest statistics

def float_budget(spec: dict | None, candidates: int) -> tuple[int, str]:
    """(most layers recovery may keep in float, how that number came about) for ``candidates`` float
    candidates (the quantizable layers recovery ranks). A percentage is rounded down, and is at least 1
    when above 0, so that a small model can still keep its one worst layer in float."""
    if spec is not None and "layers" in spec:
        return min(spec["layers"], candidates), f"--max-float-layers {spec['layers']}"
    pct = DEFAULT_FLOAT_BUDGET if spec is None else spec["percent"]
    n = min(candidates, max(1, int(math.floor(pct * candidates / 100.0 + 1e-9)))) if pct > 0 else 0
    return n, (("the default, " if spec is None else "") + f"--max-float-layers {pct:g}% of the {candidates} "
               "quantizable layers, rounded down" + (", at least 1" if pct > 0 else ""))


def confirmation_needed(top1: float) -> int | None:
    """Confirmation samples a top-1 target needs (None: no count suffices, top1=1). The rule: the target must
    allow at least MIN_DISAGREEMENTS disagreements with FP32 among them (n * (1 - top1) >= 2, i.e. a
    resolution 1/n no coarser than half the allowed disagreement), so that the verdict is a measured
    fraction, not decided by whether one sample (often one FP32 itself nearly ties on) flips."""
    if top1 >= 1.0:
        return None
    return int(math.ceil(MIN_DISAGREEMENTS / (1.0 - top1) - 1e-9))


def split_samples(n: int, target: dict | None, max_val_samples: int | None = None) -> dict:
    """Interleaved halves of ``n`` validation samples: {"selection": even indices, "confirmation": odd
    indices} (numpy index arrays). UsageError when the confirmation half cannot resolve ``target``."""
    spec = target_str(target) if target else ""
    if n < 2:
        raise UsageError(f"--accuracy-target {spec}: {_n(n, 'validation sample')}; at least 2 are needed (one half "
                         "selects the recipe and layers, the other confirms the target)",
                         hint="give validation data with --val")
    sel, conf = np.arange(0, n, 2), np.arange(1, n, 2)
    top1 = (target or {}).get("top1")
    if top1 is not None:
        need = confirmation_needed(top1)
        if need is None:
            raise UsageError(f"--accuracy-target {spec}: top1=1 allows no disagreement with FP32, so no number of "
                             "samples can confirm it", hint="use a top-1 target below 1, e.g. top1=0.99 "
                                                             f"(needs {2 * confirmation_needed(0.99)} validation "
                                                             "samples)")
        if len(conf) < need:
            fits = 1.0 - MIN_DISAGREEMENTS / len(conf) if len(conf) > MIN_DISAGREEMENTS else None
            more = (f"; --max-val-samples is {max_val_samples}" if max_val_samples and 2 * need > max_val_samples
                    else "")
            raise UsageError(f"--accuracy-target {spec}: {n} validation samples cannot resolve it: half of them "
                             f"({len(conf)}) confirm the target, and top-1 agreement on {len(conf)} samples moves in "
                             f"steps of {1 / len(conf):.3g}, coarser than half the disagreement the target allows "
                             f"({(1 - top1) / 2:.3g}); {2 * need} validation samples are needed "
                             f"({need} to confirm){more}",
                             hint=f"give at least {2 * need} samples with --val"
                                  + (f" and --max-val-samples {2 * need}" if more else "")
                                  + (f", or lower the target to top1={math.floor(fits * 1000) / 1000:g}"
                                     if fits else ""))
    return {"selection": sel, "confirmation": conf}


def confirm(report: dict, target: dict, selection_acc: dict, confirmation_acc: dict, n_selection: int,
            n_confirmation: int) -> dict:
    """Make the recovery report's claim the confirmation part's: ``chosen.accuracy``, ``top1_ci95`` and
    ``met`` from the samples no choice saw; the selection part's numbers are kept beside them."""
    chosen = report["chosen"]
    sel = {"samples": n_selection, "accuracy": brief_accuracy(selection_acc), "met": meets(selection_acc, target)}
    chosen.pop("validation_samples", None)
    chosen["accuracy"] = brief_accuracy(confirmation_acc)
    chosen["confirmation_samples"] = n_confirmation
    for acc, where, n in ((confirmation_acc, chosen, n_confirmation), (selection_acc, sel, n_selection)):
        ci = {k: wilson(m["top1_agreement"], n) for k, m in acc.items() if "top1_agreement" in m}
        if ci:
            where["top1_ci95"] = ci
    chosen["selection"] = sel
    report["split"] = {"method": "interleaved halves of the validation samples: even indices (0, 2, ...) select the "
                                 "recipe and float layers, odd indices (1, 3, ...) confirm the target",
                       "selection_samples": n_selection, "confirmation_samples": n_confirmation,
                       "validation_samples": n_selection + n_confirmation}
    report["met"] = meets(confirmation_acc, target)
    if not report["met"] and sel["met"]:
        report["unmet"] = (f"the chosen recipe met {target_str(target)} on the {n_selection} selection samples but "
                           f"not on the {n_confirmation} confirmation samples ("
                           + "; ".join(failures(confirmation_acc, target)) + "): the margin was within the noise of "
                           "that many samples")
    elif report["met"]:
        report.pop("unmet", None)
    report["note"] = ("the recipe and float layers were selected on the selection samples; the target is checked, "
                      "and chosen.accuracy measured, on the confirmation samples, which no choice saw"
                      + ("; top1_ci95 is the 95% (Wilson) interval of top-1 agreement on those samples"
                         if "top1_ci95" in chosen else ""))
    return report


# ------------------------------------------------------------------------------------- per-layer error

def layers(job, art: dict, samples: list[list]) -> dict:
    """Per-layer error report of an artifact of ``job`` (made by its converter in this process), on the first
    DEBUG_SAMPLES of ``samples``: the ``layer_errors`` hook of its route."""
    return _hooks(art).layer_errors(job, art, samples[:DEBUG_SAMPLES])


def _hooks(art: dict):
    """The recovery hooks of the route that made ``art`` (edgeopt.converters.HOOKS, by artifact kind)."""
    return converters.hooks(art["kind"])


# ------------------------------------------------------------------------------------------- recovery

def float_layer_policy(target, fmt: str, allow_cpu_ops: bool = False) -> tuple[bool, bool]:
    """(float_ok, search_anyway) for keeping layers in float, from the target's ``float_fallback``.

    float_ok: recovery may apply float layers. An ONNX (QDQ) layer left in float runs in FP16 in TensorRT, so
    it always may; a TFLite one only where float ops run with the INT8 ones ("allowed"), or where they leave
    the accelerator ("cpu") and the user said ``--allow-cpu-ops``. search_anyway: without that flag, still find
    what it would take, to report it, and apply nothing."""
    leaves_accelerator = target.float_fallback == "cpu"
    float_ok = fmt == "onnx" or target.float_fallback == "allowed" or (leaves_accelerator and allow_cpu_ops)
    return float_ok, leaves_accelerator and not allow_cpu_ops


def recover(job, art: dict, acc: dict, target: dict, evaluate, allow_cpu_ops: bool = False,
            progress=None, samples=None, n_val: int | None = None,
            max_float_layers: dict | None = None, n_selection: int | None = None) -> tuple[dict, dict, dict, dict | None]:
    """(artifact, accuracy, report, all-INT8 fallback). ``evaluate(art) -> (accuracy, path)`` runs a candidate on
    the selection samples. The returned artifact is the first that meets the target with the fewest float layers,
    at most ``max_float_layers`` of them (:func:`parse_max_float_layers`; None: the default budget, and no
    artifact over MAX_SIZE_RATIO of the FP32 size), or else the best all-INT8 one tried. When the artifact keeps
    float layers, the fallback is the best all-INT8 candidate ({"art", "acc", "recipe", "float"}): what
    :func:`reject_float` returns instead if the confirmation samples do not bear the float layers out.
    ``n_selection``: how many samples ``evaluate`` runs; all-INT8 candidates whose top-1 agreement differs by
    no more than its standard error there are ranked by output SQNR (:func:`tie_band`)."""

    say = progress or (lambda m: None)
    hooks = _hooks(art)
    steps = []
    plain = {"art": art, "acc": acc, "recipe": job.recipe, "float": []}
    steps.append(step_entry(plain, target))
    best = plain
    report = {"target": target, "target_str": target_str(target), "steps": steps}

    def better(c):
        a, b = score(c["acc"], target), score(best["acc"], target)
        if abs(a - b) <= tie_band(best["acc"], target, n_selection):
            return _out_sqnr(c["acc"]) > _out_sqnr(best["acc"])
        return a > b

    def build(recipe):
        """A candidate: the route's artifact made again with ``recipe``, measured on the selection samples."""
        c = {"art": hooks.rebuild(job, art, recipe), "recipe": recipe, "float": list(recipe.float_layers)}
        c["acc"] = evaluate(c["art"])[0]
        return c

    # 1. calibration recipes, in order of cost (those the route offers)
    if not meets(acc, target):
        for method in hooks.RECOVERY_METHODS:
            if method == job.recipe.calibration_method:
                continue  # the plain recipe
            if method == "entropy" and _out_sqnr(steps[-1]["accuracy"]) < _out_sqnr(acc) + ENTROPY_IF_DB:
                # both clip outliers of the activation ranges; when percentile clipping does not help, outliers
                # are not what is lost and entropy (minutes: histograms of every tensor) is not tried
                steps.append({"recipe": job.recipe.replace(calibration_method=method).to_manifest(),
                              "skipped": f"percentile clipping raised output SQNR by less than {ENTROPY_IF_DB} dB "
                                         "over min-max"})
                continue
            say(f"accuracy recovery: {method} calibration")
            c = build(job.recipe.replace(calibration_method=method, histogram_samples=HISTOGRAM_SAMPLES))
            steps.append(step_entry(c, target))
            if better(c):
                best = c
            if meets(c["acc"], target):
                break

    if not meets(best["acc"], target) and not best["recipe"].bias_correction:  # unless the plain has it
        say("accuracy recovery: bias correction")
        try:
            c = build(best["recipe"].replace(bias_correction=True))
            st = step_entry(c, target)
            st["bias_correction"] = hooks.bias_correction_info(job)
            steps.append(st)
            if better(c) or meets(c["acc"], target):
                best = c
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - a recipe the model does not take: note it, go on
            steps.append({"recipe": job.recipe.replace(bias_correction=True).to_manifest(),
                          "error": str(e).strip().splitlines()[-1][:200]})

    # costlier all-INT8 weight roundings the route offers (gptq_act), on the best recipe so far
    for rounding in hooks.RECOVERY_ROUNDINGS:
        if meets(best["acc"], target) or best["recipe"].weight_rounding == rounding:
            break
        say(f"accuracy recovery: {rounding} weight rounding")
        c = build(best["recipe"].replace(weight_rounding=rounding))
        steps.append(step_entry(c, target))
        if better(c) or meets(c["acc"], target):
            best = c

    if not meets(best["acc"], target) or job.options.explain:
        # 2. per-layer error of the best recipe so far
        say("accuracy recovery: per-layer error")
        report["layers"] = layers(job, best["art"], samples)
        ranked = hooks.float_candidates(report["layers"])
    else:
        ranked = []

    all_int8 = best  # what is returned if no float-layer candidate is taken, or confirmed

    # 3. float layers, fewest first, within the budget
    float_ok, search_anyway = float_layer_policy(job.target, art["format"], allow_cpu_ops)
    if ranked and not meets(best["acc"], target) and (float_ok or search_anyway):
        budget, why = float_budget(max_float_layers, len(ranked))
        # the blocks the route already keeps in float (TFLite on rpi: normalization blocks, output activations)
        # count against the same budget
        fb = art.get("float_blocks") or {}
        blocks = len(fb.get("blocks") or []) if fb.get("float") else 0
        if blocks:
            budget, why = max(0, budget - blocks), why + f", less the {_n(blocks, 'float block')} kept in float"
        report["budget"] = {"max_float_layers": budget, "float_candidates": len(ranked), "rule": why}
        fp32 = report["budget"]["fp32_bytes"] = hooks.fp32_bytes(job)
        max_bytes = None
        if max_float_layers is None:  # the default budget: no float model in disguise either
            max_bytes = int(MAX_SIZE_RATIO * fp32)
            report["budget"].update(max_bytes=max_bytes, max_size_ratio=MAX_SIZE_RATIO)
        base = best["recipe"]  # float layers on top of the best all-INT8 recipe
        found = (_search(lambda floats: build(base.replace(float_layers=tuple(floats))), best, ranked, target, say,
                         steps, report, budget=budget, max_bytes=max_bytes) if budget else None)
        reached = found is not None and _fits(found, target, max_bytes, _out_sqnr(all_int8["acc"]))
        if found is not None:
            report["best_float"] = {"float_layers": list(found["float"]), "accuracy": brief_accuracy(found["acc"]),
                                    "bytes": len(found["art"]["data"]), "met": reached}
        if found is not None and not float_ok:
            report["needs_cpu_ops"] = _coral_cost(found, evaluate)
        elif reached:
            best = found
        if not reached:
            report["unmet"] = _budget_note(report["budget"], found, target, _out_sqnr(all_int8["acc"]))

    report["met"] = meets(best["acc"], target)
    reference = weights_only_reference(job, evaluate, target, say) if not report["met"] else None
    if reference:
        report["weights_only"] = reference
        if reference.get("accuracy"):
            report["unmet"] = "; ".join(filter(None, [report.get("unmet"), reference["note"]]))
    report["chosen"] = {"recipe": best["recipe"].to_manifest(), "float_layers": best["float"],
                        "accuracy": brief_accuracy(best["acc"])}
    if n_val:
        ci = {k: wilson(m["top1_agreement"], n_val) for k, m in best["acc"].items() if "top1_agreement" in m}
        if ci:
            report["chosen"]["top1_ci95"] = ci
            report["chosen"]["validation_samples"] = n_val
    if ranked:
        report["chosen"]["float_candidates"] = len(ranked)
    if ranked and len(best["float"]) > len(ranked) // 2:
        report["advice"] = (f"{len(best['float'])} of {len(ranked)} layers are kept in float: INT8 buys little "
                            "here; " + hooks.MANY_FLOAT_ADVICE)
    if best is not plain:
        report["cost"] = _cost(plain, best, evaluate)
        if report.get("budget", {}).get("fp32_bytes"):
            report["cost"]["size_ratio_fp32"] = round(report["cost"]["bytes"] / report["budget"]["fp32_bytes"], 3)
    report["note"] = ("layers are ranked, and the target checked, on the selection samples: the accuracy shown "
                      "is what was selected for, not a held-out estimate"
                      + ("; top1_ci95 is the 95% (Wilson) interval of top-1 agreement on that many samples, "
                         "selection not included" if "top1_ci95" in report["chosen"] else ""))
    return best["art"], best["acc"], report, (all_int8 if best["float"] else None)


def reject_float(report: dict, fallback: dict, float_confirmation_acc: dict, target: dict, n_selection: int,
                 n_confirmation: int) -> None:
    """The float layers chosen on the selection samples missed ``target`` on the confirmation samples: the
    best all-INT8 candidate (``fallback``, see :func:`recover`) becomes ``chosen``, and the float-layer one is
    recorded in ``best_float`` with the numbers of both parts. Call :func:`confirm` with the fallback's
    accuracies next. INT8 means INT8: float layers are only worth their cost where they are borne out on data
    no choice saw; a user asked for INT8 and is given INT8, with what the float layers reached."""
    chosen = report["chosen"]
    floats = list(chosen["float_layers"])
    best_float = report.setdefault("best_float", {})
    best_float.update(float_layers=floats, accuracy=chosen["accuracy"], met=False,
                      confirmation_accuracy=brief_accuracy(float_confirmation_acc))
    if "cost" in report:  # the float-layer candidate's cost against the plain one: not what is returned
        best_float["cost"] = report.pop("cost")
    report.pop("advice", None)
    report["chosen"] = {"recipe": fallback["recipe"].to_manifest(), "float_layers": [],
                        "accuracy": brief_accuracy(fallback["acc"])}
    if "float_candidates" in chosen:
        report["chosen"]["float_candidates"] = chosen["float_candidates"]
    report["unmet"] = (f"the {_n(len(floats), 'float layer')} chosen on the {n_selection} selection samples met "
                       f"{target_str(target)} there but not on the {n_confirmation} confirmation samples ("
                       + "; ".join(failures(float_confirmation_acc, target)) + "): what they gained did not hold on "
                       "samples no choice saw; the best all-INT8 artifact was kept (more validation samples, or a "
                       "lower target, decide it)")


def _fits(c: dict, target: dict, max_bytes: int | None, base_sqnr: float) -> bool:
    """A float-layer candidate that may be returned: it meets the target, is not over the size cap, and its
    output SQNR is above ``base_sqnr`` (the all-INT8 candidate's). One that meets a top-1 target on the selection
    samples with a lower output SQNR met it by which near-ties flipped (Lite0 rpi: its first conv in float,
    -0.15 dB, read 0.99 on 100 selection crops and 0.96 on 200 held-out ones, where the all-INT8 artifact read
    0.97)."""
    return (meets(c["acc"], target) and (max_bytes is None or len(c["art"]["data"]) <= max_bytes)
            and _out_sqnr(c["acc"]) > base_sqnr)


def _accuracy_text(acc: dict) -> str:
    """An accuracy as a message says it: ``output: top1_agreement 0.92, sqnr_db 23.5`` per output."""
    return "; ".join(f"{name}: " + ", ".join(f"{k} {v:g}" for k, v in m.items() if k != "cosine")
                     for name, m in brief_accuracy(acc).items())


def _budget_note(budget: dict, found: dict | None, target: dict, base_sqnr: float) -> str:
    """Why no float-layer candidate was taken, and what would let one be: the message of an unmet target."""
    allowed = f"the budget allowed {_n(budget['max_float_layers'], 'float layer')} ({budget['rule']})"
    if found is None:
        return allowed + ("; no float-layer candidate was built" if budget["max_float_layers"] else "")
    acc = _accuracy_text(found["acc"])
    size = len(found["art"]["data"])
    if meets(found["acc"], target) and _out_sqnr(found["acc"]) <= base_sqnr:
        return (allowed + f"; the best float-layer candidate ({_n(len(found['float']), 'layer')} in float) met "
                f"{target_str(target)} on the selection samples with an output SQNR of "
                f"{_out_sqnr(found['acc']):g} dB, not above the all-INT8 artifact's {base_sqnr:g} dB: it met it by "
                "which near-ties flipped, not by being closer to FP32; the best all-INT8 artifact was kept")
    if meets(found["acc"], target) and budget.get("max_bytes") and size > budget["max_bytes"]:
        return (allowed + f"; the best float-layer candidate ({_n(len(found['float']), 'layer')} in float) met "
                f"{target_str(target)} on the selection samples but is {size / budget['fp32_bytes']:.2f}x the FP32 "
                f"size, over the {budget['max_size_ratio']:g}x a default budget may return; give "
                f"--max-float-layers {len(found['float'])} to accept it; the best all-INT8 artifact was kept")
    return (allowed + f"; the best float-layer candidate ({_n(len(found['float']), 'layer')} in float) reached "
            f"{acc} on the selection samples; raise --max-float-layers to let recovery keep more layers in float; "
            "the best all-INT8 artifact was kept")


def weights_only_reference(job, evaluate, target: dict, say=lambda m: None) -> dict | None:
    """What INT8 weights alone reach on the selection samples, activations left in float (the route's float
    graph with its weights on the INT8 grid: edgeopt.converters.onnx_qdq.weights_only), beside a target recovery
    could not meet: when they meet it, what is lost is the activations' INT8 (one scale per tensor on TensorRT
    and TFLite alike), which no weight recipe recovers; when they do not, only float weights (float layers) can.
    MobileNetV2 (bench_ptq): INT8 weights alone 35.8 dB and top-1 0.985, every all-INT8 artifact 21-23 dB.
    None for a source without an ONNX graph (Keras, SavedModel, TFLite)."""
    from edgeopt.converters import onnx_qdq
    if not getattr(job, "onnx_model", None):
        return None
    say("accuracy recovery: INT8 weights alone (a reference)")
    try:
        path = onnx_qdq.weights_only(job, job.quantizable_onnx_path(), [i["name"] for i in job.inputs])
        with open(path, "rb") as f:
            art = {"file": "model.int8-weights-only.onnx", "format": "onnx", "precision": "fp32",
                   "kind": "onnx-int8-weights-only", "data": f.read()}
        acc = evaluate(art)[0]
    except UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - a reference only: its failure must not fail the conversion
        return {"error": str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__}
    met = meets(acc, target)
    note = (f"with only its weights in INT8 (activations in float) the model reaches {_accuracy_text(acc)} on the "
            "selection samples"
            + (": what misses the target is the activations' INT8 (one scale per tensor), which no weight recipe "
               "recovers" if met else ", short of the target too: only layers with float weights can meet it"))
    return {"accuracy": brief_accuracy(acc), "met": met, "note": note}


def step_entry(c: dict, target: dict) -> dict:
    """One tried candidate (``recipe``: a Recipe), as the recovery report lists it."""
    return {"recipe": c["recipe"].to_manifest(), "float_layers": list(c["float"]),
            "accuracy": brief_accuracy(c["acc"]), "met": meets(c["acc"], target)}


def _out_sqnr(acc: dict) -> float:
    """The search signal: the worst output SQNR (dB) against FP32 (finer-grained than top-1 on ~100 samples)."""
    vals = [m["sqnr_db"] for m in acc.values() if m.get("sqnr_db") is not None]
    return min(vals) if vals else 0.0


def _search(build, best, ranked, target, say, steps, report=None, budget=None, max_bytes=None):
    """Fewest float layers that meet the target (and are at most ``max_bytes``) with a higher output SQNR than
    the all-INT8 ``best``, never more than ``budget``; failing that, the best candidate tried. ``build(float_layers)`` makes and measures a candidate (the best
    recipe with those layers in float).

    1. End-to-end sensitivity: each of the first SENS_CANDIDATES layers of the per-layer ranking is kept in
       float alone, and the gain in output SQNR on the validation samples is measured (the per-layer metric
       says where error is made, not how much of it reaches the output).
    2. Prefixes of that order (1, 2, 3, 4, 6, 8, 12, ...) until the target is met, then bisection between the
       last miss and the first hit; failing that, the rest of the per-layer ranking is added in its order.
    """
    tried: dict[tuple, dict] = {}

    def attempt(floats, what=None):
        key = tuple(floats)
        if key in tried:
            return tried[key]
        say(f"accuracy recovery: {what or _n(len(floats), 'layer') + ' in float'}")
        try:
            c = build(list(floats))
        except UsageError:
            raise
        except Exception as e:  # a candidate the converter cannot build: note it, go on
            steps.append({"float_layers": list(floats), "error": str(e).strip().splitlines()[-1][:200]})
            tried[key] = None
            return None
        st = step_entry(c, target)
        if what:
            st["phase"] = "sensitivity"
        steps.append(st)
        tried[key] = c
        return c

    budget = len(ranked) if budget is None else min(budget, len(ranked))
    base = _out_sqnr(best["acc"])
    ok = lambda c: c is not None and _fits(c, target, max_bytes, base)  # noqa: E731
    cands = ranked[:SENS_CANDIDATES]
    sens = []
    for i, layer in enumerate(cands):
        c = attempt([layer], f"sensitivity {i + 1}/{len(cands)}: {layer} alone in float")
        if c is not None:
            sens.append({"layer": layer, "rank": i, "sqnr_gain_db": round(_out_sqnr(c["acc"]) - base, 3),
                         "accuracy": brief_accuracy(c["acc"])})
    sens.sort(key=lambda r: (-r["sqnr_gain_db"], r["rank"]))
    if report is not None:
        report["sensitivity"] = {
            "method": f"each of the {len(cands)} worst layers of the per-layer ranking kept in float alone; "
                      "gain in output SQNR (dB, worst output) on the validation samples; layers then kept in "
                      "float in this order",
            "baseline_sqnr_db": round(base, 3), "layers": sens}
    singles = [tried[(r["layer"],)] for r in sens if ok(tried.get((r["layer"],)))]
    if singles:  # one layer is enough: the one that gains most
        return singles[0]
    order = [r["layer"] for r in sens if r["sqnr_gain_db"] > 0]
    order += [r["layer"] for r in sens if r["sqnr_gain_db"] <= 0]
    order += [x for x in ranked if x not in order]
    n = min(len(order), budget)
    ks, k = [], 2
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    ks.append(n)
    miss, hit = 1, None
    attempts = 0
    for k in ks:
        attempts += 1
        if ok(attempt(order[:k])):
            hit = k
            break
        miss = k
        if attempts >= MAX_ATTEMPTS:
            break
    if hit is not None:
        lo = miss + 1
        while lo < hit and attempts < 2 * MAX_ATTEMPTS:
            attempts += 1
            mid = (lo + hit) // 2
            if ok(attempt(order[:mid])):
                hit = mid
            else:
                lo = mid + 1
        return tried[tuple(order[:hit])]
    done = [c for c in tried.values() if c is not None]
    return max(done, key=lambda c: (score(c["acc"], target), _out_sqnr(c["acc"]), -len(c["float"]))) if done else None


def _bench_ms(path: str) -> float:
    r = runtime.bench(path, warmup=3, runs=20, min_seconds=0.5, threads=1, keep_samples=False)
    return round(r["latency_ms"]["p50"], 3), r.get("note")


def _cost(plain: dict, best: dict, evaluate) -> dict:
    p_path = evaluate(plain["art"], keep=True)[1]
    b_path = evaluate(best["art"], keep=True)[1]
    (p_ms, note), (b_ms, _) = _bench_ms(p_path), _bench_ms(b_path)
    res = {"bytes_plain": len(plain["art"]["data"]), "bytes": len(best["art"]["data"]),
           "size_ratio": round(len(best["art"]["data"]) / max(1, len(plain["art"]["data"])), 3),
           "latency_ms_plain": p_ms, "latency_ms": b_ms, "latency_ratio": round(b_ms / p_ms, 3) if p_ms else None,
           "latency_how": "edgeopt.runtime.bench on this host, 1 thread, p50 of >= 20 runs"}
    if note:
        res["latency_note"] = note + ": QDQ latency on this host is not representative of TensorRT"
    for p in (p_path, b_path):
        try:
            os.remove(p)
        except OSError:
            pass
    return res


def _coral_cost(c: dict, evaluate) -> dict:
    path = evaluate(c["art"], keep=True)[1]
    s = edgetpu.preflight(path)["summary"]
    os.remove(path)
    return {"float_layers": c["float"], "accuracy": brief_accuracy(c["acc"]), "edgetpu_ops": s["tpu_ops"],
            "cpu_ops": s["cpu_ops"], "ops": s["ops"],
            "note": f"keeping {_n(len(c['float']), 'layer')} in float would move {s['cpu_ops']} of {s['ops']} ops off the "
                    "Edge TPU to the CPU; allow it with --allow-cpu-ops"}
