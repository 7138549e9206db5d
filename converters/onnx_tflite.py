"""ONNX -> full-integer INT8 TFLite: onnx2tf builds the TensorFlow graph (NCHW turned into NHWC), then
:mod:`edgeopt.converters.tf_tflite` quantizes it with the user's calibration data.

onnx2tf downloads a sample image file from the internet for 4D RGB inputs; edgeopt hands it the user's
own calibration samples instead, and the whole call runs inside :func:`edgeopt.conversion.hermetic.offline`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

import numpy as np

from edgeopt.errors import UsageError
from edgeopt.conversion.hermetic import offline
from edgeopt.converters import onnx_control, onnx_split
from edgeopt.converters.onnx_unroll import left_in_float

__all__ = ["nhwc_perm", "layout_perm", "simplify", "to_keras", "convert", "versions"]


def nhwc_perm(rank: int) -> list[int] | None:
    """onnx2tf's layout rule: channels-first 3D/4D/5D tensors become channels-last."""
    return [0] + list(range(2, rank)) + [1] if rank >= 3 else None


def layout_perm(source_shape: list, artifact_shape: list) -> list[int] | None:
    """perm such that artifact = source.transpose(perm), or None when the layout is unchanged."""
    if list(source_shape) == list(artifact_shape):
        return None
    perm = nhwc_perm(len(source_shape))
    if perm and [source_shape[i] for i in perm] == list(artifact_shape):
        return perm
    return None


def _first_line(e) -> str:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    detail = next((x for x in lines if "must be" in x or "Error" in x), lines[0] if lines else type(e).__name__)
    return (lines[0] + (" " + detail if detail != lines[0] else ""))[:400]


@contextlib.contextmanager
def _quiet():
    """onnx2tf prints banners and traces on stdout; keep stdout clean for --json. They go to fd 2 (shown
    with --debug), or nowhere."""
    sys.stdout.flush()
    saved = os.dup(1)
    debug = os.environ.get("EDGEOPT_DEBUG") == "1"
    sink = sys.stderr if debug else open(os.devnull, "w")
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sink):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if not debug:
            sink.close()


def simplify(onnx_path: str, name: str, edgetpu: bool = False) -> str:
    """onnxsim in this process (onnx2tf would run the `onnxsim` command from PATH, which is missing when the
    venv is not activated, and then silently converts an unsimplified graph that can fail), then the exact
    rewrites of edgeopt.converters.onnx_rewrite (patterns onnx2tf converts wrongly; ``edgetpu``: also those to
    ops the Edge TPU maps). Returns a path."""
    import onnx
    from onnxsim import simplify as onnxsim_simplify

    from edgeopt.converters import onnx_rewrite
    model = onnx.load(onnx_path)
    try:
        simplified, ok = onnxsim_simplify(model)
        if ok:
            model = simplified
    except Exception:  # onnxsim cannot handle every graph; onnx2tf copes with the original
        pass
    model, notes = onnx_rewrite.rewrite(model, edgetpu=edgetpu)
    out = os.path.join(os.path.dirname(onnx_path), f"{os.path.splitext(name)[0]}.sim.onnx")
    onnx.save(model, out)
    return out


