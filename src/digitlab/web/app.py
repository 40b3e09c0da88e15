"""The draw-a-digit web app: a FastAPI application around one read-only model.

    import digitlab
    from digitlab.web import create_app
    app = create_app(digitlab.load("runs/mlp/model.safetensors"))
    # then: uvicorn.run(app, host="127.0.0.1", port=8000)   (or simply `digitlab serve`)

Routes
    GET  /                 the drawing page (static/index.html; app.js and style.css under /static/)
    POST /api/predict      an image as the raw request body (any image/* type) or as the multipart field "file"
                           -> {"digit": int | null, "probabilities": [10 floats], "top": [{"digit", "probability"}],
                               "input_png": base64 PNG of the 28x28 image the model received}
    GET  /api/model        the model's metadata (recipe, metrics, class names, digitlab version, ...)
    GET  /healthz          {"status": "ok"}
    GET  /docs, /openapi.json   the OpenAPI description; the Swagger UI page (5.x) loads its JS and CSS from
                           /docs-static/ (shipped by the fastapi-offline package), never from a CDN. No /redoc:
                           ReDoc fetches its logo from a CDN even when its script is local.

Hardening: a body over `max_upload_bytes` (5 MB) is refused with 413 from its Content-Length, and, when that
header is absent or lies, as soon as the bytes counted while streaming pass the limit, so a large upload is
never held whole in memory. Bytes that are not an image give 415, an image that cannot be decoded or used 422,
each with a message in "detail". Static files come from the package's own folder through StaticFiles; nothing
taken from a request is ever used as a path. Prediction runs in the threadpool, so the event loop keeps serving,
and every call into the model goes through one lock, so concurrent requests never share a layer's buffers.
"""

from __future__ import annotations

import base64
import copy
import io
import threading
import warnings
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field

import digitlab
from digitlab.errors import DigitlabError

MAX_UPLOAD_BYTES = 5 * 1024 * 1024
STATIC_PACKAGE = ("digitlab.web", "static")
DOCS_STATIC_URL = "/docs-static"  # Swagger UI 5 assets from the fastapi-offline package


class TopEntry(BaseModel):
    digit: int
    probability: float


class Prediction(BaseModel):
    digit: int | None = Field(description="the predicted class index, or null when no digit was found")
    probabilities: list[float] = Field(description="one probability per class, summing to 1")
    top: list[TopEntry] = Field(description="the most likely classes, best first")
    input_png: str = Field(description="base64 PNG of the 28x28 grey image the model received (255 = ink)")


class Health(BaseModel):
    status: str


class _BodyTooLarge(Exception):
    pass


class SerializedModel:
    """A read-only view of a model whose prediction calls hold one lock.

    Layers may keep scratch buffers between calls (in-place work pays in training); while serving, two requests
    must never run through the same buffers at once. Decoding and preprocessing stay outside the lock.
    """

    _LOCKED = ("predict_proba", "predict", "forward")

    def __init__(self, model) -> None:
        self._model = model
        self._lock = threading.Lock()

    def __getattr__(self, name: str):
        attr = getattr(self._model, name)
        if name in self._LOCKED and callable(attr):
            lock = self._lock

            def locked(*args, **kwargs):
                with lock:
                    return attr(*args, **kwargs)

            return locked
        return attr


