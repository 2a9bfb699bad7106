"""Reading images and masks through OpenCV, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    if not folder.is_dir():
        raise DataError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image(p))


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    # INTER_AREA when shrinking avoids aliasing; it is what the model saw in training.
    interp = cv2.INTER_AREA if min(h, w) >= size else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """BGR uint8 [H, W, 3]; grey images are expanded to three channels; resized to `size` if given."""
    # Checked first: OpenCV prints its own warning to stderr for a missing file, a second line beside ours.
    if not path.is_file():
        raise DataError(f"{path}: no such image file")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: not a readable image (use one of {', '.join(IMAGE_EXTENSIONS)})")
    return resize_square(image, size) if size else image


def read_mask(path: Path | None, size: int) -> np.ndarray:
    """Boolean [size, size]; any non-zero pixel is anomalous. No path means an all-normal mask."""
    if path is None:
        return np.zeros((size, size), dtype=bool)
    if not path.is_file():
        raise DataError(f"{path}: no such mask file")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"{path}: not a readable mask image")
    return cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST) > 0
