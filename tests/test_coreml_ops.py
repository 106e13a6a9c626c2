"""The coreml-reference interpreter checked op by op against an independent reference
(TensorFlow kernels, or a plain NumPy formula in float64), including the edge cases of each op:
padding modes, strides, dilation, groups, broadcasting and negative axes.

Layout note: MIL images are (N, C, H, W); TensorFlow references run in NHWC and are transposed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kexport.runtimes.coreml_reference import OPS

tf = pytest.importorskip("tensorflow")
RNG = np.random.default_rng(7)


def rand(*shape, lo=-1.0, hi=1.0):
    return RNG.uniform(lo, hi, size=shape).astype(np.float32)


def close(got, want, tol=1e-5):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want))) if want.size else 1.0)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    assert err <= tol * scale, f"max abs err {err:.3g} > {tol * scale:.3g}"


def nchw(t):
    return np.transpose(np.asarray(t), (0, 3, 1, 2))


def nhwc(a):
    return np.transpose(a, (0, 2, 3, 1))


# ---- conv ---------------------------------------------------------------------------------------

def tf_conv(x, w, strides, pads, dilations, groups):
    """Reference: TensorFlow conv2d (NHWC, HWIO) per group, explicit padding."""
    xs = np.split(nhwc(x), groups, axis=3)
    ws = np.split(w, groups, axis=0)  # (C_out/g, C_in/g, kh, kw)
    outs = [tf.nn.conv2d(xg, np.transpose(wg, (2, 3, 1, 0)), strides=[1, *strides, 1],
                         padding=[[0, 0], list(pads[0]), list(pads[1]), [0, 0]], dilations=[1, *dilations, 1])
            for xg, wg in zip(xs, ws)]
    return nchw(np.concatenate([o.numpy() for o in outs], axis=3))


def tf_same_pads(size, k, s, d, lower=False):
    """Padding TensorFlow itself uses for SAME (extra pixel after); `lower` moves it before."""
    eff = (k - 1) * d + 1
    total = max((math.ceil(size / s) - 1) * s + eff - size, 0)
    return (total - total // 2, total // 2) if lower else (total // 2, total - total // 2)


CONV_CASES = [
    # (C_in, C_out, k, strides, pad_type, custom pad, dilations, groups, H, W)
    (3, 8, (3, 3), (1, 1), "valid", None, (1, 1), 1, 9, 9),
    (3, 8, (3, 3), (2, 2), "same", None, (1, 1), 1, 9, 10),  # odd size: the extra pixel goes after
    (4, 6, (3, 2), (2, 1), "same_lower", None, (1, 1), 1, 8, 7),  # extra pixel before
    (4, 6, (3, 3), (1, 1), "custom", (1, 2, 0, 3), (1, 1), 1, 7, 7),
    (4, 6, (3, 3), (1, 1), "same", None, (2, 3), 1, 11, 12),  # dilation
    (5, 7, (1, 1), (1, 1), "valid", None, (1, 1), 1, 6, 6),  # 1x1 fast path
    (5, 7, (1, 1), (2, 2), "valid", None, (1, 1), 1, 7, 7),  # strided 1x1
    (6, 6, (3, 3), (1, 1), "same", None, (1, 1), 6, 8, 8),  # depthwise
    (6, 12, (5, 5), (2, 2), "same", None, (1, 1), 6, 9, 9),  # depthwise, multiplier 2
    (6, 6, (3, 3), (1, 1), "same", None, (2, 2), 6, 9, 9),  # depthwise, dilated
    (6, 9, (3, 3), (1, 1), "valid", None, (1, 1), 3, 8, 8),  # grouped
]


@pytest.mark.parametrize("cin,cout,k,s,pt,pad,d,g,h,w", CONV_CASES)
def test_conv(cin, cout, k, s, pt, pad, d, g, h, w):
    x = rand(2, cin, h, w)
    wt = rand(cout, cin // g, *k)
    b = rand(cout)
    if pt == "valid":
        pads = [(0, 0), (0, 0)]
    elif pt == "custom":
        pads = [(pad[0], pad[1]), (pad[2], pad[3])]
    else:
        pads = [tf_same_pads(n, kk, ss, dd, pt == "same_lower") for n, kk, ss, dd in zip((h, w), k, s, d)]
    want = tf_conv(x, wt, s, pads, d, g) + b.reshape(1, -1, 1, 1)
    got = OPS["conv"](x=x, weight=wt, bias=b, strides=np.array(s), pad_type=pt,
                      pad=np.array(pad or (0, 0, 0, 0)), dilations=np.array(d), groups=g)
    close(got, want, 1e-5)


def test_conv_same_matches_tensorflow_same():
    x, wt = rand(1, 3, 10, 11), rand(4, 3, 3, 3)
    want = nchw(tf.nn.conv2d(nhwc(x), np.transpose(wt, (2, 3, 1, 0)), strides=2, padding="SAME").numpy())
    close(OPS["conv"](x=x, weight=wt, strides=np.array([2, 2]), pad_type="same", groups=1), want)


def test_conv1d():
    x, wt = rand(2, 3, 15), rand(5, 3, 4)
    want = tf.nn.conv1d(np.transpose(x, (0, 2, 1)), np.transpose(wt, (2, 1, 0)), stride=2, padding="SAME").numpy()
    got = OPS["conv"](x=x, weight=wt, strides=np.array([2]), pad_type="same", dilations=np.array([1]), groups=1)
    close(got, np.transpose(want, (0, 2, 1)))


# ---- pooling ------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,s,pt", [((2, 2), (2, 2), "valid"), ((3, 3), (2, 2), "valid"), ((3, 3), (2, 2), "same"),
                                    ((3, 2), (1, 2), "same"), ((3, 3), (1, 1), "same")])
def test_max_and_avg_pool(k, s, pt):
    x = rand(2, 4, 9, 8)
    tf_pad = pt.upper()
    want_max = nchw(tf.nn.max_pool2d(nhwc(x), k, s, tf_pad).numpy())
    want_avg = nchw(tf.nn.avg_pool2d(nhwc(x), k, s, tf_pad).numpy())  # TF's SAME excludes the padding
    args = dict(x=x, kernel_sizes=np.array(k), strides=np.array(s), pad_type=pt, pad=np.zeros(4, int))
    close(OPS["max_pool"](**args), want_max)
    close(OPS["avg_pool"](**args, exclude_padding_from_average=True), want_avg)


def test_avg_pool_including_padding_and_custom_pad():
    x = rand(1, 2, 6, 6)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 0), (2, 1)])
    want = nchw(tf.nn.avg_pool2d(nhwc(padded), 3, 1, "VALID").numpy())  # zeros counted
    got = OPS["avg_pool"](x=x, kernel_sizes=np.array([3, 3]), strides=np.array([1, 1]), pad_type="custom",
                          pad=np.array([1, 0, 2, 1]), exclude_padding_from_average=False)
    close(got, want)


def naive_pool(x, k, s, reduce, fill):
    """Loop reference with ceil_mode: windows may run past the end (those cells are ignored)."""
    n, c, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = reduce(x[:, :, i * s : i * s + k, j * s : j * s + k].reshape(n, c, -1), axis=-1)
    return out


def test_pool_ceil_mode_and_l2_pool():
    x = rand(1, 3, 7, 8)
    args = dict(x=x, kernel_sizes=np.array([2, 2]), strides=np.array([2, 2]), pad_type="valid", pad=np.zeros(4, int))
    close(OPS["max_pool"](**args, ceil_mode=True), naive_pool(x, 2, 2, np.max, -np.inf))
    l2 = naive_pool(x.astype(np.float64) ** 2, 2, 2, np.sum, 0)[:, :, :3, :4] ** 0.5
    close(OPS["l2_pool"](**args), l2)


# ---- normalization ------------------------------------------------------------------------------

def test_batch_norm():
    x, mean, var, g, b = rand(2, 5, 3, 4), rand(5), rand(5, lo=0.1, hi=2), rand(5), rand(5)
    want = tf.nn.batch_normalization(nhwc(x), mean, var, b, g, 1e-3).numpy()
    close(OPS["batch_norm"](x=x, mean=mean, variance=var, gamma=g, beta=b, epsilon=np.float32(1e-3)), nchw(want))


def test_instance_norm():
    x, g, b = rand(2, 3, 4, 5), rand(3), rand(3)
    x64 = x.astype(np.float64)
    mu, var = x64.mean(axis=(2, 3), keepdims=True), x64.var(axis=(2, 3), keepdims=True)
    want = (x64 - mu) / np.sqrt(var + 1e-5) * g.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)
    close(OPS["instance_norm"](x=x, gamma=g, beta=b, epsilon=np.float32(1e-5)), want)


@pytest.mark.parametrize("axes", [[-1], [2, 3], [-2, -1]])
def test_layer_norm(axes):
    x = rand(2, 3, 4, 6)
    red = tuple(a % 4 for a in axes)
    shape = [x.shape[i] for i in red]
    g, b = rand(*shape), rand(*shape)
    mean, var = tf.nn.moments(tf.constant(x), red, keepdims=True)
    want = (x - mean) / tf.sqrt(var + 1e-3)
    bshape = [x.shape[i] if i in red else 1 for i in range(4)]
    want = want.numpy() * g.reshape(bshape) + b.reshape(bshape)
    close(OPS["layer_norm"](x=x, axes=np.array(axes), gamma=g, beta=b, epsilon=np.float32(1e-3)), want)


def test_l2_norm_and_local_response_norm():
    x = rand(2, 4, 3, 3)
    want = tf.math.l2_normalize(x, axis=[1, 2, 3], epsilon=1e-6).numpy()
    close(OPS["l2_norm"](x=x, axes=np.array([-3, -2, -1]), epsilon=np.float32(1e-6)), want)
    want = tf.nn.local_response_normalization(nhwc(x), depth_radius=1, bias=2.0, alpha=1e-2 / 3, beta=0.75).numpy()
    close(OPS["local_response_norm"](x=x, size=3, alpha=np.float32(1e-2), beta=np.float32(0.75), k=np.float32(2.0)),
          nchw(want))


# ---- linear algebra -----------------------------------------------------------------------------

def test_linear():
    x, w, b = rand(3, 2, 5), rand(4, 5), rand(4)
    close(OPS["linear"](x=x, weight=w, bias=b), tf.linalg.matmul(x, w, transpose_b=True).numpy() + b)


@pytest.mark.parametrize("xs,ys,tx,ty", [((3, 4), (4, 5), False, False), ((2, 4, 3), (2, 4, 5), True, False),
                                         ((2, 1, 3, 4), (5, 6, 4), False, True), ((4,), (4, 3), False, False)])
def test_matmul(xs, ys, tx, ty):
    x, y = rand(*xs), rand(*ys)
    want = tf.experimental.numpy.matmul(np.swapaxes(x, -1, -2) if tx else x, np.swapaxes(y, -1, -2) if ty else y)
    close(OPS["matmul"](x=x, y=y, transpose_x=tx, transpose_y=ty), want.numpy())


@pytest.mark.parametrize("eq,shapes", [("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
                                       ("abc,cd->abd", [(2, 3, 4), (4, 5)])])
def test_einsum(eq, shapes):
    vals = [rand(*s) for s in shapes]
    close(OPS["einsum"](values=vals, equation=eq), tf.einsum(eq, *vals).numpy())


@pytest.mark.parametrize("axis", [-1, 1, 0])
def test_softmax(axis):
    x = rand(3, 4, 5, lo=-50, hi=50)  # large logits: must not overflow
    close(OPS["softmax"](x=x, axis=axis), tf.nn.softmax(x, axis=axis).numpy())


# ---- element-wise -------------------------------------------------------------------------------

UNARY = {
    "relu": tf.nn.relu, "relu6": tf.nn.relu6, "sigmoid": tf.sigmoid, "tanh": tf.tanh, "silu": tf.nn.silu,
    "softplus": tf.nn.softplus, "softsign": tf.nn.softsign, "erf": tf.math.erf, "exp": tf.exp,
    "abs": tf.abs, "square": tf.square, "floor": tf.floor, "ceil": tf.math.ceil, "round": tf.round,
    "sign": tf.sign, "sin": tf.sin, "cos": tf.cos, "tan": tf.tan, "atan": tf.atan, "sinh": tf.sinh,
    "cosh": tf.cosh, "asinh": tf.asinh, "exp2": lambda x: tf.pow(2.0, x), "identity": tf.identity,
}
POSITIVE = {"log": tf.math.log, "sqrt": tf.sqrt, "acosh": tf.acosh}
UNIT = {"asin": tf.asin, "acos": tf.acos, "atanh": tf.atanh}


@pytest.mark.parametrize("name", sorted(UNARY) + sorted(POSITIVE) + sorted(UNIT))
def test_unary(name):
    if name in POSITIVE:
        x, ref = rand(3, 7, lo=1.01, hi=6), POSITIVE[name]
    elif name in UNIT:
        x, ref = rand(3, 7, lo=-0.95, hi=0.95), UNIT[name]
    else:
        x, ref = rand(3, 7, lo=-6, hi=6), UNARY[name]
        x[0, :3] = [0.5, -2.5, 0.0]  # round half to even, sign of 0
    close(OPS[name](x=x), ref(x).numpy(), 2e-6)


@pytest.mark.parametrize("mode,ref", [("EXACT", lambda x: tf.nn.gelu(x, approximate=False)),
                                      ("TANH_APPROXIMATION", lambda x: tf.nn.gelu(x, approximate=True)),
                                      ("SIGMOID_APPROXIMATION", lambda x: x * tf.sigmoid(1.702 * x))])
def test_gelu(mode, ref):
    x = rand(4, 9, lo=-5, hi=5)
    close(OPS["gelu"](x=x, mode=mode), ref(x).numpy(), 2e-6)


def test_parametric_activations():
    x = rand(2, 3, 4, 4, lo=-4, hi=4)
    a = np.float32(0.3)
    close(OPS["leaky_relu"](x=x, alpha=a), tf.nn.leaky_relu(x, 0.3).numpy())
    close(OPS["elu"](x=x, alpha=np.float32(1.0)), tf.nn.elu(x).numpy())
    alpha = rand(3, lo=0, hi=1)
    close(OPS["prelu"](x=x, alpha=alpha), np.where(x >= 0, x, alpha.reshape(1, 3, 1, 1) * x))
    close(OPS["sigmoid_hard"](x=x, alpha=np.float32(1 / 6), beta=np.float32(0.5)), tf.nn.relu6(x + 3).numpy() / 6)
    close(OPS["clip"](x=x, alpha=np.float32(-1), beta=np.float32(2)), tf.clip_by_value(x, -1.0, 2.0).numpy())
    close(OPS["threshold"](x=x, alpha=np.float32(0.5)), np.maximum(x, 0.5))
    close(OPS["clamped_relu"](x=x, alpha=a, beta=np.float32(1.5)), np.minimum(tf.nn.leaky_relu(x, 0.3).numpy(), 1.5))
    close(OPS["scaled_tanh"](x=x, alpha=np.float32(2), beta=np.float32(0.5)), 2 * np.tanh(0.5 * x.astype(np.float64)))
    close(OPS["thresholded_relu"](x=x, alpha=np.float32(1)), np.where(x > 1, x, 0))
    close(OPS["linear_activation"](x=x, alpha=np.float32(2), beta=np.float32(-1)), 2 * x - 1)
    pos = np.abs(x) + 0.1
    close(OPS["rsqrt"](x=pos, epsilon=np.float32(1e-6)), tf.math.rsqrt(pos + 1e-6).numpy())
    close(OPS["inverse"](x=pos, epsilon=np.float32(1e-4)), 1 / (pos.astype(np.float64) + 1e-4))


BINARY = {"add": tf.add, "sub": tf.subtract, "mul": tf.multiply, "real_div": tf.divide,
          "floor_div": tf.math.floordiv, "mod": tf.math.floormod, "maximum": tf.maximum, "minimum": tf.minimum,
          "equal": tf.equal, "not_equal": tf.not_equal, "less": tf.less, "less_equal": tf.less_equal,
          "greater": tf.greater, "greater_equal": tf.greater_equal}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("xs,ys", [((2, 1, 3), (4, 1)), ((3,), ()), ((2, 3), (2, 3))])
def test_binary_broadcasting(name, xs, ys):
    x, y = rand(*xs, lo=-4, hi=4), rand(*ys, lo=0.5, hi=3)
    if name.endswith("equal") and x.size > 1:
        x.reshape(-1)[0] = y.reshape(-1)[0]  # exercise equality
    close(OPS[name](x=x, y=y), BINARY[name](x, y).numpy(), 2e-6)


def test_pow_logical_select_cast():
    x, y = rand(3, 4, lo=0.1, hi=3), rand(4, lo=-2, hi=2)
    close(OPS["pow"](x=x, y=y), tf.pow(x, y).numpy(), 2e-6)
    a, b = RNG.random((3, 4)) > 0.5, RNG.random(4) > 0.5
    for name, ref in (("logical_and", tf.logical_and), ("logical_or", tf.logical_or), ("logical_xor", tf.math.logical_xor)):
        assert np.array_equal(OPS[name](x=a, y=b), ref(a, b).numpy())
    assert np.array_equal(OPS["logical_not"](x=a), ~a)
    xa, xb = rand(3, 4), rand(4)
    close(OPS["select"](cond=a, a=xa, b=xb), tf.where(a, xa, xb).numpy())
    v = rand(5, lo=-3, hi=3)
    for dt, tdt in (("int32", tf.int32), ("fp16", tf.float16), ("bool", tf.bool)):
        got = OPS["cast"](x=v, dtype=dt)
        assert np.array_equal(got, tf.cast(v, tdt).numpy()), dt


# ---- tensor ops ---------------------------------------------------------------------------------

def test_reshape_transpose_squeeze_expand():
    x = rand(2, 3, 4)
    close(OPS["reshape"](x=x, shape=np.array([0, -1])), tf.reshape(x, (2, 12)).numpy())
    close(OPS["transpose"](x=x, perm=np.array([0, -1, 1])), tf.transpose(x, (0, 2, 1)).numpy())
    y = rand(1, 3, 1, 2)
    close(OPS["squeeze"](x=y, axes=np.array([-2])), tf.squeeze(y, [2]).numpy())
    close(OPS["squeeze"](x=y), tf.squeeze(y).numpy())
    close(OPS["expand_dims"](x=x, axes=np.array([0, -1])), x[None, ..., None])
    close(OPS["flatten2d"](x=x, axis=-1), x.reshape(6, 4))


def test_concat_stack_split():
    a, b = rand(2, 3), rand(2, 2)
    close(OPS["concat"](values=[a, b], axis=-1, interleave=False), tf.concat([a, b], -1).numpy())
    c, d = rand(2, 2), rand(2, 2)
    want = np.stack([c, d], axis=2).reshape(2, 4)  # interleave: c0 d0 c1 d1
    close(OPS["concat"](values=[c, d], axis=1, interleave=True), want)
    close(OPS["stack"](values=[c, d], axis=-1), tf.stack([c, d], -1).numpy())
    x = rand(4, 6)
    for got, want in zip(OPS["split"](x=x, axis=-1, num_splits=3), tf.split(x, 3, axis=-1)):
        close(got, want.numpy())
    for got, want in zip(OPS["split"](x=x, axis=1, split_sizes=np.array([1, 5])), tf.split(x, [1, 5], axis=1)):
        close(got, want.numpy())


def test_slice_by_index_and_size():
    x = rand(4, 5, 6)
    got = OPS["slice_by_index"](x=x, begin=np.array([1, 0, -1]), end=np.array([3, 0, 0]), stride=np.array([1, 2, -2]),
                                begin_mask=np.array([False, True, False]), end_mask=np.array([False, True, True]),
                                squeeze_mask=np.array([False, False, False]))
    close(got, tf.strided_slice(x, [1, 0, -1], [3, 0, 0], [1, 2, -2], begin_mask=2, end_mask=6).numpy())
    got = OPS["slice_by_index"](x=x, begin=np.array([2, 1, 0]), end=np.array([3, 4, 6]), stride=np.array([1, 1, 1]),
                                squeeze_mask=np.array([True, False, False]))
    close(got, tf.strided_slice(x, [2, 1, 0], [3, 4, 6], shrink_axis_mask=1).numpy())
    close(OPS["slice_by_size"](x=x, begin=np.array([1, -3, 0]), size=np.array([2, -1, 4])), tf.slice(x, [1, 2, 0], [2, -1, 4]).numpy())


def test_gather_family():
    x = rand(5, 4, 3)
    idx = np.array([[0, -1], [2, 3]])
    close(OPS["gather"](x=x, indices=idx, axis=1), tf.gather(x, [[0, 3], [2, 3]], axis=1).numpy())
    bidx = RNG.integers(0, 4, size=(5, 2))
    close(OPS["gather"](x=x, indices=bidx, axis=1, batch_dims=1), tf.gather(x, bidx, axis=1, batch_dims=1).numpy())
    aidx = RNG.integers(-3, 3, size=(5, 4, 2))
    want = tf.experimental.numpy.take_along_axis(x, np.where(aidx < 0, aidx + 3, aidx), axis=-1).numpy()
    close(OPS["gather_along_axis"](x=x, indices=aidx, axis=-1), want)
    nd = np.array([[0, 1], [4, 3]])
    close(OPS["gather_nd"](x=x, indices=nd), tf.gather_nd(x, nd).numpy())


@pytest.mark.parametrize("mode", ["constant", "reflect", "replicate"])
def test_pad(mode):
    x = rand(2, 3, 4)
    p = np.array([1, 2, 0, 3])  # pairs for the last two axes
    if mode == "replicate":
        want = np.pad(x, [(0, 0), (1, 2), (0, 3)], mode="edge")
    else:
        want = tf.pad(x, [[0, 0], [1, 2], [0, 3]], mode=mode.upper(), constant_values=1.5 if mode == "constant" else 0).numpy()
    close(OPS["pad"](x=x, pad=p, mode=mode, constant_val=np.float32(1.5)), want)


def test_small_tensor_ops():
    x = rand(3, 4)
    assert OPS["shape"](x=x).tolist() == [3, 4]
    close(OPS["tile"](x=x, reps=np.array([2, 1])), tf.tile(x, [2, 1]).numpy())
    close(OPS["fill"](shape=np.array([2, 3]), value=np.float32(2.5)), tf.fill([2, 3], 2.5).numpy())
    close(OPS["range_1d"](end=np.float32(5), start=np.float32(1), step=np.float32(1.5)), tf.range(1.0, 5.0, 1.5).numpy())
    sq = rand(4, 5)
    close(OPS["band_part"](x=sq, lower=1, upper=0), tf.linalg.band_part(sq, 1, 0).numpy())
    close(OPS["band_part"](x=sq, lower=-1, upper=2), tf.linalg.band_part(sq, -1, 2).numpy())
    for excl, rev in ((False, False), (True, False), (False, True), (True, True)):
        close(OPS["cumsum"](x=x, axis=-1, exclusive=excl, reverse=rev), tf.math.cumsum(x, -1, excl, rev).numpy())
    ind = np.array([[0, 2], [1, 3]])
    close(OPS["one_hot"](indices=ind, one_hot_vector_size=4, axis=1, on_value=np.float32(2), off_value=np.float32(-1)),
          tf.one_hot(ind, 4, 2.0, -1.0, axis=1).numpy())
    close(OPS["ones_like"](x=x), np.ones((3, 4)))


def test_resampling_ops():
    x = rand(1, 8, 2, 3)
    close(OPS["upsample_nearest_neighbor"](x=x, scale_factor_height=2, scale_factor_width=3),
          nchw(tf.image.resize(nhwc(x), (4, 9), method="nearest").numpy()))
    close(OPS["depth_to_space"](x=x, block_size=2), nchw(tf.nn.depth_to_space(nhwc(x), 2).numpy()))
    y = rand(1, 2, 4, 6)
    close(OPS["space_to_depth"](x=y, block_size=2), nchw(tf.nn.space_to_depth(nhwc(y), 2).numpy()))


@pytest.mark.parametrize("name,ref", [("reduce_mean", tf.reduce_mean), ("reduce_sum", tf.reduce_sum),
                                      ("reduce_max", tf.reduce_max), ("reduce_min", tf.reduce_min),
                                      ("reduce_prod", tf.reduce_prod), ("reduce_log_sum_exp", tf.reduce_logsumexp),
                                      ("reduce_l2_norm", lambda x, a, k: tf.sqrt(tf.reduce_sum(x * x, a, k))),
                                      ("reduce_l1_norm", lambda x, a, k: tf.reduce_sum(tf.abs(x), a, k)),
                                      ("reduce_sum_square", lambda x, a, k: tf.reduce_sum(x * x, a, k))])
@pytest.mark.parametrize("axes,keep", [([1, -1], True), ([-2], False), (None, False)])
def test_reductions(name, ref, axes, keep):
    x = rand(2, 3, 4, lo=0.5, hi=1.5)
    want = ref(x, None if axes is None else [a % 3 for a in axes], keep).numpy()
    close(OPS[name](x=x, axes=None if axes is None else np.array(axes), keep_dims=keep), want, 2e-6)
    if name == "reduce_sum":
        close(OPS["reduce_log_sum"](x=x, axes=np.array([0]), keep_dims=False), np.log(x.astype(np.float64).sum(0)))


def test_argmax_topk_classify():
    x = rand(3, 6)
    assert np.array_equal(OPS["reduce_argmax"](x=x, axis=-1, keep_dims=False), tf.argmax(x, -1).numpy())
    assert np.array_equal(OPS["reduce_argmin"](x=x, axis=0, keep_dims=True), tf.argmin(x, 0).numpy()[None])
    vals, idx = OPS["topk"](x=x, k=2, axis=-1)
    tv = tf.math.top_k(x, 2)
    close(vals, tv.values.numpy())
    assert np.array_equal(idx, tv.indices.numpy())
    label, probs = OPS["classify"](probabilities=np.array([[0.1, 0.7, 0.2]], np.float32), classes=["a", "b", "c"])
    assert label == "b" and list(probs) == ["a", "b", "c"] and probs["b"] == pytest.approx(0.7)


# ---- compressed weights (constexpr_*), against coremltools' own decompress functions ----------

def test_constexpr_affine_dequantize_per_channel():
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_affine_dequantize as ref

    q = RNG.integers(-128, 127, size=(4, 3, 2, 2)).astype(np.int8)
    zp, scale = RNG.integers(-3, 3, size=4).astype(np.int8), rand(4, lo=0.01, hi=0.1)
    want = ref.decompress(q, zp, scale, 0)
    close(OPS["constexpr_affine_dequantize"](quantized_data=q, zero_point=zp, scale=scale, axis=0), want)
    want = ref.decompress(q, np.int8(2), np.float32(0.05), 1)  # per tensor
    close(OPS["constexpr_affine_dequantize"](quantized_data=q, zero_point=np.int8(2), scale=np.float32(0.05), axis=1), want)


def test_constexpr_blockwise_shift_scale():
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_blockwise_shift_scale as ref

    data = RNG.integers(-128, 127, size=(4, 6, 3)).astype(np.int8)
    scale, offset = rand(4, 2, 1, lo=0.01, hi=0.1), RNG.integers(-4, 4, size=(4, 2, 1)).astype(np.int8)
    close(OPS["constexpr_blockwise_shift_scale"](data=data, scale=scale, offset=offset), ref.decompress(data, scale, offset))
    close(OPS["constexpr_blockwise_shift_scale"](data=data, scale=scale), ref.decompress(data, scale, None))


@pytest.mark.parametrize("nbits", [2, 4, 6])
def test_constexpr_lut_to_dense_packed(nbits):
    from coremltools.converters.mil.mil.ops.defs.iOS16.constexpr_ops import constexpr_lut_to_dense as ref
    from coremltools.optimize._utils import pack_elements_into_bits

    shape = (5, 3, 3)
    idx = RNG.integers(0, 2**nbits, size=int(np.prod(shape))).astype(np.uint8)
    lut = rand(2**nbits)
    packed = pack_elements_into_bits(idx, nbits)
    want = ref.decompress(lut, packed, np.array(shape))
    close(OPS["constexpr_lut_to_dense"](indices=packed, lut=lut, shape=np.array(shape)), want)


def test_constexpr_lut_to_dense_blockwise():
    from coremltools.converters.mil.mil.ops.defs.iOS18.compression import constexpr_lut_to_dense as ref

    idx = RNG.integers(0, 4, size=(4, 6)).astype(np.uint8)
    lut = rand(2, 3, 4, 1)  # a palette per (2 x 2) block
    close(OPS["constexpr_lut_to_dense"](indices=idx, lut=lut), ref.decompress(idx, lut, None))


# ---- the interpreter around the ops ------------------------------------------------------------

def test_fp16_results_are_rounded_to_half_precision():
    from kexport.runtimes.coreml_reference.program import Program, Step

    x = np.array([[1.0, 1e-4, 3.14159265]], np.float32)
    prog = Program(inputs={"x": ((1, 3), np.float32)}, outputs=[("y", "y"), ("z", "z")], steps=[
        Step("cast", "c", {"x": ("ref", "x"), "dtype": ("const", "fp16")}, [("h", np.float16)]),
        Step("mul", "m", {"x": ("ref", "h"), "y": ("ref", "k")}, [("y", np.float16)]),
        Step("mul", "m32", {"x": ("ref", "x"), "y": ("ref", "k")}, [("z", np.float32)]),
    ], consts={"k": np.float32(3.0)})
    out = prog.run({"x": x})
    want16 = (x.astype(np.float16).astype(np.float32) * 3).astype(np.float16).astype(np.float32)
    assert np.array_equal(out["y"], want16)
    assert np.array_equal(out["z"], x * 3)
    assert not np.array_equal(out["y"], out["z"])  # the fp16 path really lost precision


def test_every_op_listed_in_docs_is_registered():
    # keeps docs/coreml.md's op table honest: nothing listed that the interpreter lacks
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "coreml.md").read_text()
    table = doc.split("<!-- ops -->")[1].split("<!-- /ops -->")[0]
    listed = set(re.findall(r"`([a-z0-9_]+)`", table))
    assert listed == set(OPS), f"documented but missing: {listed - set(OPS)}; missing from docs: {set(OPS) - listed}"