def to_keras(onnx_path: str, sample_nhwc: np.ndarray | None, name: str | None = None):
    """Run onnx2tf on a static-shape ONNX file; returns its tf_keras model (NHWC inputs)."""
    import onnx2tf
    import onnx2tf.onnx2tf as o2t_main
    import onnx2tf.utils.common_functions as o2t_common

    def local_samples():
        if sample_nhwc is None:
            raise UsageError("onnx2tf asked for sample image data and none was given (edgeopt never downloads it)")
        return np.asarray(sample_nhwc, dtype=np.float32)

    name = name or os.path.basename(onnx_path)
    onnx_path = os.path.abspath(onnx_path)  # before the chdir below
    import tf_keras
    # onnx2tf builds tf_keras layers whose names carry per-process counters ("tf.math.add_9"); they end up
    # in the TFLite file. A fresh session makes a second conversion in the same process byte-identical.
    tf_keras.backend.clear_session()
    patched = [(m, getattr(m, "download_test_image_data")) for m in (o2t_main, o2t_common)]
    for m, _ in patched:
        m.download_test_image_data = local_samples
    cwd = os.getcwd()
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-onnx2tf-") as tmp, offline(), _quiet():
            os.chdir(tmp)  # onnx2tf writes helper files into the working directory
            model = onnx2tf.convert(
                input_onnx_file_path=onnx_path,
                output_folder_path=os.path.join(tmp, "saved_model"),
                disable_model_save=True,
                not_use_onnxsim=True,  # simplified in-process above
                non_verbose=True,
                verbosity="error",
                # Erf (GELU) has no TFLite kernel at all, not even a float one: onnx2tf's pseudo-Erf computes it
                # from builtins (ABS, MUL, EXP, ...) that TFLite and XNNPACK run
                replace_to_pseudo_operators=["erf"],
            )
    except UsageError:
        raise
    except SystemExit as e:  # onnx2tf calls sys.exit(1) on unsupported graphs
        raise UsageError(f"{name}: onnx2tf could not convert this model (exit {e.code})",
                         hint="run with --debug to see onnx2tf's log") from None
    except Exception as e:
        raise UsageError(f"{name}: onnx2tf failed: {_first_line(e)}",
                         hint="run with --debug to see onnx2tf's log") from None
    finally:
        os.chdir(cwd)
        for m, fn in patched:
            m.download_test_image_data = fn
    if model is None:
        raise UsageError(f"{name}: onnx2tf produced no model")
    return model


def convert(job, recipe=None) -> list[dict]:
    """Job -> [artifact dict] with one full-integer INT8 TFLite file (see edgeopt.conversion.pipeline.Job),
    quantized with ``recipe`` (None: ``job.recipe``)."""
    from edgeopt.converters import tf_tflite

    recipe = job.recipe if recipe is None else recipe
    state = tf_tflite.route_state(job)
    if state is None:  # built once per job: recipes ("auto") quantize the same graph
        src_inputs = job.inputs
        samples = job.calib_samples()  # list of [arrays in source layout, batch 1]
        perms = [nhwc_perm(len(s["shape"])) if s["dtype"].startswith("float") else None for s in src_inputs]
        sample_nhwc = None
        if len(src_inputs) == 1 and perms[0] and len(src_inputs[0]["shape"]) == 4:
            sample_nhwc = np.concatenate([np.transpose(s[0], perms[0]) for s in samples[:20]], axis=0)
        src = job.quantizable_onnx_path()
        left_in_float(job.unrolled, job.source_name, False)   # onnx2tf would make a loop the calibrator cannot run
        onnx_control.refuse_or_keep(job.data_dependent_control(), job.source_name, False)  # nor can onnx2tf
        # integer outputs (Coral): an output joined from uneven parts leaves as one output per part
        src, joins = split_outputs(job, src) if job.target.integer_only else (src, {})
        keras_model = to_keras(simplify(src, job.source_name, edgetpu=job.target.edgetpu_preflight), sample_nhwc,
                               job.source_name)
        graph = tf_tflite.from_keras_model(
            keras_model, names_hint=onnx_split.expand([o["name"] for o in job.outputs], joins))
        real_perms = [layout_perm([1] + s["shape"][1:], [1] + g["shape"][1:])
                      for s, g in zip(src_inputs, graph.inputs)]
        calib = [[np.transpose(a, p) if p else a for a, p in zip(sample, real_perms)] for sample in samples]
        state = tf_tflite.keep(job, tf_tflite.RouteState(graph, calib, real_perms, joins))
        state.graph_check = graph_check(job, graph, samples, calib)
    graph, calib, real_perms = state.graph, state.calib, state.perms
    data, info = tf_tflite.quantize(graph, calib, job.io_dtype, job.allow_float_fallback, source=job.source_name,
                                    cache=state.rounding,
                                    float_blocks=not job.target.integer_only,
                                    max_float_layers=job.options.max_float_layers, **tf_tflite.recipe_options(recipe))
    art = {"file": "model.int8.tflite", "format": "tflite", "precision": "int8", "kind": "tflite-int8",
           "data": data, "input_index": info["input_index"], "output_index": info["output_index"],
           "input_perm": real_perms, "converter": "onnx2tf + tf.lite.TFLiteConverter (TFLITE_BUILTINS_INT8)"}
    if state.joins:   # which artifact outputs are the parts of one source output (manifest: the output's join)
        art["output_joins"] = state.joins
        art["output_index"] = onnx_split.grouped(info["output_index"], [o["name"] for o in job.outputs], state.joins)
    if info.get("float_ops"):
        art["float_ops"] = info["float_ops"]
    if info.get("float_blocks"):
        art["float_blocks"] = info["float_blocks"]
    if state.graph_check:
        art["graph_check"] = state.graph_check
    return [art]


