"""``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` <-> numpy, without cv_bridge.

The functions work on duck-typed messages: anything with the fields of ``sensor_msgs/Image``
(``height``, ``width``, ``encoding``, ``is_bigendian``, ``step``, ``data``), so rclpy's message
classes and the ``rosbags`` type-store classes both work, and nothing here imports rclpy.

Decoding follows the core's conventions (``docs/ARCHITECTURE.md``): gray images come out as
``(H, W)`` (``uint8``, ``uint16`` or ``float32``), colour images as ``(H, W, 3)`` ``uint8`` in
**BGR** order (``rgb8`` is flipped, alpha is dropped). It is zero-copy where the layout allows
(``mono8``/``mono16``/``bgr8``/``32FC1`` in native byte order): the result is then a *view* of
the message buffer, read-only when ``msg.data`` is ``bytes``; pass ``copy=True`` for an array
you own. ``msg.data`` may be ``bytes``, ``bytearray``, ``array.array('B')`` (rclpy), a
``memoryview`` or a ``uint8`` numpy array (rosbags).

Encoding returns ``data`` as ``bytes`` from ``ndarray.tobytes()``. The node must assign those
bytes (or an ``array.array``) to ``msg.data``: rclpy converts a numpy array element by element
(140-180 ms for a 1280x1024 mono16 frame, against ~1 ms for ``tobytes()`` plus assigning the
bytes). :func:`fill_image_msg`
does the right thing for rclpy and for rosbags (whose serializer needs a numpy array).

Every problem a message can cause raises :class:`ImageConversionError` (a ``ValueError``) whose
text names the encoding and the sizes received.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import cv2
import numpy as np


class ImageConversionError(ValueError):
    """A message cannot be converted to an image (or an image to a message)."""


class _Layout(NamedTuple):
    dtype: str  # little-endian numpy dtype of one channel
    channels: int


#: Encodings :func:`image_msg_to_array` reads, with their pixel layout.
DECODE_ENCODINGS: dict[str, _Layout] = {
    'mono8': _Layout('u1', 1),
    '8UC1': _Layout('u1', 1),
    'mono16': _Layout('<u2', 1),
    '16UC1': _Layout('<u2', 1),
    '32FC1': _Layout('<f4', 1),
    'bgr8': _Layout('u1', 3),
    'rgb8': _Layout('u1', 3),
    'bgra8': _Layout('u1', 4),
    'rgba8': _Layout('u1', 4),
}
#: Encodings :func:`array_to_image_fields` writes, with the array dtype they need.
ENCODE_ENCODINGS: dict[str, _Layout] = {
    'mono8': _Layout('u1', 1),
    '8UC1': _Layout('u1', 1),
    'mono16': _Layout('<u2', 1),
    '16UC1': _Layout('<u2', 1),
    '32FC1': _Layout('<f4', 1),
    'bgr8': _Layout('u1', 3),
    'rgb8': _Layout('u1', 3),
}
#: Largest accepted side of an image, in pixels (a guard against corrupt headers).
MAX_SIDE = 1 << 15
#: Largest accepted image payload, in bytes (1 GiB).
MAX_BYTES = 1 << 30

_TO_BGR = {'rgb8': cv2.COLOR_RGB2BGR, 'bgra8': cv2.COLOR_BGRA2BGR, 'rgba8': cv2.COLOR_RGBA2BGR}
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _as_byte_array(data: Any, what: str) -> np.ndarray:
    """Return ``data`` as a 1-D ``uint8`` array, without a copy when it has a buffer."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            if not data.flags.c_contiguous:
                raise ImageConversionError(
                    f'{what}: data must be uint8 or C-contiguous, got a non-contiguous '
                    f'{data.dtype} array')
            data = data.view(np.uint8)
        return data.reshape(-1)
    if isinstance(data, str):
        raise ImageConversionError(f'{what}: data must be bytes-like, got str')
    try:
        view = memoryview(data)  # bytes, bytearray, array.array('B'), memoryview: no copy
    except TypeError:
        view = None
    if view is not None:
        if not view.contiguous:
            raise ImageConversionError(f'{what}: data buffer is not contiguous')
        return np.frombuffer(view.cast('B') if view.format != 'B' else view, np.uint8)
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)  # a list of ints: copies
    except (TypeError, ValueError, OverflowError) as err:
        raise ImageConversionError(
            f'{what}: data must be bytes-like, got {type(data).__name__} ({err})') from None


