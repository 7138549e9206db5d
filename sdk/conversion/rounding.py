"""INT8 weight rounding by second-order error feedback (GPTQ), numpy only, for every route.

Rounding each weight to its nearest INT8 level is what the converters do. GPTQ (Frantar et al. 2022, "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers"; the update of Optimal Brain
Quantization) rounds a layer's weights one input column at a time and spreads each rounding error over the
columns not yet rounded, weighted by the inverse of the layer's input Hessian ``H = E[x x^T]``: it minimises the
layer's output error ``||(W - Q) X||^2`` on the calibration inputs, not each weight's own error. Measured on
EfficientNet-Lite0 (TFLite, 32 calibration photos, 200 held-out crops): weights-only output SQNR 19.5 dB nearest
-> 27.4 dB, full INT8 22.5 -> 24.3 dB.

The routes write the result back as float values on the INT8 grid (code x scale, the scale the converter will
derive itself: symmetric, ``max|w| / 127`` per output channel), so the converter's own rounding keeps every code;
each row keeps a weight at +-127 so that the converter derives that same scale.

Inputs are subsampled (:data:`ROWS` positions per sample and layer, fixed pseudo-random) so the cost stays a few
seconds per model; the result depends only on the data.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Hessians", "Pairs", "patches", "gptq", "grid_values", "compensated", "compensable", "may_compensate",
           "ROWS", "DAMP", "LEVELS", "MIN_POSITIONS"]

LEVELS = 127     # symmetric INT8 weights: codes -127..127 (both routes; TensorRT and TFLite use narrow range)
ROWS = 4096      # input rows (positions) per sample and layer that enter a Hessian
CHANNEL_ROWS = 256   # the same for depthwise layers: 9 or 25 weights per channel need fewer (their cost is C x K^2)
DAMP = 0.001     # dampening added to H's diagonal, as a fraction of its mean (H may be singular)
# the compensated solve (:func:`compensated`): its ridge towards W, as a fraction of H's mean diagonal, and the
# rows per weight column below which it does not solve. Measured on MobileNetV2 jetson (bench_ptq): 0.01 and 2
# fit noise where 32 samples give 5-10 rows per column (7x7 layers: weights moved by 100% and more, held-out
# SQNR 16.9 dB (gptq) -> 11.8); 1.0 and 32: 17.8
COMPENSATION_DAMP = 1.0
MIN_ROWS_PER_INPUT = 32
# the input positions (samples x positions per sample) a layer's compensation must see; below it the layer keeps
# plain GPTQ. Measured on MobileNetV2 rpi (48 held-out crops, output SQNR): compensating every layer 19.7 dB, plain
# GPTQ 21.3, all but the 7x7 stage and the classifier (32 x 49 = 1568 positions, 32 x 1) 22.2: fitted to 32
# samples' few positions, a compensation fits those samples, not the layer (its output SQNR fell on other crops)
MIN_POSITIONS = 2048
BLOCK = 128      # columns rounded per block (the lazy batch update of GPTQ's implementation)


class Hessians:
    """Per-layer sums of ``x x^T`` over calibration inputs: :meth:`add_rows` for dense layers (one input row
    per output position), :meth:`add_channels` for depthwise ones (one small Hessian per channel)."""

    def __init__(self, rows: int = ROWS, channel_rows: int = CHANNEL_ROWS):
        self.rows, self.channel_rows = rows, channel_rows
        self.sums: dict = {}

    @staticmethod
    def _subset(n: int, rows: int) -> np.ndarray | None:
        if n <= rows:
            return None
        return np.sort(np.random.default_rng(n).choice(n, rows, replace=False))

    def add_rows(self, key, x) -> None:
        """x: [N, K] input rows (e.g. im2col patches, or a 1x1 convolution's pixels)."""
        x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
        idx = self._subset(len(x), self.rows)
        if idx is not None:
            x = x[idx]
        h = (x.T @ x).astype(np.float64)
        self.sums[key] = self.sums.get(key, 0) + h

    def add_channels(self, key, p) -> None:
        """p: [N, K, C] patches of a depthwise layer (K kernel taps, C channels): one [K, K] Hessian per channel."""
        p = np.asarray(p, np.float32)
        idx = self._subset(len(p), self.channel_rows)
        if idx is not None:
            p = p[idx]
        pc = np.ascontiguousarray(p.transpose(2, 1, 0))     # [C, K, N]: batched BLAS, not einsum (10x slower)
        h = np.matmul(pc, pc.transpose(0, 2, 1)).astype(np.float64)
        self.sums[key] = self.sums.get(key, 0) + h

    def get(self, key):
        """The sum for ``key`` (None if nothing was added): GPTQ is invariant to its scale."""
        return self.sums.get(key)


class Pairs:
    """Per-layer statistics of paired inputs: ``x`` the layer's FP32 input, ``xq`` the same input in the INT8
    model (its upstream layers and its own input quantized), at the same positions. Keeps ``xq^T xq`` (the
    Hessian GPTQ rounds against), ``x^T xq`` (the cross term of the target ``W x``) and the mean of each input
    column: over every position when the caller gives it (``means``: the rows are a subset, a few hundred
    positions per depthwise layer and sample would make a noisy bias), else over the rows."""

    def __init__(self, rows: int = ROWS, channel_rows: int = CHANNEL_ROWS):
        self.rows, self.channel_rows = rows, channel_rows
        self.hq: dict = {}
        self.cross: dict = {}
        self.sum_x: dict = {}
        self.sum_q: dict = {}
        self.count: dict = {}
        self.samples: dict = {}

    def _add(self, key, h, c, mx, mq, n):
        for d, v in ((self.hq, h), (self.cross, c), (self.sum_x, mx), (self.sum_q, mq), (self.count, n),
                     (self.samples, 1)):
            d[key] = d.get(key, 0) + v

    def add_rows(self, key, x, xq, means=None) -> None:
        """x, xq: [N, K] input rows of a dense layer (the same positions); ``means``: (mean of x, mean of xq)
        per column [K] over all positions of this sample, None: the rows' own."""
        k = np.shape(x)[-1]
        x = np.asarray(x, np.float32).reshape(-1, k)
        xq = np.asarray(xq, np.float32).reshape(-1, k)
        if means is None:
            means = (x.astype(np.float64).mean(0), xq.astype(np.float64).mean(0))
        idx = Hessians._subset(len(x), self.rows)
        if idx is not None:
            x, xq = x[idx], xq[idx]
        x64, q64 = x.astype(np.float64), xq.astype(np.float64)
        self._add(key, q64.T @ q64, x64.T @ q64, np.asarray(means[0], np.float64), np.asarray(means[1], np.float64),
                  len(x))

    def add_channels(self, key, p, pq, means=None) -> None:
        """p, pq: [N, K, C] patches of a depthwise layer (the same positions); ``means``: (mean of p, mean of
        pq) [K, C] over all positions of this sample, None: the patches' own."""
        p, pq = np.asarray(p, np.float32), np.asarray(pq, np.float32)
        if means is None:
            means = (p.astype(np.float64).mean(0), pq.astype(np.float64).mean(0))
        idx = Hessians._subset(len(p), self.channel_rows)
        if idx is not None:
            p, pq = p[idx], pq[idx]
        # [C, K, N] in float32, products summed over at most channel_rows positions, then kept in float64: the
        # float64 copies of EfficientNet-Lite0's 1152-channel 5x5 patches were 8 of its 45 s of gptq_act
        pc, qc = (np.ascontiguousarray(v.transpose(2, 1, 0)) for v in (p, pq))
        qt = qc.transpose(0, 2, 1)
        self._add(key, np.matmul(qc, qt).astype(np.float64), np.matmul(pc, qt).astype(np.float64),
                  np.asarray(means[0], np.float64).T, np.asarray(means[1], np.float64).T, len(p))

    def get(self, key):
        """(Hessian of xq, cross term x^T xq, mean of x, mean of xq, rows) for ``key``, None if nothing added.
        The means are per column ([K]), or per row and column ([R, K]) for a depthwise layer."""
        if key not in self.hq:
            return None
        k = self.samples[key]
        return self.hq[key], self.cross[key], self.sum_x[key] / k, self.sum_q[key] / k, self.count[key]


def patches(x, kernel, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), rows: int | None = ROWS):
    """Convolution input patches of an NHWC tensor at (at most ``rows``, fixed pseudo-random) output positions:
    [P, kh, kw, C]. ``pads`` = (top, bottom, left, right) zeros around the input."""
    x = np.asarray(x, np.float32)
    kh, kw = kernel
    sh, sw = strides
    dh, dw = dilations
    top, bottom, left, right = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    n, h, w, c = x.shape
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        return np.zeros((0, kh, kw, c), np.float32)
    total = n * oh * ow
    pos = np.arange(total)
    if rows is not None and total > rows:
        pos = np.sort(np.random.default_rng(total).choice(total, rows, replace=False))
    b, rest = np.divmod(pos, oh * ow)
    r, col = np.divmod(rest, ow)
    ii = (r * sh)[:, None] + np.arange(kh)[None, :] * dh          # [P, kh]
    jj = (col * sw)[:, None] + np.arange(kw)[None, :] * dw        # [P, kw]
    return x[b[:, None, None], ii[:, :, None], jj[:, None, :], :]  # [P, kh, kw, C]