def create_app(model, *, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """Build the app serving `model` (a `digitlab.nn.model.Classifier`; read-only while serving)."""
    guarded = SerializedModel(model)
    info = model_info(model)
    app = FastAPIOffline(  # a FastAPI whose /docs page uses bundled Swagger UI assets: works without internet
        static_url=DOCS_STATIC_URL,
        redoc_url=None,
        title="digitlab",
        version=digitlab.__version__,
        description="Draw or upload a handwritten digit and see what a NumPy-trained network answers.",
    )
    app.state.model = guarded
    app.state.max_upload_bytes = max_upload_bytes

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(_static_dir() + "/index.html", media_type="text/html")

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/api/model", tags=["model"])
    def api_model() -> dict[str, Any]:
        """The model's metadata: recipe, metrics (test accuracy), class names, digitlab version, architecture."""
        return copy.deepcopy(info)

    @app.post(
        "/api/predict",
        response_model=Prediction,
        tags=["model"],
        responses={
            413: {"description": f"body larger than {max_upload_bytes} bytes"},
            415: {"description": "the bytes are not an image"},
            422: {"description": "empty body, missing 'file' field, or an image that cannot be decoded/used"},
        },
        openapi_extra={"requestBody": _request_body_schema()},
    )
    async def api_predict(request: Request) -> dict:
        """Predict the digit in an image sent as the raw body or as the multipart field `file`."""
        data = await _read_image_bytes(request, max_upload_bytes)
        return await run_in_threadpool(predict_bytes, guarded, data)

    app.mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static")
    return app


def predict_bytes(model, data: bytes) -> dict:
    """Image bytes -> the /api/predict answer; raises HTTPException 415/422 for bytes that are not a usable image."""
    from PIL import Image, UnidentifiedImageError

    from digitlab.images import predict_image

    try:  # a header sniff only: tells "not an image at all" (415) from "an image we cannot use" (422)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # predict_image below judges the size (and says so)
            with Image.open(io.BytesIO(data)) as probe:
                probe.format  # noqa: B018
    except Image.DecompressionBombError:
        pass  # an image, but a huge one: predict_image refuses it naming the size the header claims
    except UnidentifiedImageError:
        raise HTTPException(415, "the uploaded bytes are not an image Pillow can read (send PNG, JPEG, GIF, BMP, WebP, ...)")
    except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is a client error
        raise HTTPException(422, f"the uploaded image cannot be read: {exc}")
    try:
        result = predict_image(model, data, top=3)
    except DigitlabError as exc:
        raise HTTPException(422, f"the uploaded image cannot be used: {exc}")
    return {
        "digit": None if result["digit"] is None else int(result["digit"]),
        "probabilities": [float(p) for p in result["probabilities"]],
        "top": [{"digit": int(d), "probability": float(p)} for d, p in result["top"]],
        "input_png": png_base64(result["input"]),
    }


def png_base64(image: np.ndarray) -> str:
    """uint8 [28, 28] -> base64 text of a greyscale PNG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def model_info(model) -> dict[str, Any]:
    """What GET /api/model answers: the model's JSON metadata plus the serving digitlab version."""
    meta = copy.deepcopy(dict(getattr(model, "metadata", {}) or {}))
    info: dict[str, Any] = {
        "recipe": meta.get("recipe"),
        "metrics": meta.get("metrics") or {},
        "class_names": list(getattr(model, "class_names", None) or meta.get("class_names") or []),
        "digitlab_version": meta.get("digitlab_version"),
        "server_version": digitlab.__version__,
    }
    for key in ("architecture", "loss", "normalization", "dataset", "seed", "format"):
        if key in meta:
            info[key] = meta[key]
    return info


async def _read_image_bytes(request: Request, limit: int) -> bytes:
    """The image bytes of a request: the multipart field "file", else the whole raw body; never more than `limit`."""
    from starlette.formparsers import MultiPartException, MultiPartParser

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise HTTPException(400, f"invalid Content-Length header {declared!r}")
        if declared_size > limit:
            raise HTTPException(413, f"upload of {declared_size} bytes is over the {_mb(limit)} limit")

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            parser = MultiPartParser(request.headers, _limited(request.stream(), limit), max_files=1, max_fields=10, max_part_size=limit)
            try:
                form = await parser.parse()
            except MultiPartException as exc:
                raise HTTPException(422, f"malformed multipart body: {exc}")
            try:
                upload = form.get("file")
                if upload is None or isinstance(upload, str):
                    raise HTTPException(422, 'multipart body has no file field named "file"')
                data = await upload.read()
            finally:
                await form.close()
        else:
            chunks = [chunk async for chunk in _limited(request.stream(), limit)]
            data = b"".join(chunks)
    except _BodyTooLarge:
        raise HTTPException(413, f"upload is over the {_mb(limit)} limit")
    if not data:
        raise HTTPException(422, "empty upload: send image bytes as the body or as the multipart field \"file\"")
    return data


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """Pass chunks through, raising _BodyTooLarge as soon as more than `limit` bytes went by."""
    seen = 0
    async for chunk in stream:
        seen += len(chunk)
        if seen > limit:
            raise _BodyTooLarge()
        yield chunk


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):g} MB"


def _static_dir() -> str:
    from importlib.resources import files

    return str(files(STATIC_PACKAGE[0]) / STATIC_PACKAGE[1])


def _request_body_schema() -> dict:
    binary = {"type": "string", "format": "binary"}
    return {
        "required": True,
        "description": "An image (PNG, JPEG, ...): the raw body with an image/* content type, or multipart field `file`.",
        "content": {
            "image/png": {"schema": binary},
            "image/jpeg": {"schema": binary},
            "application/octet-stream": {"schema": binary},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"file": binary}, "required": ["file"]},
            },
        },
    }
