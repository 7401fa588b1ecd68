"""Uploads: a request body read up to a bound in bytes, its image (the body itself, or a multipart
field `image`), and the image decoded as `gpq search` decodes files.

The bytes go through the steps of `gpq_keras.data.images` (its header read by Pillow, nothing
decoded, and refused over `max_pixels`; then `decode_image_bytes`, TensorFlow's decoder and
bilinear resize to the model's input), so an upload gives the pixels `gpq search` reads from the
same file.
"""

import io
import re

import numpy as np

from gpq_keras.data.images import decode_image_bytes, image_header, max_file_bytes
from gpq_keras.files import UnreadableFile, display_path

FIELD = "image"  # the multipart field of the image


class UploadError(Exception):
    """A request the server refuses: `status` (4xx) and a one-line message."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


async def read_body(request, max_bytes):
    """The request's body -> bytes; UploadError 413 as soon as it passes `max_bytes` (a
    Content-Length that says so is refused before anything is read)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(
            413, f"the upload is {int(declared)} bytes, over --max-upload-bytes {max_bytes}"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, f"the upload is over --max-upload-bytes {max_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


async def uploaded_image(request, max_bytes):
    """(name, bytes) of the image of a POST: a multipart field `image` (its file name, else
    "upload"), or the whole body (the `name` query parameter, else "upload")."""
    from starlette.requests import Request

    body = await read_body(request, max_bytes)
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "multipart/form-data":
        if not body:
            raise UploadError(
                400, f"no image: send it as the request body or a multipart field '{FIELD}'"
            )
        return request.query_params.get("name") or "upload", body

    sent = False

    async def replay():  # the body, already read and bounded, to the multipart parser
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except Exception as exc:  # MultiPartException, or a malformed part
        raise UploadError(400, f"not a readable multipart upload ({exc})") from None
    try:
        field = form.get(FIELD)
        if field is None or isinstance(field, str):
            raise UploadError(400, f"the multipart upload has no file field '{FIELD}'")
        data = await field.read()
        return field.filename or "upload", data
    finally:
        await form.close()


def decode_upload(data, image_shape, max_pixels, name="upload"):
    """The bytes of an image file -> uint8 (1, H, W, 3) at `image_shape` (the model's input), read
    as `gpq_keras.data.images` reads a file: UploadError 413 over `max_pixels` (or larger than any
    image of that many pixels could be), 400 for bytes that are not a decodable image."""
    import tensorflow as tf

    shown = display_path(name)
    limit = max_file_bytes(max_pixels)
    if limit is not None and len(data) > limit:
        raise UploadError(
            413,
            f"{shown}: {len(data)} bytes, larger than any image of --max-pixels "
            f"{max_pixels} could be",
        )
    try:
        width, height = image_header(name, io.BytesIO(data))
    except UnreadableFile as exc:
        raise UploadError(400, str(exc)) from None
    if max_pixels is not None and width * height > max_pixels:
        raise UploadError(
            413, f"{shown}: {width} x {height} pixels exceed --max-pixels {max_pixels}"
        )
    try:
        image = decode_image_bytes(tf.constant(data, tf.string), image_shape[:2]).numpy()
    except tf.errors.OpError as exc:
        reason = " ".join(exc.message.split())
        reason = re.sub(r"^.*\}\}\s*|\s*\[Op:[^\]]*\].*$", "", reason)  # TF's node names
        reason = reason or type(exc).__name__
        raise UploadError(400, f"{shown}: not a decodable image ({reason})") from None
    return np.asarray(image, np.uint8)[None]