def same_pads(size, kernel, strides, dilations) -> tuple:
    """TensorFlow's SAME padding (top, bottom, left, right) for an input of spatial ``size`` (h, w)."""
    res = []
    for n, k, s, d in zip(size, kernel, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        res += [total // 2, total - total // 2]
    return tuple(res)


def gptq(weights, hessian, scales, damp: float = DAMP, levels: int = LEVELS, keep_rows: bool = True) -> np.ndarray:
    """INT8 codes [R, K] for ``weights`` [R, K] (rows: output channels; columns: the inputs a row sees), rounded
    by GPTQ against ``hessian`` ([K, K] shared by all rows, or [R, K, K] one per row) with per-row ``scales``
    [R] (or one scale). With ``keep_rows`` each row keeps a code at +-levels where its largest weight is, so
    ``max|w| / levels`` stays the row's scale."""
    w = np.array(weights, np.float64)
    rows, cols = w.shape
    s = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (rows,)).copy()
    s[s <= 0] = 1.0
    h = np.array(hessian, np.float64)
    batched = h.ndim == 3
    diag = np.diagonal(h, axis1=-2, axis2=-1).copy()
    # inputs always zero on the calibration data: their rows of H are zero; a unit diagonal decouples them,
    # so their weights get nearest rounding (other data may well reach them) and spread no error
    dead = diag <= 0
    eye = np.eye(cols, dtype=bool)
    if batched:
        h[dead[:, :, None] & eye[None]] = 1.0
        live = np.where(dead, 0.0, diag)
        mean = live.sum(-1) / np.maximum((~dead).sum(-1), 1)
        h += (damp * np.maximum(mean, 1e-12))[:, None, None] * eye[None]
    else:
        h[dead, dead] = 1.0
        mean = diag[~dead].mean() if (~dead).any() else 1.0
        h += damp * max(mean, 1e-12) * np.eye(cols)
    try:
        u = np.linalg.cholesky(np.linalg.inv(h))     # lower L: inv(H) = L L^T; GPTQ uses U = L^T
    except np.linalg.LinAlgError:
        return np.clip(np.round(np.asarray(weights, np.float64) / s[:, None]), -levels, levels)
    u = np.swapaxes(u, -1, -2)
    q = np.zeros((rows, cols))
    if batched:
        for i in range(cols):
            qi = np.clip(np.round(w[:, i] / s), -levels, levels)
            q[:, i] = qi
            err = (w[:, i] - qi * s) / u[:, i, i]
            w[:, i + 1:] -= err[:, None] * u[:, i, i + 1:]
    else:
        for a in range(0, cols, BLOCK):
            b = min(a + BLOCK, cols)
            wb, ub = w[:, a:b].copy(), u[a:b, a:b]
            errs = np.zeros((rows, b - a))
            for i in range(b - a):
                qi = np.clip(np.round(wb[:, i] / s), -levels, levels)
                q[:, a + i] = qi
                err = (wb[:, i] - qi * s) / ub[i, i]
                wb[:, i + 1:] -= err[:, None] * ub[i, i + 1:][None, :]
                errs[:, i] = err
            w[:, b:] -= errs @ u[a:b, b:]
    if keep_rows:
        _keep_scale(q, np.asarray(weights, np.float64), levels)
    return q


def _keep_scale(q, weights, levels) -> None:
    """Each row's largest weight back at +-levels where error feedback moved it off the grid's end (the
    converter derives the scale from max|w|)."""
    top = np.abs(q).max(1) < levels
    if top.any():
        r = np.nonzero(top)[0]
        c = np.abs(weights[r]).argmax(1)
        q[r, c] = np.sign(weights[r, c]) * levels


def grid_values(weights, hessian, per_row: bool = True, damp: float = DAMP) -> np.ndarray:
    """``weights`` [R, K] rounded by :func:`gptq` and written back as float values on the INT8 grid (codes x
    scales), with the converter's scales: ``max|w| / 127`` per row (``per_row``) or for the whole tensor."""
    w = np.asarray(weights, np.float64)
    amax = np.abs(w).max(1) if per_row else np.full(len(w), np.abs(w).max())
    scales = np.where(amax > 0, amax / LEVELS, 1.0)
    q = gptq(w, hessian, scales, damp, keep_rows=per_row)
    if not per_row:
        q_top = np.abs(q).max()
        if q_top < LEVELS:  # one weight at the grid's end for the whole tensor is enough
            i = np.unravel_index(np.abs(w).argmax(), w.shape)
            q[i] = np.sign(w[i]) * LEVELS
    return q * scales[:, None]


def compensable(stats) -> bool:
    """Whether a layer's :meth:`Pairs.get` statistics come from enough input positions (MIN_POSITIONS) for
    :func:`compensated` to fit the layer rather than its calibration samples."""
    return stats is not None and stats[4] >= MIN_POSITIONS


def may_compensate(positions: int, samples: int, depthwise: bool = False) -> bool:
    """Whether a layer with ``positions`` output positions per sample (its input rows: patches of a convolution,
    rows of a dense layer) can reach MIN_POSITIONS rows over ``samples``, as :func:`compensable` counts them
    (at most ROWS per sample, CHANNEL_ROWS for a depthwise layer). Known from the layer's shape before its inputs
    are computed: a route skips running the INT8 model up to a layer whose compensation would be refused."""
    return min(int(positions), CHANNEL_ROWS if depthwise else ROWS) * int(samples) >= MIN_POSITIONS


def compensated(weights, bias, stats, per_row: bool = True, damp: float = COMPENSATION_DAMP,
                min_rows: float = MIN_ROWS_PER_INPUT) -> tuple[np.ndarray, np.ndarray]:
    """(INT8 grid weights [R, K], bias [R]) of a layer whose inputs in the INT8 model are not its FP32 inputs.

    ``stats``: :meth:`Pairs.get` of the layer (Hessian ``xq^T xq`` [K, K] or one per row [R, K, K], cross term
    ``x^T xq``, means). The weights that best map the INT8 model's input ``xq`` to the FP32 output ``W x`` are
    ``W' = (W (x^T xq) + l W) (xq^T xq + l I)^-1`` (least squares with a ridge towards ``W``, ``l`` = ``damp`` x the
    mean diagonal: a ridge towards 0 would shrink every weight by more than an INT8 step): they undo
    what the upstream INT8 layers and this layer's own input quantization change in its input, as far as a
    linear map can. ``W'`` is then rounded by :func:`gptq` against ``xq^T xq`` (:func:`grid_values`), and the
    bias absorbs the mean output shift that is left: ``b + W mean(x) - Q mean(xq)``.
    With fewer than ``min_rows`` input rows per weight column the solve would fit noise: ``W`` is rounded as is
    (against the same Hessian). Inputs that were zero all along (diagonal 0) keep their weights."""
    w = np.asarray(weights, np.float64)
    hq, cross, mx, mq, n = stats
    hq = np.asarray(hq, np.float64)
    cross = np.asarray(cross, np.float64)
    target = w
    cols = w.shape[1]
    if n >= min_rows * cols:
        diag = np.diagonal(hq, axis1=-2, axis2=-1)
        dead = diag <= 0
        if hq.ndim == 3:
            lam = damp * np.maximum(diag.mean(-1), 1e-12)
            a = hq + lam[:, None, None] * np.eye(cols)[None]
            a[dead[:, :, None] & np.eye(cols, dtype=bool)[None]] = 1.0
            rhs = np.einsum("rk,rkl->rl", w, cross) + lam[:, None] * w   # W (x^T xq) + l W, one row per channel
            target = np.linalg.solve(a, rhs[:, :, None])[:, :, 0]   # a symmetric: (a^-1 rhs^T)^T
        else:
            lam = damp * max(float(diag.mean()), 1e-12)
            a = hq + lam * np.eye(cols)
            a[dead, dead] = 1.0
            target = np.linalg.solve(a, (w @ cross + lam * w).T).T
        target = np.where(dead if dead.ndim == 2 else dead[None, :], w, target)
    grid = grid_values(target, hq, per_row=per_row)
    b = np.zeros(len(w)) if bias is None else np.asarray(bias, np.float64)
    mx = np.asarray(mx, np.float64)
    mq = np.asarray(mq, np.float64)
    if mx.ndim == 2:      # depthwise: one mean vector per row (channel)
        shift = (w * mx).sum(1) - (grid * mq).sum(1)
    else:
        shift = w @ mx - grid @ mq
    return grid, b + shift

