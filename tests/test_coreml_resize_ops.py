"""The interpreter's resampling and transposed-convolution ops against TensorFlow (NHWC there,
NCHW in MIL): conv_transpose, upsample_bilinear, resize_bilinear, resize_nearest_neighbor,
resize, crop."""

from __future__ import annotations

import numpy as np
import pytest

from kexport.runtimes.coreml_reference import OPS

RNG = np.random.default_rng(3)


def nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


@pytest.mark.parametrize("k,stride,padding,size", [(3, 2, "SAME", (5, 6)), (2, 2, "VALID", (4, 3)),
                                                   (3, 1, "SAME", (4, 4)), (4, 3, "VALID", (3, 5))])
def test_conv_transpose_matches_tf(k, stride, padding, size):
    import tensorflow as tf

    x = RNG.standard_normal((2, *size, 3)).astype(np.float32)
    w = RNG.standard_normal((k, k, 4, 3)).astype(np.float32)  # TF: (kh, kw, out, in)
    h, wd = size
    out_hw = (h * stride, wd * stride) if padding == "SAME" else ((h - 1) * stride + k, (wd - 1) * stride + k)
    want = tf.nn.conv2d_transpose(x, w, (2, *out_hw, 4), stride, padding).numpy()
    mil_w = np.ascontiguousarray(np.transpose(w, (3, 2, 0, 1)))  # MIL: (in, out, kh, kw)
    got = OPS["conv_transpose"](x=nchw(x), weight=mil_w, pad_type=padding.lower(), strides=[stride, stride],
                                output_shape=np.array([2, 4, *out_hw]))
    np.testing.assert_allclose(nhwc(got), want, atol=1e-5)


@pytest.mark.parametrize("out", [(10, 12), (7, 5), (3, 2)])
@pytest.mark.parametrize("mode,tf_kw", [("UNALIGN_CORNERS", dict(half_pixel_centers=True)),
                                        ("STRICT_ALIGN_CORNERS", dict(align_corners=True)),
                                        ("DEFAULT", dict())])
def test_resize_bilinear_matches_tf(out, mode, tf_kw):
    import tensorflow as tf

    x = RNG.standard_normal((1, 5, 6, 2)).astype(np.float32)
    want = tf.compat.v1.image.resize_bilinear(x, out, **tf_kw).numpy() if tf_kw.get("align_corners") else \
        tf.raw_ops.ResizeBilinear(images=x, size=out, **tf_kw).numpy()
    got = OPS["resize_bilinear"](x=nchw(x), target_size_height=out[0], target_size_width=out[1], sampling_mode=mode)
    np.testing.assert_allclose(nhwc(got), want, atol=1e-5)
    lin = OPS["resize"](x=nchw(x), shape=np.array([out[0], out[1]]), resized_dims=2, interpolation_mode="LINEAR",
                        sampling_mode=mode)
    np.testing.assert_allclose(nhwc(lin), want, atol=1e-5)


@pytest.mark.parametrize("align", [False, True])
def test_upsample_bilinear_matches_tf(align):
    import tensorflow as tf

    x = RNG.standard_normal((1, 4, 3, 2)).astype(np.float32)
    kw = dict(align_corners=True) if align else dict(half_pixel_centers=True)
    want = tf.raw_ops.ResizeBilinear(images=x, size=(8, 6), **kw).numpy()
    got = OPS["upsample_bilinear"](x=nchw(x), scale_factor_height=2, scale_factor_width=2, align_corners=align)
    np.testing.assert_allclose(nhwc(got), want, atol=1e-5)


@pytest.mark.parametrize("out", [(10, 13), (3, 2), (5, 6)])
def test_resize_nearest_matches_tf_half_pixel(out):
    import tensorflow as tf

    x = RNG.standard_normal((1, 5, 6, 2)).astype(np.float32)
    want = tf.image.resize(x, out, method="nearest").numpy()
    got = OPS["resize_nearest_neighbor"](x=nchw(x), target_size_height=out[0], target_size_width=out[1])
    np.testing.assert_array_equal(nhwc(got), want)


def test_crop():
    x = RNG.standard_normal((1, 2, 6, 7)).astype(np.float32)
    got = OPS["crop"](x=x, crop_height=np.array([1, 2]), crop_width=np.array([0, 3]))
    np.testing.assert_array_equal(got, x[:, :, 1:4, 0:4])
