"""Clipper's image_query example: PNG images sent as `bytes`, the model answers their size.

With Pillow installed the model decodes each PNG and answers its (width, height), as
Clipper's example did; without it, it answers the number of bytes it received. The
images are made here with the standard library (zlib, struct), so no file is needed.

Run: python examples/image_query.py
"""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import clipperlite

try:
    from PIL import Image
except ImportError:  # the fallback: sizes in bytes
    Image = None


def png(width: int, height: int, shade: int) -> bytes:
    """A grey `width` x `height` PNG, encoded with the standard library."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes([shade]) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def image_size(imgs: list[bytes]) -> list[str]:
    """Each image's size: (width, height) decoded by Pillow, else its length in bytes."""
    if Image is None:
        return [f"{len(img)} bytes" for img in imgs]
    sizes = []
    for img in imgs:
        with Image.open(io.BytesIO(img)) as decoded:
            sizes.append(str(decoded.size))
    return sizes


async def main() -> None:
    async with clipperlite.Clipper() as clipper:
        clipper.register_application("image-example", "bytes", "default", 1_000_000)
        await clipper.deploy_model("image-model", 1, "bytes", image_size)
        clipper.link_model_to_app("image-example", "image-model")
        print("decoder:", "Pillow" if Image is not None else "none (sizes in bytes)")
        for width, height in [(32, 16), (64, 64), (8, 120)]:
            p = await clipper.predict("image-example", png(width, height, shade=128))
            print(f"{width}x{height} PNG -> {p.output} (default={p.default})")


if __name__ == "__main__":
    asyncio.run(main())
