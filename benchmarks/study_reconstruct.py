"""Study: what gradient reconstruction (QAT-style fine-tuning on the calibration crops) would buy an all-INT8
MobileNetV2 in TFLite's numerics, before anyone builds it into a route.

edgeopt fits each layer in closed form (GPTQ rounding, gptq_act compensation, bias correction). The literature's
other family fits by gradient through fake quantization: end to end on the model's output (QAT on the calibration
set), or block after block on each block's output (BRECQ, QDrop). This measures both on the bench_ptq MobileNetV2
(torchvision's ImageNet weights) with the same 100 calibration crops, judged on bench_ptq's held-out crops (other
crops of the same 9 photos) and on crops of photos nobody fitted on (Debian's mate-backgrounds nature photos).

The model is a torch fake-quant twin of the TFLite INT8 graph: batch norm folded; weights per output channel,
symmetric, codes -127..127; every activation tensor (input, each convolution's output after its ReLU6, each
residual sum, the pooled features, the logits) per tensor, asymmetric, codes -128..127, ranges from the mean of
each crop's min and max (the logits', input's and pooled features' from the global min and max). It is not
edgeopt's artifact: it has no equalization, GPTQ or bias correction, so its "nearest" row is the starting point
both reconstructions share, and edgeopt's own numbers on the same crops are in bench_ptq's table.

Reconstruction optimises, with straight-through rounding (Adam, batches of 20 crops), the weights (each held
within one grid step of its float value, AdaRound's box), the biases and the activation ranges (LSQ-style; not
the logits' range):

- ``--mode end-to-end``: the whole model against the FP32 logits;
- ``--mode blockwise``: each inverted-residual block in turn (reading the quantized model's own input so far)
  against the FP32 block's output on the FP32 input; ``--qdrop`` feeds each input element quantized or not at
  random (QDrop).

``--start`` starts instead from edgeopt's own all-INT8 TFLite MobileNetV2 (bench_ptq's rpi artifact: equalized,
GPTQ-rounded, its ranges), loaded into the twin; ``--range-lr 0`` keeps the activation ranges where they start.

    .venv/bin/python benchmarks/study_reconstruct.py --mode blockwise --steps 80 [--qdrop]
    .venv/bin/python benchmarks/study_reconstruct.py --qdrop --steps 120 --range-lr 0 \
        --start benchmarks/out/ptq-work/mobilenet_v2-rpi-plain/model.int8.tflite

Needs torch (the dev extra) and the wheel bench_ptq names for MobileNetV2; mate-backgrounds for the nature crops
(skipped when missing). Minutes: end-to-end 150 steps ~9 min, blockwise 80 steps per block ~10 min, on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np

import bench_ptq
import zoo

NATURE = "/usr/share/backgrounds/mate/nature"


def _modules():
    """The fake-quant twin's classes (torch imported here, not at module level)."""
    import torch
    from torch import nn
    import torch.nn.functional as functional

    def ste_round(x):
        return (x.round() - x).detach() + x

    class ActQuant(nn.Module):
        """Per-tensor asymmetric int8 fake quantization with a learnable range (mode: float, observe, quant)."""

        def __init__(self):
            super().__init__()
            self.lo, self.hi = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(1.0))
            self.mode, self.seen = "float", []

        def forward(self, x):
            if self.mode == "observe":
                self.seen.append((float(x.min()), float(x.max())))
            if self.mode != "quant":
                return x
            lo, hi = torch.minimum(self.lo, torch.zeros(())), torch.maximum(self.hi, torch.zeros(()))
            s = (hi - lo) / 255.0
            z = ste_round(-128 - lo / s).clamp(-128, 127)
            return (torch.clamp(ste_round(x / s) + z, -128, 127) - z) * s

        def init_range(self, global_minmax: bool):
            seen = np.array(self.seen)
            lo, hi = (seen[:, 0].min(), seen[:, 1].max()) if global_minmax else seen.mean(0)
            self.lo.data.fill_(min(float(lo), 0.0))
            self.hi.data.fill_(max(float(hi), 0.0))
            self.seen = []

    class WeightQuant(nn.Module):
        """A weight (float master, per-output-channel symmetric int8 fake quantization) kept in AdaRound's box."""

        def __init__(self, w):
            super().__init__()
            self.w = nn.Parameter(w.detach().clone())
            self.w0 = w.detach().clone()
            dims = tuple(range(1, w.dim()))
            self.scale = (self.w0.abs().amax(dims) / 127).clamp_min(1e-12).reshape(-1, *[1] * (w.dim() - 1))
            self.on = False

        def forward(self):
            return torch.clamp(ste_round(self.w / self.scale), -127, 127) * self.scale if self.on else self.w

        def project(self):
            with torch.no_grad():
                self.w.copy_(torch.maximum(torch.minimum(self.w, self.w0 + self.scale), self.w0 - self.scale))

    class Conv(nn.Module):
        def __init__(self, conv, bn, relu):
            super().__init__()
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            self.weight = WeightQuant(conv.weight * g[:, None, None, None])
            self.b = nn.Parameter((bn.bias - bn.running_mean * g).detach().clone())
            self.stride, self.pad, self.groups, self.relu = conv.stride, conv.padding, conv.groups, relu
            self.out = ActQuant()

        def forward(self, x):
            y = functional.conv2d(x, self.weight(), self.b, self.stride, self.pad, 1, self.groups)
            return self.out(y.clamp(0, 6) if self.relu else y)

    class Twin(nn.Module):
        """MobileNetV2 as units: its blocks, then the head (pooling and classifier)."""

        def __init__(self, net):
            super().__init__()
            self.inq, self.poolq, self.logq = ActQuant(), ActQuant(), ActQuant()
            self.units = []
            for f in net.features:
                if isinstance(f, nn.Sequential):   # the first and last convolutions, with ReLU6
                    self.units.append(([Conv(f[0], f[1], True)], None))
                    continue
                seq, convs, i = list(f.conv), [], 0
                while i < len(seq):
                    if isinstance(seq[i], nn.Sequential):
                        convs.append(Conv(seq[i][0], seq[i][1], True))
                        i += 1
                    else:   # the projection: conv and batch norm, no activation
                        convs.append(Conv(seq[i], seq[i + 1], False))
                        i += 2
                self.units.append((convs, ActQuant() if f.use_res else None))
            self.convs = nn.ModuleList([c for cs, _ in self.units for c in cs])
            self.adds = nn.ModuleList([a for _, a in self.units if a is not None])
            self.fc = WeightQuant(net.classifier[1].weight)
            self.fb = nn.Parameter(net.classifier[1].bias.detach().clone())

        def merge_first(self):
            """The first convolution and the first block as one unit: edgeopt equalizes the tensor between them
            (a convolution feeding a depthwise one), so only the first block's output is the FP32 model's."""
            (first, _), (block, add) = self.units[:2]
            self.units[:2] = [(first + block, add)]

        def acts(self):
            return [self.inq, self.poolq, self.logq] + [c.out for c in self.convs] + list(self.adds)

        def weights(self):
            return [c.weight for c in self.convs] + [self.fc]

        def set(self, acts: str, weights: bool):
            for a in self.acts():
                a.mode = acts
            for w in self.weights():
                w.on = weights

        def unit(self, i, x):
            if i == len(self.units):
                return self.logq(functional.linear(self.poolq(x.mean((2, 3))), self.fc(), self.fb))
            convs, add = self.units[i]
            y = x
            for c in convs:
                y = c(y)
            return add(x + y) if add is not None else y

        def unit_params(self, i):
            """(weights, biases, activation quantizers) that unit ``i``'s reconstruction fits."""
            if i == len(self.units):
                return [self.fc], [self.fb], [self.poolq]
            convs, add = self.units[i]
            acts = [c.out for c in convs] + ([add] if add is not None else [])
            return [c.weight for c in convs], [c.b for c in convs], acts

        def forward(self, x):
            x = self.inq(x)
            for i in range(len(self.units) + 1):
                x = self.unit(i, x)
            return x

    return torch, functional, Twin