def _check_int(name: str, value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ImageConversionError(f'{what}: {name} must be an int, got {value!r}')
    return int(value)


def decode_image(data: Any, height: int, width: int, encoding: str, step: int,
                 is_bigendian: bool = False, copy: bool = False) -> np.ndarray:
    """Decode the fields of a ``sensor_msgs/Image`` into an array.

    :param data: the pixel buffer (bytes, array.array, memoryview or uint8 array).
    :param height: rows.
    :param width: columns.
    :param encoding: one of :data:`DECODE_ENCODINGS`.
    :param step: bytes per row, ``>= width * bytes_per_pixel`` (rows may be padded).
    :param is_bigendian: byte order of multi-byte pixels.
    :param copy: return a C-contiguous array the caller owns instead of a view where possible.
    :return: ``(H, W)`` ``uint8``/``uint16``/``float32`` or ``(H, W, 3)`` ``uint8`` BGR.
    """
    what = f'{encoding!r} image {height}x{width} (step {step})'
    if not isinstance(encoding, str) or encoding not in DECODE_ENCODINGS:
        raise ImageConversionError(
            f'unsupported encoding {encoding!r}; supported: {", ".join(DECODE_ENCODINGS)}')
    height = _check_int('height', height, what)
    width = _check_int('width', width, what)
    step = _check_int('step', step, what)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f'{what}: zero-sized image')
    if height > MAX_SIDE or width > MAX_SIDE:
        raise ImageConversionError(f'{what}: a side is larger than {MAX_SIDE} pixels')
    layout = DECODE_ENCODINGS[encoding]
    dtype = np.dtype(layout.dtype)
    if is_bigendian and dtype.itemsize > 1:
        dtype = dtype.newbyteorder('>')
    pixel_bytes = dtype.itemsize * layout.channels
    row_bytes = width * pixel_bytes
    if step < row_bytes:
        raise ImageConversionError(
            f'{what}: step {step} < width * bytes per pixel = {width} * {pixel_bytes}')
    if height * step > MAX_BYTES:
        raise ImageConversionError(f'{what}: {height * step} bytes is more than {MAX_BYTES}')
    buf = _as_byte_array(data, what)
    if buf.size < height * step:
        raise ImageConversionError(
            f'{what}: data has {buf.size} bytes, expected height * step = {height * step}')
    shape: tuple[int, ...] = (height, width, layout.channels)
    strides: tuple[int, ...] = (step, pixel_bytes, dtype.itemsize)
    if layout.channels == 1:
        shape, strides = shape[:2], strides[:2]
    arr = np.ndarray(shape, dtype=dtype, buffer=buf, strides=strides)  # a view, no copy
    if not dtype.isnative or (dtype.itemsize > 1 and step % dtype.itemsize):
        arr = arr.astype(dtype.newbyteorder('='))  # byte swap / realign: one copy
    elif copy and encoding not in _TO_BGR:
        arr = np.ascontiguousarray(arr) if not arr.flags.c_contiguous else arr.copy()
    if encoding in _TO_BGR:
        arr = cv2.cvtColor(arr, _TO_BGR[encoding])  # a new contiguous BGR array
    if dtype.kind == 'f':
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - np.count_nonzero(finite))
            raise ImageConversionError(f'{what}: {bad} pixels are NaN or infinite')
    return arr


def image_msg_to_array(msg: Any, copy: bool = False) -> np.ndarray:
    """Decode a ``sensor_msgs/Image`` (rclpy, rosbags or any object with its fields).

    :param msg: the message.
    :param copy: return an array the caller owns instead of a view of ``msg.data``.
    :return: ``(H, W)`` ``uint8``/``uint16``/``float32`` or ``(H, W, 3)`` ``uint8`` BGR.
    """
    try:
        fields = (msg.data, msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian)
    except AttributeError as err:
        raise ImageConversionError(
            f'expected a sensor_msgs/Image, got {type(msg).__name__} ({err})') from None
    data, height, width, encoding, step, is_bigendian = fields
    return decode_image(data, height, width, encoding, step, bool(is_bigendian), copy=copy)


