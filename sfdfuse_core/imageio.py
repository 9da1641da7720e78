"""Reading image pairs from folders the way published fusion protocols do.

A *pair* is an infrared and a visible image that share a file name in two folders
(``ir/NAME`` goes with ``vi/NAME``). Images are read with OpenCV, so colour arrays are BGR.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple, Union

import cv2
import numpy as np

#: File suffixes read as images (lower case).
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')

PathLike = Union[str, Path]


class ImageReadError(ValueError):
    """An image file is missing, unreadable or of an unsupported kind."""


@dataclass(frozen=True)
class PairListing:
    """The pairs found in two folders, and the names that have no partner.

    :param pairs: ``(name, ir_path, vi_path)`` for every name present in both folders, sorted.
    :param ir_only: names found only in the infrared folder.
    :param vi_only: names found only in the visible folder.
    """

    pairs: List[Tuple[str, Path, Path]]
    ir_only: List[str]
    vi_only: List[str]


def _images_in(folder: Path) -> dict:
    if not folder.is_dir():
        raise ImageReadError(f'not a folder: {folder}')
    return {p.name: p for p in folder.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


def list_pairs(ir_dir: PathLike, vi_dir: PathLike) -> PairListing:
    """List the image pairs of an infrared and a visible folder, matched by file name.

    :param ir_dir: folder of infrared images.
    :param vi_dir: folder of visible images.
    :return: the pairs and the unmatched names of each side.
    :raises ImageReadError: when a folder does not exist.
    """
    ir = _images_in(Path(ir_dir))
    vi = _images_in(Path(vi_dir))
    common = sorted(set(ir) & set(vi))
    return PairListing(pairs=[(n, ir[n], vi[n]) for n in common],
                       ir_only=sorted(set(ir) - set(vi)),
                       vi_only=sorted(set(vi) - set(ir)))


def read_image(path: PathLike) -> np.ndarray:
    """Read an image as stored: gray ``(H, W)`` or BGR ``(H, W, 3)``, uint8 or uint16.

    An alpha channel is dropped; an image whose three channels are equal stays three-channel
    (callers decide what a gray-looking colour image means).

    :param path: image file.
    :return: the pixel array.
    :raises ImageReadError: when the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f'image file not found: {path}')
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f'cannot decode image: {path}')
    if img.ndim == 3 and img.shape[2] == 4:
        img = img[:, :, :3]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f'unsupported pixel type {img.dtype} in {path}')
    return np.ascontiguousarray(img)


def to_gray(img: np.ndarray) -> np.ndarray:
    """Convert a BGR image to gray with OpenCV's weights, as the published evaluator does.

    :param img: ``(H, W)`` or ``(H, W, 3)`` BGR array.
    :return: ``(H, W)`` array of the same dtype (gray input is returned unchanged).
    """
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    raise ImageReadError(f'expected (H, W) or (H, W, 3), got {img.shape}')


def read_gray(path: PathLike) -> np.ndarray:
    """Read an image as 8-bit gray (colour converted with OpenCV's BGR->GRAY, rounded).

    :param path: image file.
    :return: ``(H, W)`` uint8 array.
    """
    img = read_image(path)
    if img.dtype != np.uint8:
        raise ImageReadError(f'expected an 8-bit image, got {img.dtype}: {path}')
    return to_gray(img)


def is_gray_color(img: np.ndarray) -> bool:
    """Whether a 3-channel image carries no colour (all channels equal, as TNO's files)."""
    return img.ndim == 3 and bool(np.array_equal(img[:, :, 0], img[:, :, 1])
                                  and np.array_equal(img[:, :, 1], img[:, :, 2]))
