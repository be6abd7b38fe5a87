"""Still images: reading (any format OpenCV decodes) and MuseV's centre-crop-and-resize to a target size."""

from __future__ import annotations

import os

import numpy as np

from avtool.errors import BadInput
from avtool.media.files import check_input_file

MAX_PIXELS = 100_000_000  # refuse decompression bombs before decoding them into memory


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as RGB uint8 (H, W, 3); an unreadable or non-image file is BadInput (exit 2)."""
    import cv2

    path = check_input_file(path)
    data = np.fromfile(path, dtype=np.uint8)  # imread cannot open every path (non-ASCII names on some builds)
    header = cv2.imdecode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if header is None:
        raise BadInput(f"{path}: not an image OpenCV can read", hint="give a PNG, JPEG, WebP, BMP or TIFF file")
    if header.size * 64 > MAX_PIXELS:
        raise BadInput(f"{path}: the image is too large ({header.shape[1] * 8}x{header.shape[0] * 8} or more)")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return np.ascontiguousarray(image[:, :, ::-1])


def crop_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The largest centred crop of `image` with the aspect of height x width, resized to it (area filter when
    shrinking, cubic when enlarging), as MuseV's `dynamic_crop_resize_image` prepares condition images."""
    import cv2

    h, w = image.shape[:2]
    scale = min(h / height, w / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    crop = image[top:top + crop_h, left:left + crop_w]
    interpolation = cv2.INTER_AREA if crop_h > height else cv2.INTER_CUBIC
    return cv2.resize(crop, (width, height), interpolation=interpolation)
