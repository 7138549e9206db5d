"""The structure of a conversion's options and of recovery: one typed object (edgeopt.conversion.options) for the
API, the CLI, deploy's cache key and the manifest; route hooks in the converter modules; recover.py only searches.
Fast: nothing here converts a model or imports TensorFlow, onnx or onnxruntime."""
import ast
import dataclasses
import json
from pathlib import Path

import pytest

import edgeopt
from edgeopt import converters
from edgeopt.conversion.defaults import CALIBRATION_METHODS, DEFAULT_BIAS_CORRECTION, WEIGHT_ROUNDINGS
from edgeopt.conversion.options import ConversionOptions, Recipe
from edgeopt.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- the recipe

@pytest.mark.parametrize("recipe, manifest", [
    (Recipe(), {"calibration_method": "minmax", "per_channel": True, "float_layers": 0, "bias_correction": False, "weight_rounding": "nearest"}),
    (Recipe("mse", bias_correction=True),
     {"calibration_method": "mse", "per_channel": True, "float_layers": 0, "bias_correction": True, "weight_rounding": "nearest"}),
    (Recipe("percentile", histogram_samples=64, bias_correction=True, float_layers=("conv1", "fc")),
     {"calibration_method": "percentile", "per_channel": True, "float_layers": 2, "bias_correction": True,
      "weight_rounding": "nearest", "percentile": 99.99, "calibration_samples": 64}),
    (Recipe("percentile", per_channel=False, calib_percentile=99.9),
     {"calibration_method": "percentile", "per_channel": False, "float_layers": 0, "bias_correction": False,
      "weight_rounding": "nearest", "percentile": 99.9}),
    (Recipe("entropy", histogram_samples=64),
     {"calibration_method": "entropy", "per_channel": True, "float_layers": 0, "bias_correction": False,
      "weight_rounding": "nearest", "calibration_samples": 64}),
    (Recipe("mse", bias_correction=True, weight_rounding="gptq"),
     {"calibration_method": "mse", "per_channel": True, "float_layers": 0, "bias_correction": True,
      "weight_rounding": "gptq"}),
])
def test_recipe_round_trips_the_manifests_recipe(recipe, manifest):
    """calibration.recipe as docs/manifest.md describes it (keys and their order, as json.dump writes them),
    and back: float layers counted there, named in recovery.chosen.float_layers."""
    got = recipe.to_manifest()
    assert json.dumps(got) == json.dumps(manifest)
    back = Recipe.from_manifest(json.loads(json.dumps(got)), float_layers=recipe.float_layers)
    assert back.to_manifest() == got
    # the manifest records the percentile in effect: the default comes back spelt out
    assert back == (recipe.replace(calib_percentile=99.99) if got.get("percentile") == 99.99 else recipe)


def test_recipe_of_histogram_samples_with_minmax_is_not_recorded():
    """histogram_samples only applies to histogram methods: min-max does not record it (and rebuilds the same)."""
    r = Recipe("minmax", histogram_samples=64)
    assert "calibration_samples" not in r.to_manifest()
    assert Recipe.from_manifest(r.to_manifest()) == Recipe("minmax")