def array_to_image_fields(arr: np.ndarray, encoding: str) -> dict[str, Any]:
    """Encode an array as the fields of a ``sensor_msgs/Image`` (header excluded).

    :param arr: ``(H, W)`` (or ``(H, W, 1)``) ``uint8`` for ``mono8``/``8UC1``, ``uint16`` for
        ``mono16``/``16UC1``, ``float32`` for ``32FC1``; ``(H, W, 3)`` ``uint8`` **BGR** for
        ``bgr8`` and ``rgb8`` (channels are flipped for ``rgb8``).
    :param encoding: one of :data:`ENCODE_ENCODINGS`.
    :return: ``dict(height=, width=, encoding=, is_bigendian=0, step=, data=bytes)``.
    """
    if not isinstance(encoding, str) or encoding not in ENCODE_ENCODINGS:
        raise ImageConversionError(
            f'cannot encode {encoding!r}; supported: {", ".join(ENCODE_ENCODINGS)}')
    if not isinstance(arr, np.ndarray):
        raise ImageConversionError(f'{encoding}: expected a numpy array, got {type(arr).__name__}')
    layout = ENCODE_ENCODINGS[encoding]
    if arr.ndim == 3 and arr.shape[2] == 1 and layout.channels == 1:
        arr = arr[:, :, 0]
    expected_ndim = 2 if layout.channels == 1 else 3
    dtype = np.dtype(layout.dtype)
    if (arr.ndim != expected_ndim or (expected_ndim == 3 and arr.shape[2] != layout.channels)
            or arr.dtype.kind != dtype.kind or arr.dtype.itemsize != dtype.itemsize):
        want = '(H, W)' if layout.channels == 1 else f'(H, W, {layout.channels})'
        raise ImageConversionError(
            f'{encoding}: expected a {want} {dtype.name} array, got {tuple(arr.shape)} '
            f'{arr.dtype}')
    height, width = arr.shape[:2]
    if height == 0 or width == 0:
        raise ImageConversionError(f'{encoding}: zero-sized image {tuple(arr.shape)}')
    if encoding == 'rgb8':
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_BGR2RGB)
    arr = arr.astype(dtype, copy=False)  # little-endian data, is_bigendian = 0
    return {
        'height': int(height),
        'width': int(width),
        'encoding': encoding,
        'is_bigendian': 0,
        'step': int(width * dtype.itemsize * layout.channels),
        'data': arr.tobytes(),
    }


def fill_image_msg(msg: Any, arr: np.ndarray, encoding: str) -> Any:
    """Set the image fields of ``msg`` (rclpy or rosbags ``sensor_msgs/Image``) from ``arr``.

    The header is left alone. rclpy gets ``bytes`` (fast path of its setter); a message whose
    ``data`` is a numpy array (rosbags) gets a read-only ``uint8`` view of those bytes.

    :param msg: the message to fill.
    :param arr: the image; see :func:`array_to_image_fields`.
    :param encoding: one of :data:`ENCODE_ENCODINGS`.
    :return: ``msg``.
    """
    fields = array_to_image_fields(arr, encoding)
    if isinstance(getattr(msg, 'data', None), np.ndarray):
        fields['data'] = np.frombuffer(fields['data'], dtype=np.uint8)
    for name, value in fields.items():
        setattr(msg, name, value)
    return msg


def _compressed_payload_is_rgb(fmt: str) -> bool:
    """Whether a CompressedImage format says the payload holds RGB-ordered channels.

    ``compressed_image_transport`` writes ``'<original encoding>; <codec> compressed <payload
    encoding>'``: the payload encoding (after ``compressed``) is what ``imdecode`` sees, so
    ``'rgb8; jpeg compressed bgr8'`` decodes to correct BGR and only ``'... compressed rgb8'``
    (or a bare ``'rgb8'``-only hint without a payload part, as some drivers write) is flipped.
    """
    parts = [p.strip() for p in fmt.split(';')]
    if len(parts) >= 2:
        match = re.search(r'compressed\s+(\S+)', parts[1])
        if match is not None:
            return match.group(1).startswith('rgb')
        return False  # 'rgb8; png compressed': payload written by the standard codec path
    return parts[0].startswith('rgb')  # e.g. 'rgb8' alone


