"""Tests of :mod:`sfdfuse_core.imgmsg` (sensor_msgs/Image <-> numpy without cv_bridge)."""
import array
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from sfdfuse_core.imgmsg import (array_to_image_fields, decode_compressed, decode_frame,
                                 decode_image, encode_compressed, fill_image_msg,
                                 image_msg_to_array, ImageConversionError)


def _msg(**fields):
    base = dict(height=0, width=0, encoding='mono8', is_bigendian=0, step=0, data=b'')
    base.update(fields)
    return SimpleNamespace(**base)


def _random_image(rng, encoding, h=5, w=7):
    if encoding in ('mono8', '8UC1'):
        return rng.integers(0, 256, (h, w), dtype=np.uint8)
    if encoding in ('mono16', '16UC1'):
        return rng.integers(0, 65536, (h, w), dtype=np.uint16)
    if encoding == '32FC1':
        return rng.normal(300.0, 10.0, (h, w)).astype(np.float32)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize('encoding', ['mono8', '8UC1', 'mono16', '16UC1', '32FC1', 'bgr8',
                                      'rgb8'])
@pytest.mark.parametrize('container', [bytes, bytearray, memoryview, 'array', 'numpy'])
def test_round_trip(rng, encoding, container):
    img = _random_image(rng, encoding)
    fields = array_to_image_fields(img, encoding)
    assert isinstance(fields['data'], bytes) and fields['is_bigendian'] == 0
    assert fields['step'] * fields['height'] == len(fields['data'])
    data = fields['data']
    if container == 'array':
        data = array.array('B', data)
    elif container == 'numpy':
        data = np.frombuffer(data, np.uint8)
    else:
        data = container(data)
    out = image_msg_to_array(_msg(**{**fields, 'data': data}))
    assert out.dtype == img.dtype and out.shape == img.shape
    np.testing.assert_array_equal(out, img)


def test_rgb8_is_flipped_to_bgr_and_alpha_dropped():
    rgb = np.array([[[10, 20, 30], [40, 50, 60]]], np.uint8)  # R, G, B
    out = decode_image(rgb.tobytes(), 1, 2, 'rgb8', 6)
    np.testing.assert_array_equal(out, rgb[..., ::-1])
    rgba = np.array([[[10, 20, 30, 255]]], np.uint8)
    np.testing.assert_array_equal(decode_image(rgba.tobytes(), 1, 1, 'rgba8', 4), [[[30, 20, 10]]])
    bgra = np.array([[[10, 20, 30, 7]]], np.uint8)
    np.testing.assert_array_equal(decode_image(bgra.tobytes(), 1, 1, 'bgra8', 4), [[[10, 20, 30]]])
    fields = array_to_image_fields(rgb[..., ::-1], 'rgb8')  # BGR in, RGB bytes out
    assert fields['data'] == rgb.tobytes()


def test_mono8_decoding_is_zero_copy():
    buf = bytearray(range(12))
    out = decode_image(buf, 3, 4, 'mono8', 4)
    buf[0] = 99
    assert out[0, 0] == 99  # a view of the message buffer
    owned = decode_image(buf, 3, 4, 'mono8', 4, copy=True)
    buf[0] = 1
    assert owned[0, 0] == 99 and owned.flags.writeable and owned.flags.c_contiguous
    assert not decode_image(bytes(buf), 3, 4, 'mono8', 4).flags.writeable


@pytest.mark.parametrize('encoding', ['mono16', '16UC1'])
def test_big_endian_mono16(rng, encoding):
    img = rng.integers(0, 65536, (4, 6), dtype=np.uint16)
    out = decode_image(img.astype('>u2').tobytes(), 4, 6, encoding, 12, is_bigendian=True)
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, img)


def test_big_endian_float():
    img = np.array([[1.5, -2.25]], np.float32)
    out = decode_image(img.astype('>f4').tobytes(), 1, 2, '32FC1', 8, is_bigendian=1)
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize('encoding,pad', [('mono8', 3), ('mono16', 4), ('mono16', 3),
                                          ('bgr8', 5), ('rgb8', 1), ('32FC1', 2),
                                          ('bgra8', 7)])
