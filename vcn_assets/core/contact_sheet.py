"""Contact sheets: one row of face thumbnails per cluster, for the UI and exports.

Usage::

    jpeg = contact_sheet([[rep_jpeg, crop_jpeg, ...], ...], thumb=56)   # rows in the order given
    markdown = f"![clusters](data:image/jpeg;base64,{base64.b64encode(jpeg).decode()})"
"""

from __future__ import annotations

import cv2
import numpy as np


def contact_sheet(rows: list[list[bytes]], thumb: int = 56, per_row: int = 6, quality: int = 80) -> bytes:
    """A JPEG mosaic: row i shows up to ``per_row`` of ``rows[i]``'s JPEG crops at ``thumb`` px."""
    if not rows:
        raise ValueError("contact_sheet needs at least one row")
    sheet = np.full((thumb * len(rows), thumb * per_row, 3), 32, np.uint8)
    for r, crops in enumerate(rows):
        for c, data in enumerate(crops[:per_row]):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise ValueError(f"contact_sheet: crop {c} of row {r} is not a decodable JPEG")
            sheet[r * thumb:(r + 1) * thumb, c * thumb:(c + 1) * thumb] = cv2.resize(img, (thumb, thumb), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", sheet, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError("contact_sheet: JPEG encoding failed")
    return buf.tobytes()
