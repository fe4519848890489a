"""Reading an uploaded file out of an HTTP request, for every API that takes one (a multipart form, or the body)."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from edge.core.errors import ApiError
from edge.core.files import Upload

# What aiohttp's multipart reader raises on a body that is not what its headers say.
MALFORMED = (ValueError, RuntimeError, AssertionError, LookupError, aiohttp.http_exceptions.HttpProcessingError)


async def multipart(request: web.Request, upload: Upload) -> dict[str, str]:
    """Stores the form's `file` into `upload`; the other form fields (a repeated field's values joined by commas,
    e.g. `timestamp_granularities[]`)."""
    limit = upload.jobs.cfg.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 65536:
        raise ApiError(413, "file_too_large", f"uploads are limited to {limit} bytes")
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                continue
            if part.name == "file":
                await upload.store(part.read_chunk)  # a second `file` part replaces the first
            elif part.name and len(fields) < 16:
                value = (await part.read(decode=True))[:1024].decode("utf-8", "replace")
                fields[part.name] = f"{fields[part.name]},{value}" if part.name in fields else value
    except MALFORMED as exc:  # a bad boundary, a truncated body, an unknown transfer encoding: aiohttp's words
        raise ApiError(400, "invalid_request", f"malformed multipart/form-data ({exc.__class__.__name__}): "
                       "send a `file` field") from None
    if not upload.path:
        raise ApiError(400, "invalid_request", "missing the `file` field")
    return fields


async def body(request: web.Request, upload: Upload) -> None:
    """Stores the request's body into `upload`."""
    await upload.store(request.content.read)