def test_padded_step(rng, encoding, pad):
    h, w = 4, 5
    if encoding == 'bgra8':
        img = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        raw = img
    else:
        img = _random_image(rng, encoding, h, w)
        raw = img[..., ::-1] if encoding == 'rgb8' else img
    row = raw.reshape(h, -1).view(np.uint8)
    padded = np.concatenate([row, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    step = row.shape[1] + pad
    out = decode_image(padded.tobytes(), h, w, encoding, step)
    expected = img[..., :3] if encoding == 'bgra8' else img
    np.testing.assert_array_equal(out, expected)
    owned = decode_image(padded.tobytes(), h, w, encoding, step, copy=True)
    assert owned.flags.c_contiguous
    np.testing.assert_array_equal(owned, expected)


def test_extra_trailing_bytes_are_ignored():
    out = decode_image(bytes(range(10)), 2, 4, 'mono8', 4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [4, 5, 6, 7]])


@pytest.mark.parametrize('kwargs,match', [
    (dict(encoding='yuv422'), "unsupported encoding 'yuv422'"),
    (dict(encoding=None), 'unsupported encoding None'),
    (dict(data=bytes(11)), 'data has 11 bytes, expected height \\* step = 12'),
    (dict(step=3), 'step 3 < width \\* bytes per pixel = 4 \\* 1'),
    (dict(height=0, data=b''), 'zero-sized'),
    (dict(width=0), 'zero-sized'),
    (dict(height=-1), 'zero-sized'),
    (dict(height=1 << 20, step=4), 'larger than'),
    (dict(height=32768, step=40000), 'bytes is more than'),
    (dict(height=2.0), 'height must be an int'),
    (dict(data='abc'), 'got str'),
    (dict(data=object()), 'bytes-like'),
])
def test_decode_errors(kwargs, match):
    fields = dict(data=bytes(12), height=3, width=4, encoding='mono8', step=4)
    fields.update(kwargs)
    with pytest.raises(ImageConversionError, match=match):
        decode_image(**fields)


def test_decode_error_is_a_value_error_and_names_the_message():
    with pytest.raises(ValueError, match="'mono16' image 2x2 \\(step 4\\)"):
        decode_image(bytes(7), 2, 2, 'mono16', 4)


@pytest.mark.parametrize('bad', [np.nan, np.inf, -np.inf])
def test_non_finite_float_is_rejected(bad):
    img = np.ones((2, 3), np.float32)
    img[1, 2] = bad
    with pytest.raises(ImageConversionError, match='1 pixels are NaN or infinite'):
        decode_image(img.tobytes(), 2, 3, '32FC1', 12)


def test_not_an_image_message():
    with pytest.raises(ImageConversionError, match='expected a sensor_msgs/Image, got int'):
        image_msg_to_array(3)


def test_list_data_is_accepted():
    out = decode_image([1, 2, 3, 4], 2, 2, 'mono8', 2)
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


@pytest.mark.parametrize('arr,encoding,match', [
    (np.zeros((2, 2), np.uint16), 'mono8', 'expected a \\(H, W\\) uint8 array, got \\(2, 2\\)'),
    (np.zeros((2, 2), np.uint8), 'bgr8', 'expected a \\(H, W, 3\\) uint8'),
    (np.zeros((2, 2, 4), np.uint8), 'rgb8', 'got \\(2, 2, 4\\)'),
    (np.zeros((2, 2), np.float64), '32FC1', 'float32'),
    (np.zeros((0, 2), np.uint8), 'mono8', 'zero-sized'),
    (np.zeros((2, 2), np.uint8), 'bgra8', "cannot encode 'bgra8'"),
    ([[1]], 'mono8', 'expected a numpy array, got list'),
])
def test_encode_errors(arr, encoding, match):
    with pytest.raises(ImageConversionError, match=match):
        array_to_image_fields(arr, encoding)


def test_encode_accepts_big_endian_and_non_contiguous(rng):
    img = rng.integers(0, 65536, (6, 8), dtype=np.uint16)
    fields = array_to_image_fields(img.astype('>u2')[:, ::2], 'mono16')
    assert fields['is_bigendian'] == 0 and fields['step'] == 8
    np.testing.assert_array_equal(image_msg_to_array(_msg(**fields)), img[:, ::2])


def test_fill_image_msg_on_a_plain_object(rng):
    img = _random_image(rng, 'bgr8')
    msg = fill_image_msg(_msg(), img, 'bgr8')
    assert msg.encoding == 'bgr8' and msg.step == 21 and isinstance(msg.data, bytes)
    np.testing.assert_array_equal(image_msg_to_array(msg), img)


@pytest.mark.ros
def test_rclpy_sensor_msgs_image(rng):
    """A real ``sensor_msgs.msg.Image`` from the ROS 2 wheels: data is an array.array('B')."""
    sensor_msgs = pytest.importorskip('sensor_msgs.msg')
    img = _random_image(rng, 'mono16', 32, 40)
    msg = fill_image_msg(sensor_msgs.Image(), img, 'mono16')
    assert isinstance(msg.data, array.array)
    out = image_msg_to_array(msg)
    np.testing.assert_array_equal(out, img)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))  # zero-copy decode
    msg.encoding = 'rgb8'
    fill_image_msg(msg, _random_image(rng, 'bgr8', 3, 4), 'rgb8')
    assert msg.encoding == 'rgb8' and msg.step == 12 and len(msg.data) == 36