def decode_compressed(msg: Any) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG or PNG) with ``cv2.imdecode``.

    Format strings: ``'jpeg'``, ``'png'``, ``'bgr8; jpeg compressed bgr8'``,
    ``'rgb8; png compressed'`` ... (``compressed_image_transport`` style); a payload declared
    RGB-ordered is flipped to BGR. ``compressedDepth`` is not supported.

    :param msg: the message (``format`` and ``data``).
    :return: ``(H, W)`` ``uint8``/``uint16`` or ``(H, W, 3)`` ``uint8`` BGR (alpha dropped).
    """
    fmt = getattr(msg, 'format', None)
    if not isinstance(fmt, str) or not hasattr(msg, 'data'):
        raise ImageConversionError(
            f'expected a sensor_msgs/CompressedImage, got {type(msg).__name__}')
    lowered = fmt.lower()
    if 'compresseddepth' in lowered.replace(' ', ''):
        raise ImageConversionError(f'compressedDepth images are not supported (format {fmt!r})')
    buf = _as_byte_array(msg.data, f'compressed image ({fmt!r})')
    if buf.size == 0:
        raise ImageConversionError(f'compressed image ({fmt!r}) has no data')
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageConversionError(
            f'cannot decode compressed image: format {fmt!r}, {buf.size} bytes '
            f'(starts with {bytes(buf[:8])!r})')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3:
        if img.dtype != np.uint8:
            raise ImageConversionError(
                f'compressed image ({fmt!r}): {img.dtype} colour is not supported')
        rgb = _compressed_payload_is_rgb(lowered)
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_RGBA2BGR if rgb else cv2.COLOR_BGRA2BGR)
        elif rgb:
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    return img


def decode_frame(msg: Any, color: bool) -> np.ndarray:
    """Decode a camera frame as the fusion pipeline takes it (node and bag tool alike).

    A ``sensor_msgs/CompressedImage`` (it has ``format`` and no ``encoding``) is decoded with
    :func:`decode_compressed`, a ``sensor_msgs/Image`` with :func:`image_msg_to_array` (which
    already rejects non-finite float images).

    :param msg: the message (rclpy or rosbags class).
    :param color: ``True`` for the RGB camera, whose pixels must be 8-bit; ``False`` for thermal
        (8-bit, 16-bit or float).
    :return: the image array.
    :raises ImageConversionError: undecodable, empty, or a non-8-bit RGB image.
    """
    compressed = hasattr(msg, 'format') and not hasattr(msg, 'encoding')
    image = decode_compressed(msg) if compressed else image_msg_to_array(msg)
    if image.size == 0:
        raise ImageConversionError(f'image is empty {image.shape}')
    if color and image.dtype != np.uint8:
        raise ImageConversionError(
            f'RGB image must be 8-bit per channel; got {image.dtype} (encoding '
            f'{getattr(msg, "encoding", getattr(msg, "format", "?"))!r})')
    return image


def encode_compressed(arr: np.ndarray, fmt: str = 'jpeg', jpeg_quality: int = 90,
                      png_level: int = 3) -> tuple[str, bytes]:
    """Encode an image for a ``sensor_msgs/CompressedImage``.

    :param arr: ``(H, W)`` ``uint8`` (or ``uint16``, PNG only) or ``(H, W, 3)`` ``uint8`` BGR.
    :param fmt: ``'jpeg'`` (or ``'jpg'``) or ``'png'``.
    :param jpeg_quality: JPEG quality, 1..100.
    :param png_level: PNG compression level, 0..9.
    :return: ``(format_string, data)``, e.g. ``('bgr8; jpeg compressed bgr8', b'...')``.
    """
    codec = {'jpeg': 'jpeg', 'jpg': 'jpeg', 'png': 'png'}.get(str(fmt).lower())
    if codec is None:
        raise ImageConversionError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    if not isinstance(arr, np.ndarray):
        raise ImageConversionError(f'expected a numpy array, got {type(arr).__name__}')
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2 and arr.dtype == np.uint8:
        encoding = 'mono8'
    elif arr.ndim == 2 and arr.dtype == np.uint16 and codec == 'png':
        encoding = 'mono16'
    elif arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        encoding = 'bgr8'
    else:
        raise ImageConversionError(
            f'{codec}: expected (H, W) uint8{" or uint16" if codec == "png" else ""} or '
            f'(H, W, 3) uint8, got {tuple(arr.shape)} {arr.dtype}')
    if arr.size == 0:
        raise ImageConversionError(f'{codec}: zero-sized image {tuple(arr.shape)}')
    if codec == 'jpeg':
        if not 1 <= int(jpeg_quality) <= 100:
            raise ImageConversionError(f'jpeg_quality must be in 1..100, got {jpeg_quality}')
        params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)]
    else:
        if not 0 <= int(png_level) <= 9:
            raise ImageConversionError(f'png_level must be in 0..9, got {png_level}')
        params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)]
    ok, encoded = cv2.imencode('.jpg' if codec == 'jpeg' else '.png', arr, params)
    if not ok:
        raise ImageConversionError(f'cv2.imencode failed for {tuple(arr.shape)} {arr.dtype}')
    return f'{encoding}; {codec} compressed {encoding}', encoded.tobytes()