def split_outputs(job, src: str) -> tuple[str, dict]:
    """(the ONNX file to convert, {source output: {"axis", "ends", "parts"}}): ``src`` with the outputs of
    ``job.split_outputs()`` split (edgeopt.converters.onnx_split), or ``src`` itself and {}."""
    import onnx
    if not job.split_outputs():
        return src, {}
    model = onnx.load(src)
    joins = onnx_split.split(model, job.split_outputs())
    if not joins:
        return src, {}
    path = os.path.join(job.workdir, "source.split.onnx")
    onnx.save(model, path)
    return path, joins


GRAPH_CHECK_SAMPLES = 4
GRAPH_CHECK_COSINE = 0.99


def graph_check(job, graph, samples, calib) -> dict | None:
    """onnx2tf's float graph against the ONNX model on a few calibration samples, before any quantization:
    when they already disagree (worst output cosine under GRAPH_CHECK_COSINE), the INT8 artifact cannot be
    right, and the error is the graph conversion's, not INT8's. None when they agree."""
    from edgeopt.converters import onnx_io, tf_tflite
    names = [o["name"] for o in job.outputs]
    dtypes = [i["dtype"] for i in graph.inputs]
    reference = onnx_io.Reference(job.static_onnx_path(), names)
    worst = None
    for source_sample, graph_sample in list(zip(samples, calib))[:GRAPH_CHECK_SAMPLES]:
        refs = reference(source_sample)
        try:
            outputs = _joined(job, graph(tf_tflite.feed(graph_sample, dtypes)), refs)
        except Exception as e:  # a graph onnx2tf built but TensorFlow cannot run (a wrong Reshape, say)
            raise UsageError(f"{job.source_name}: onnx2tf's float graph of this model does not run: "
                             f"{_first_line(e)}",
                             hint="convert for jetson (ONNX) instead; run with --debug for onnx2tf's log") from None
        for name, want, got in zip(names, refs, outputs):
            want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
            perm = layout_perm(list(want.shape), list(got.shape))
            if perm:  # channels-last output: back to the source layout
                got = np.transpose(got, np.argsort(perm))
            if got.shape != want.shape:
                continue
            denom = np.linalg.norm(want) * np.linalg.norm(got)
            cosine = float(np.dot(want.ravel(), got.ravel()) / denom) if denom > 0 else float(
                np.allclose(want, got))
            if worst is None or cosine < worst[1]:
                worst = (name, cosine)
    if worst is None or worst[1] >= GRAPH_CHECK_COSINE:
        return None
    return {"output": worst[0], "cosine": round(worst[1], 4), "samples": min(len(calib), GRAPH_CHECK_SAMPLES),
            "note": f"onnx2tf's float graph already disagrees with the ONNX model (output {worst[0]!r}: cosine "
                    f"{worst[1]:.4f}), before INT8: the graph conversion is wrong, not the quantization"}


def _joined(job, outputs: list, refs: list) -> list:
    """The graph's outputs with each split output's parts (in the graph's layout) joined as the source has it."""
    # set by convert() (before graph_check runs, with the parts the graph's outputs are); none on a job alone
    from edgeopt.converters import tf_tflite
    state = tf_tflite.route_state(job)
    joins = state.joins if state is not None else {}
    it, res = iter(outputs), []
    for o, want in zip(job.outputs, refs):
        join = joins.get(o["name"])
        if join is None:
            res.append(next(it))
            continue
        parts = []
        for shape in onnx_split.part_shapes(list(np.shape(want)), join["axis"], join["ends"]):
            got = np.asarray(next(it))
            perm = layout_perm(shape, list(got.shape))
            parts.append(np.transpose(got, np.argsort(perm)) if perm else got)
        res.append(np.concatenate(parts, axis=join["axis"]))
    return res


def versions() -> dict:
    import onnx2tf
    return {"onnx2tf": onnx2tf.__version__}