def test_rosbags_typestore_image_round_trip(rng):
    """A ``rosbags`` message class survives CDR serialization with filled fields."""
    from rosbags.typesys import get_typestore, Stores
    ts = get_typestore(Stores.ROS2_KILTED)
    img_t = ts.types['sensor_msgs/msg/Image']
    header = ts.types['std_msgs/msg/Header'](
        stamp=ts.types['builtin_interfaces/msg/Time'](sec=1, nanosec=2), frame_id='thermal')
    img = _random_image(rng, 'mono16', 16, 20)
    msg = img_t(header=header, height=0, width=0, encoding='', is_bigendian=0, step=0,
                data=np.zeros(0, np.uint8))
    fill_image_msg(msg, img, 'mono16')
    back = ts.deserialize_cdr(ts.serialize_cdr(msg, img_t.__msgtype__), img_t.__msgtype__)
    np.testing.assert_array_equal(image_msg_to_array(back), img)
    fields = array_to_image_fields(_random_image(rng, 'bgr8', 4, 4), 'bgr8')
    msg2 = img_t(header=header, **{**fields, 'data': np.frombuffer(fields['data'], np.uint8)})
    back2 = ts.deserialize_cdr(ts.serialize_cdr(msg2, img_t.__msgtype__), img_t.__msgtype__)
    assert image_msg_to_array(back2).shape == (4, 4, 3)


def _smooth_bgr(h=48, w=64):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4 % 256, y * 5 % 256, (x + y) * 2 % 256], -1).astype(np.uint8)


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_round_trip_bgr_and_gray(fmt):
    img = _smooth_bgr()
    fmt_str, data = encode_compressed(img, fmt)
    assert fmt_str == f'bgr8; {fmt} compressed bgr8' and isinstance(data, bytes)
    out = decode_compressed(SimpleNamespace(format=fmt_str, data=data))
    assert out.shape == img.shape and out.dtype == np.uint8
    tol = 0 if fmt == 'png' else 12
    assert np.abs(out.astype(int) - img).mean() <= tol
    gray = img[..., 1]
    fmt_str, data = encode_compressed(gray, fmt)
    assert fmt_str.startswith('mono8;')
    assert decode_compressed(SimpleNamespace(format=fmt, data=data)).shape == gray.shape