def load_tflite(torch, twin, path: str) -> None:
    """Set the twin to an all-INT8 TFLite MobileNetV2 (edgeopt's rpi artifact, ``--start``): each convolution's and
    the classifier's weights (codes times their scales, the scales kept as its grid), their int32 biases, and each
    activation tensor's range (from its scale and zero point), matched in graph order; the reconstruction's box
    is then one grid step around edgeopt's rounded (equalized, GPTQ) weights."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils
    with open(path, "rb") as f:
        fm = flatbuffer_utils.convert_bytearray_to_object(bytearray(f.read()))
    sg = fm.subgraphs[0]
    op = schema.BuiltinOperator

    def const(t):
        tt = sg.tensors[t]
        dtype = {schema.TensorType.INT8: np.int8, schema.TensorType.INT32: np.int32}[tt.type]
        return np.frombuffer(bytes(fm.buffers[tt.buffer].data), dtype).reshape(tt.shape).astype(np.float64)

    def qp(t):
        q = sg.tensors[t].quantization
        return np.asarray(q.scale, np.float64), np.asarray(q.zeroPoint, np.float64)

    def act(quant, t):
        (s,), (z,) = qp(t)
        quant.lo.data.fill_(float((-128 - z) * s))
        quant.hi.data.fill_(float((127 - z) * s))

    def weight(wq, b, t_in, t_w, t_b, perm):
        sw, _ = qp(t_w)
        codes = const(t_w)
        axis = sg.tensors[t_w].quantization.quantizedDimension
        shape = [1] * codes.ndim
        shape[axis] = -1
        grid = torch.tensor((codes * sw.reshape(shape)).astype(np.float32)).permute(*perm).contiguous()
        wq.w.data.copy_(grid)
        wq.w0 = grid.clone()
        wq.scale = torch.tensor(sw.astype(np.float32)).reshape(-1, *[1] * (grid.dim() - 1))
        b.data.copy_(torch.tensor((const(t_b) * qp(t_in)[0][0] * sw).astype(np.float32)))

    convs, adds = iter(twin.convs), iter(twin.adds)
    for o in sg.operators:
        code = fm.operatorCodes[o.opcodeIndex]
        kind = max(code.builtinCode, code.deprecatedBuiltinCode)
        if kind == op.QUANTIZE:
            act(twin.inq, o.outputs[0])
        elif kind in (op.CONV_2D, op.DEPTHWISE_CONV_2D):
            c = next(convs)
            # TFLite's OHWI (convolution) and 1HWC (depthwise) to torch's OIHW
            weight(c.weight, c.b, *o.inputs[:3], (0, 3, 1, 2) if kind == op.CONV_2D else (3, 0, 1, 2))
            act(c.out, o.outputs[0])
        elif kind == op.ADD:
            act(next(adds), o.outputs[0])
        elif kind == op.MEAN:
            act(twin.poolq, o.outputs[0])
        elif kind == op.FULLY_CONNECTED:
            weight(twin.fc, twin.fb, *o.inputs[:3], (0, 1))
            act(twin.logq, o.outputs[0])
    assert next(convs, None) is None and next(adds, None) is None, "not the twin's MobileNetV2"


def _batches(x, n=50):
    return [x[i:i + n] for i in range(0, len(x), n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("end-to-end", "blockwise"), default="blockwise")
    ap.add_argument("--steps", type=int, default=80, help="Adam steps (per block with --mode blockwise)")
    ap.add_argument("--qdrop", action="store_true", help="blockwise: QDrop's random mix of quantized and FP32 inputs")
    ap.add_argument("--range-lr", type=float, default=1e-3, help="Adam's rate for the activation ranges (0: kept)")
    ap.add_argument("--calib", type=int, default=100)
    ap.add_argument("--held-out", type=int, default=200)
    ap.add_argument("--nature", type=int, default=300, help="crops of photos nobody fits on (0: none)")
    ap.add_argument("--start", metavar="TFLITE", help="start from this all-INT8 TFLite MobileNetV2 (edgeopt's rpi "
                    "artifact from bench_ptq, e.g. benchmarks/out/ptq-work/mobilenet_v2-rpi-plain/model.int8.tflite) "
                    "instead of nearest rounding")
    ap.add_argument("--json", help="write the rows here too")
    a = ap.parse_args(argv)
    torch, functional, Twin = _modules()
    torch.manual_seed(0)
    net = zoo._mobilenet_v2_module()
    net.load_state_dict(zoo.mobilenet_v2_weights(), strict=True)
    net.eval()
    crops = {"calib": bench_ptq._crops(224, a.calib, 1, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD),
             "held-out": bench_ptq._crops(224, a.held_out, 2, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD)}
    if a.nature and os.path.isdir(NATURE):
        crops["nature"] = bench_ptq._crops(224, a.nature, 2, zoo.IMAGENET_MEAN, zoo.IMAGENET_STD, NATURE)
    crops = {k: torch.from_numpy(v) for k, v in crops.items()}
    with torch.no_grad():
        refs = {k: torch.cat([net(b) for b in _batches(x)]) for k, x in crops.items()}
    twin = Twin(net)
    cal = crops["calib"]
    twin.set("observe", False)
    with torch.no_grad():
        for i in range(len(cal)):   # one crop at a time: each crop's min and max
            twin(cal[i:i + 1])
    for q in twin.acts():
        q.init_range(global_minmax=q in (twin.inq, twin.poolq, twin.logq))
    ref = copy.deepcopy(twin)   # the FP32 model, unit by unit (blockwise's targets)
    if a.start:
        load_tflite(torch, twin, a.start)
        twin.merge_first()
        ref.merge_first()
    rows = []

    def score(tag, seconds=0.0):
        twin.set("quant", True)
        with torch.no_grad():
            row = {"tuning": tag, "s": round(seconds)}
            for k, x in crops.items():
                got = torch.cat([twin(b) for b in _batches(x)]).numpy()
                row[k] = bench_ptq._scores(refs[k].numpy(), got)
        rows.append(row)
        print(json.dumps(row), flush=True)

    score(f"start: {a.start}" if a.start else "nearest rounding, mean-minmax ranges")
    t0 = time.time()
    if a.mode == "end-to-end":
        twin.set("quant", True)
        fit(torch, functional, twin.weights(), [c.b for c in twin.convs] + [twin.fb],
            [q for q in twin.acts() if q is not twin.logq], lambda idx: twin(cal[idx]), refs["calib"], a.steps, cosine=True,
            range_lr=a.range_lr)
    else:
        blockwise(torch, functional, twin, ref, cal, a.steps, a.qdrop, a.range_lr)
    score(f"{a.mode}{' qdrop' if a.qdrop else ''}, {a.steps} steps{', ranges kept' if not a.range_lr else ''}",
          time.time() - t0)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


def fit(torch, functional, weights, biases, acts, forward, target, steps, batch=20, cosine=False, range_lr=1e-3):
    """Adam on ``forward(indices)`` against ``target[indices]`` (MSE), weights kept in their box; with
    ``cosine``, the learning rates decay to 0 on a cosine over the steps; ``range_lr`` 0 keeps the ranges."""
    opt = torch.optim.Adam([{"params": [w.w for w in weights], "lr": 1e-4}, {"params": biases, "lr": 1e-4},
                            {"params": [p for q in acts for p in (q.lo, q.hi)], "lr": range_lr}])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if cosine else None
    for _ in range(steps):
        idx = torch.randperm(len(target))[:batch]
        loss = functional.mse_loss(forward(idx), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        for w in weights:
            w.project()
        if schedule is not None:
            schedule.step()


def blockwise(torch, functional, twin, ref, cal, steps, qdrop, range_lr=1e-3):
    """Block after block: the quantized unit, reading the quantized model's own input so far (QDrop: each element
    of it quantized or FP32 at random), fitted to the FP32 unit's output (``ref``'s) on the FP32 input."""
    ref.set("float", False)
    twin.set("quant", True)
    with torch.no_grad():
        xq, xf = twin.inq(cal), cal
    for i in range(len(twin.units) + 1):
        with torch.no_grad():
            target = torch.cat([ref.unit(i, b) for b in _batches(xf, 20)])

        def forward(idx, i=i, xq=xq, xf=xf):
            x = xq[idx]
            if qdrop:
                x = torch.where(torch.rand_like(x) < 0.5, x, xf[idx])
            return twin.unit(i, x)

        weights, biases, acts = twin.unit_params(i)
        fit(torch, functional, weights, biases, acts, forward, target, steps, range_lr=range_lr)
        with torch.no_grad():
            xq, xf = torch.cat([twin.unit(i, b) for b in _batches(xq, 20)]), target


if __name__ == "__main__":
    main()
