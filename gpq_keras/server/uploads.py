"""Uploads: a request body read up to a bound in bytes, its image (the body itself, or a multipart
field `image`), and the image decoded as `gpq search` decodes files.

The bytes go through the steps of `gpq_keras.data.images` (`check_image_bytes`: its header read
by Pillow, nothing decoded, and refused over `max_pixels`; then `decode_one`, TensorFlow's decoder
and bilinear resize to the model's input), so an upload gives the pixels `gpq search` reads from the
same file.
"""

import numpy as np

from gpq_keras.data.images import ImageTooLarge, check_image_bytes, decode_one
from gpq_keras.files import UnreadableFile

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
    try:
        check_image_bytes(name, data, max_pixels)
        image = decode_one(name, data, image_shape[:2])
    except ImageTooLarge as exc:
        raise UploadError(413, str(exc)) from None
    except UnreadableFile as exc:
        raise UploadError(400, str(exc)) from None
    return np.asarray(image, np.uint8)[None]
