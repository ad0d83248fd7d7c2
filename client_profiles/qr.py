"""QR codes (PNG and SVG) for short texts such as a one-time profile import link."""

from __future__ import annotations

import io

import qrcode
import qrcode.constants
from qrcode.image.pil import PilImage
from qrcode.image.svg import SvgPathFillImage

# Medium error correction survives a phone camera at an angle while staying small.
_ERROR_CORRECTION = qrcode.constants.ERROR_CORRECT_M
_BOX_SIZE = 8
_BORDER = 4  # the quiet zone the QR specification asks for


def _code(text: str) -> qrcode.QRCode[PilImage]:
    if not text:
        raise ValueError("a QR code needs some text")
    code: qrcode.QRCode[PilImage] = qrcode.QRCode(
        error_correction=_ERROR_CORRECTION, box_size=_BOX_SIZE, border=_BORDER
    )
    code.add_data(text)
    code.make(fit=True)
    return code


def qr_png(text: str) -> bytes:
    """The text as a black-on-white PNG image."""
    buffer = io.BytesIO()
    _code(text).make_image(image_factory=PilImage).save(buffer)
    return buffer.getvalue()


def qr_svg(text: str) -> str:
    """The text as a standalone SVG document (white background, one path: scales without blur)."""
    image = _code(text).make_image(image_factory=SvgPathFillImage)
    svg = image.to_string(encoding="unicode")
    return svg if isinstance(svg, str) else svg.decode("utf-8")