def test_recipe_is_frozen_and_float_layers_a_tuple():
    r = Recipe(float_layers=["a", "b"])
    assert r.float_layers == ("a", "b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.calibration_method = "mse"
    assert r.replace(bias_correction=True) == Recipe(bias_correction=True, float_layers=("a", "b"))
    with pytest.raises(ValueError, match="2 layers in float"):
        Recipe.from_manifest(r.to_manifest())  # the names are needed to rebuild it


# -------------------------------------------------------------------------------- the conversion options

def test_from_keywords_fills_the_user_facing_defaults():
    o = ConversionOptions.from_keywords()
    assert o.recipe == Recipe(CALIBRATION_METHODS[0], bias_correction=DEFAULT_BIAS_CORRECTION,
                              weight_rounding=WEIGHT_ROUNDINGS[0])
    assert o.keywords() == {}  # a default request: nothing to pass on, nothing in deploy's cache key
    assert ConversionOptions.from_keywords(calibration_method=None, bias_correction=None, per_channel=None,
                                           explain=False) == o


@pytest.mark.parametrize("keywords", [
    {"accuracy_target": "top1=0.99,sqnr=30", "max_float_layers": "3"},
    {"accuracy_target": "sqnr=40", "max_float_layers": "12.5%", "allow_cpu_ops": True},
    {"calibration_method": "percentile", "calib_percentile": 99.9, "histogram_samples": 32, "per_channel": False,
     "bias_correction": False, "explain": True, "allow_float_fallback": True, "trust_model_code": True},
    {"weight_rounding": "nearest"},
])
def test_keywords_give_back_the_same_options(keywords):
    o = ConversionOptions.from_keywords(**keywords)
    assert ConversionOptions.from_keywords(**o.keywords()) == o
    assert set(o.keywords()) == set(keywords)


def test_from_keywords_refuses_what_the_pipeline_refused():
    with pytest.raises(TypeError, match="per_chanel"):
        ConversionOptions.from_keywords(per_chanel=False)
    with pytest.raises(UsageError, match="give --accuracy-target too"):
        ConversionOptions.from_keywords(max_float_layers=3)
    with pytest.raises(UsageError, match="--accuracy-target"):
        ConversionOptions.from_keywords(accuracy_target="top1=2")
    with pytest.raises(UsageError, match="--weight-rounding 'adaround': expected one of gptq_act, gptq, nearest"):
        ConversionOptions.from_keywords(weight_rounding="adaround")


def test_manifest_options_keep_their_keys_and_order():
    o = ConversionOptions.from_keywords(accuracy_target="sqnr=30", max_float_layers="10%", allow_cpu_ops=True,
                                        trust_model_code=True)
    assert list(o.to_manifest().items()) == [("allow_float_fallback", False), ("allow_cpu_ops", True),
                                              ("max_float_layers", {"percent": 10.0}), ("trust_model_code", True)]
    assert ConversionOptions().to_manifest() == {"allow_float_fallback": False}


def test_job_reads_its_recipe_from_its_options():
    from edgeopt.conversion.pipeline import Job
    job = Job("m.onnx", "onnx", None, [], [], {}, "int8", "/nonexistent")
    assert job.recipe == Recipe() and job.allow_float_fallback is False
    job = Job("m.onnx", "onnx", None, [], [], {}, "int8", "/nonexistent",
              options=ConversionOptions(recipe=Recipe("mse"), allow_float_fallback=True))
    assert job.recipe == Recipe("mse") and job.allow_float_fallback is True


def test_deploy_cache_key_of_a_default_run_is_the_datas_alone(tmp_path, monkeypatch):
    """A default deploy keys its cache entry as it always did (model, target, data, versions), and the same
    request spelt two ways (a target as text or as a dict) finds the same entry."""
    from edgeopt.devices import deploy
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model bytes")
    calls = []

    def fake_convert(model, target, out, **options):
        calls.append(options)
        import hashlib
        import os
        os.makedirs(out, exist_ok=True)
        Path(out, "model.int8.tflite").write_bytes(b"artifact")
        manifest = {"schema": 1, "edgeopt": "x", "toolchain": {}, "options": {},
                    "artifacts": [{"file": "model.int8.tflite", "sha256": hashlib.sha256(b"artifact").hexdigest()}]}
        Path(out, "manifest.json").write_text(json.dumps(manifest))
        return manifest
    monkeypatch.setattr(edgeopt, "convert", fake_convert)
    root = str(tmp_path / "cache")
    _, out, _ = deploy.convert_cached(str(model), "rpi5", cache_root=root, calib="random")
    assert Path(out, deploy.STAMP).read_text().strip() == deploy.cache_key(str(model), "rpi5", {"calib": "random"})
    _, text, reused = deploy.convert_cached(str(model), "rpi5", cache_root=root, calib="random",
                                            accuracy_target="top1=0.98")
    _, spelt, reused_again = deploy.convert_cached(str(model), "rpi5", cache_root=root, calib="random",
                                                   accuracy_target={"top1": 0.98}, calibration_method="auto")
    assert text == spelt and text != out and not reused and reused_again
    assert calls == [{"calib": "random"}, {"calib": "random", "accuracy_target": {"top1": 0.98}}]


# ------------------------------------------------------------------------------------- the route hooks

def _top_level_names(path: Path) -> set:
    tree = ast.parse(path.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def test_every_kind_with_recovery_has_all_its_hooks():
    """Read from the sources (importing tf_tflite would import TensorFlow): each HOOKS module defines every
    hook, and each kind is one a route makes."""
    made = {kind for _, kind in converters.ROUTES}
    assert set(converters.HOOKS) == {"tflite-int8", "onnx-qdq-int8"}
    for kind, module in converters.HOOKS.items():
        assert kind in made, kind
        path = ROOT / "converters" / (module.rsplit(".", 1)[-1] + ".py")
        missing = set(converters.HOOK_NAMES) - _top_level_names(path)
        assert not missing, f"{module} lacks {sorted(missing)}"


def test_a_kind_without_hooks_is_a_usage_error():
    with pytest.raises(UsageError, match="onnx-fp16 has no per-layer report or recovery"):
        converters.hooks("onnx-fp16")


def test_recover_has_no_route_branches():
    """recover.py searches; building and measuring are the routes' hooks: no comparison with an artifact's
    format or with a format's name outside float_layer_policy (which targets' float fallback decides)."""
    tree = ast.parse((ROOT / "sdk" / "conversion" / "recover.py").read_text())
    policy = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "float_layer_policy")
    allowed = {id(n) for n in ast.walk(policy)}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare) or id(node) in allowed:
            continue
        for part in [node.left, *node.comparators]:
            text = ast.unparse(part)
            assert "format" not in text and "tflite" not in text and "onnx" not in text, \
                f"recover.py line {node.lineno}: {ast.unparse(node)}"


def test_no_one_swaps_a_jobs_options():
    """Converters get their recipe as an argument or read job.recipe: nothing assigns job.options but the
    pipeline, once, when --calibration auto has chosen, and nothing reads options as a dict."""
    for path in [*(ROOT / "converters").glob("*.py"), *(ROOT / "sdk" / "conversion").glob("*.py")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if (isinstance(target, ast.Attribute) and target.attr == "options"
                            and "job" in ast.unparse(target.value)):
                        assert path.name == "pipeline.py", f"{path.name}:{node.lineno} sets .options"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
                assert "options" not in ast.unparse(node.func.value) or path.name == "explain.py", \
                    f"{path.name}:{node.lineno}: {ast.unparse(node)} (options are a ConversionOptions)"