def test_compressed_png_16bit(rng):
    img = rng.integers(0, 65536, (8, 9), dtype=np.uint16)
    fmt_str, data = encode_compressed(img, 'png')
    assert fmt_str == 'mono16; png compressed mono16'
    out = decode_compressed(SimpleNamespace(format=fmt_str, data=np.frombuffer(data, np.uint8)))
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize('fmt,flipped', [
    ('jpeg', False), ('png', False), ('bgr8; jpeg compressed bgr8', False),
    ('rgb8; jpeg compressed bgr8', False), ('rgb8; png compressed', False),
    ('rgb8; png compressed rgb8', True), ('rgb8', True),
])
def test_compressed_channel_order(fmt, flipped):
    img = _smooth_bgr()
    _, data = encode_compressed(img, 'png')  # the payload holds BGR as OpenCV writes it
    out = decode_compressed(SimpleNamespace(format=fmt, data=data))
    np.testing.assert_array_equal(out, img[..., ::-1] if flipped else img)


def test_compressed_alpha_is_dropped():
    bgra = np.dstack([_smooth_bgr(), np.full((48, 64), 200, np.uint8)])
    ok, data = cv2.imencode('.png', bgra)
    out = decode_compressed(SimpleNamespace(format='bgra8; png compressed bgra8', data=data))
    np.testing.assert_array_equal(out, bgra[..., :3])


@pytest.mark.parametrize('msg,match', [
    (SimpleNamespace(format='jpeg', data=b''), 'has no data'),
    (SimpleNamespace(format='jpeg', data=b'not an image at all'), 'cannot decode'),
    (SimpleNamespace(format='16UC1; compressedDepth png', data=b'x'), 'compressedDepth'),
    (SimpleNamespace(data=b'x'), 'expected a sensor_msgs/CompressedImage'),
])
def test_decode_compressed_errors(msg, match):
    with pytest.raises(ImageConversionError, match=match):
        decode_compressed(msg)


@pytest.mark.parametrize('arr,kwargs,match', [
    (np.zeros((4, 4), np.uint16), dict(fmt='jpeg'), 'jpeg: expected \\(H, W\\) uint8'),
    (np.zeros((4, 4), np.uint8), dict(fmt='webp'), "fmt must be 'jpeg' or 'png', got 'webp'"),
    (np.zeros((4, 4), np.uint8), dict(jpeg_quality=0), 'jpeg_quality'),
    (np.zeros((4, 4), np.uint8), dict(fmt='png', png_level=10), 'png_level'),
    (np.zeros((0, 4), np.uint8), dict(), 'zero-sized'),
    (np.zeros((4, 4, 2), np.uint8), dict(), 'got \\(4, 4, 2\\)'),
])
def test_encode_compressed_errors(arr, kwargs, match):
    with pytest.raises(ImageConversionError, match=match):
        encode_compressed(arr, **kwargs)


def test_decode_frame_raw_and_compressed_with_the_pipeline_rules():
    """decode_frame: raw or compressed by the message's fields; RGB must be 8-bit; thermal may
    be 16-bit; empty images are refused (node and bag tool share these rules)."""
    rng = np.random.default_rng(3)
    bgr = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    raw = _msg(**array_to_image_fields(bgr, 'bgr8'))
    np.testing.assert_array_equal(decode_frame(raw, color=True), bgr)
    fmt, data = encode_compressed(bgr, 'png')
    np.testing.assert_array_equal(decode_frame(SimpleNamespace(format=fmt, data=data),
                                               color=True), bgr)
    th16 = rng.integers(0, 2 ** 14, (4, 7), dtype=np.uint16)
    mono16 = _msg(**array_to_image_fields(th16, 'mono16'))
    np.testing.assert_array_equal(decode_frame(mono16, color=False), th16)
    with pytest.raises(ImageConversionError, match='RGB image must be 8-bit.*uint16'):
        decode_frame(mono16, color=True)
