"""The draw-a-digit web app: a FastAPI application around one read-only model.

    import digitlab
    from digitlab.web import create_app
    app = create_app(digitlab.load("runs/mlp/model.safetensors"))
    # then: uvicorn.run(app, host="127.0.0.1", port=8000)   (or simply `digitlab serve`)

Routes (`?model=ID` picks one of the runs listed by /api/models instead of the served model)
    GET  /                 the drawing page (static/index.html; app.js, style.css, favicon.svg under /static/)
    POST /api/predict      an image as the raw request body (any image/* type; the page sends its pad as a small
                           greyscale PGM raster, no PNG encoding) or as the multipart field "file"
                           -> {"digit": int | null, "reason": why there is no digit | null,
                               "probabilities": [10 floats], "top": [{"digit", "probability"}],
                               "input_png": base64 PNG of the 28x28 image the model received,
                               "heatmap": 28x28 floats in [-1, 1] | null (what pushed the model to its answer),
                               "template": 28x28 floats | null (a linear model's weight template of that class),
                               "features": {"shape": [F, H, W], "levels": base64 bytes 0..255} | null (a CNN's first
                               conv layer's maps, each scaled to its own range)}
    GET  /api/model        the model's metadata (recipe, metrics, class names, digitlab version, ...)
    GET  /api/models       {"current": ID, "models": [{id, recipe, dataset, test_accuracy, date, ...}]}
    GET  /api/test-digit   a random MNIST test digit: {"index", "label", "image_png", "dataset"}
    GET  /healthz          {"status": "ok"}
    GET  /docs, /openapi.json   the OpenAPI description; the Swagger UI page (5.x) loads its JS and CSS from
                           /docs-static/ (shipped by the fastapi-offline package), never from a CDN. No /redoc:
                           ReDoc fetches its logo from a CDN even when its script is local.

Hardening (the limits are create_app's arguments; `digitlab serve` sets them from its flags):
- Body: refused with 413 from a Content-Length over `max_upload_bytes` (5 MB) before reading a byte ("declares
  N bytes"), and, when that header is absent or lies, as soon as the bytes counted while streaming pass the
  limit ("more than N MB arrived"), so a large upload is never held whole in memory. The whole body must
  arrive within `body_timeout` seconds (408); a client that leaves mid-upload ends the request quietly.
- Images: bytes that are not an image give 415, an image that cannot be decoded or used 422, each with a
  message in "detail"; a picture is judged by the size its header declares before decoding (see
  digitlab.images); at most `max_decodes` uploads are decoded at once; one that finds no free slot within
  `decode_wait` seconds gets 503 with Retry-After (a bounded wait, never a queue that starves /healthz).
- Browsers: a request whose Host is not in `allowed_hosts` gets 400 (DNS rebinding: another site's name
  resolving to this machine); a POST from a page of another origin (Origin, else Sec-Fetch-Site) gets 403
  unless that origin is in `allowed_origins` (which also get CORS headers). A plain HTML form or `fetch` with
  text/plain from any web site can therefore not make this server work.
- Static files come from the package's own folder through StaticFiles; nothing taken from a request is ever
  used as a path. Prediction runs in the threadpool, so the event loop keeps serving, and every call into the
  model goes through one lock, so concurrent requests never share a layer's buffers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import threading
import warnings
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import urlsplit

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
MAX_DECODES = 2  # uploads decoded at once; each may take a few hundred MB for a 16 MP picture
DECODE_WAIT = 5.0  # seconds an upload may wait for a decode slot before 503
BODY_TIMEOUT = 30.0  # seconds for a whole upload to arrive
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # Host header names accepted by default (IPv6 in brackets)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
STATIC_PACKAGE = ("digitlab.web", "static")
DOCS_STATIC_URL = "/docs-static"  # Swagger UI 5 assets from the fastapi-offline package


class TopEntry(BaseModel):
    digit: int
    probability: float


class FeatureMaps(BaseModel):
    """F maps of H x W grey levels as bytes (the default cnn's 24 maps of 24x24: 18 KB of base64)."""

    shape: list[int] = Field(description="[F, H, W]")
    levels: str = Field(description="base64 of F*H*W bytes, map by map and row by row: round(255 x value)")


class Prediction(BaseModel):
    digit: int | None = Field(description="the predicted class index, or null: no digit (see reason)")
    reason: str | None = Field(None, description="why there is no digit: no ink, not digit-like ink, or not sure")
    probabilities: list[float] = Field(description="one probability per class, summing to 1")
    top: list[TopEntry] = Field(description="the most likely classes, best first")
    input_png: str = Field(description="base64 PNG of the 28x28 grey image the model received (255 = ink)")
    heatmap: list[list[float]] | None = Field(
        None, description="28x28 gradient x (input - blank) for the best class, scaled to [-1, 1]: > 0 pushed "
        "the model towards its answer, < 0 away; null when no ink was found")
    template: list[list[float]] | None = Field(
        None, description="linear models only: the best class's 28x28 weight template scaled to [-1, 1] (> 0: ink "
        "there counts for the class); null for other networks")
    features: FeatureMaps | None = Field(
        None, description="CNNs only: the first Conv2D layer's feature maps for the 28x28 input (e.g. 24 of "
        "24x24), each the raw convolution output (before any ReLU, pooling or BatchNorm) scaled by its own min and "
        "max to [0, 1], as grey levels; null for networks without a convolution layer and when no ink was found")


class TestDigit(BaseModel):
    index: int
    label: int
    image_png: str = Field(description="base64 PNG of the 28x28 digit (255 = ink)")
    dataset: str = Field(description="mnist, or mnist-sample when the server has no full MNIST")


class Health(BaseModel):
    status: str


class _BodyTooLarge(Exception):
    pass


class SameOriginWrites:
    """ASGI middleware: refuse (403) a state-changing request a browser sent from a page of another origin.

    Browsers send `Origin` with every POST; a "simple" request (a form, or fetch with text/plain) is sent
    without a CORS preflight, so the server itself must refuse it. Same origin means the Origin's host:port is
    the request's Host; `allowed_origins` (exact "scheme://host[:port]" strings) are let through as well.
    Requests without Origin (curl, scripts) are judged by Sec-Fetch-Site when a browser sent that.
    """

    def __init__(self, app, allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            from starlette.datastructures import Headers
            from starlette.responses import JSONResponse

            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None:
                cross = origin.lower() not in self.allowed and urlsplit(origin).netloc.lower() != headers.get("host", "").lower()
            else:
                cross = headers.get("sec-fetch-site") == "cross-site"
            if cross:
                what = f"from {origin}" if origin is not None else "from another site"
                detail = (f"cross-origin request {what} refused; to allow a page there, start the server with "
                          f"--allow-origin {origin or 'ORIGIN'}")
                await JSONResponse({"detail": detail}, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class SerializedModel:
    """A read-only view of a model whose prediction calls hold one lock.

    Layers may keep scratch buffers between calls (in-place work pays in training); while serving, two requests
    must never run through the same buffers at once. Decoding and preprocessing stay outside the lock.
    """

    _LOCKED = ("predict_proba", "predict", "forward")

    def __init__(self, model) -> None:
        self._model = model
        self._lock = threading.Lock()
        self._explainer = None

    def template(self, cls: int) -> np.ndarray | None:
        """For a linear model (one Linear layer): class `cls`'s weight template, float32 [28, 28] in [-1, 1]
        (> 0: ink there counts for the class); None for any other network."""
        layers = [layer for layer in self._model.net.layers if type(layer).__name__ != "Flatten"]
        if len(layers) != 1 or type(layers[0]).__name__ != "Linear" or layers[0].W.shape[0] != 28 * 28:
            return None
        w = np.asarray(layers[0].W[:, cls], dtype=np.float32).reshape(28, 28)  # (784,) -> (28, 28)
        peak = float(np.abs(w).max())
        return w / peak if peak > 0 else w

    def features(self, x: np.ndarray) -> np.ndarray | None:
        """For a CNN: the first Conv2D layer's raw output for the 28x28 image x, float32 [F, H, W], each map scaled
        to [0, 1] (plots.feature_maps, the model's own forward); None for a network without a conv layer."""
        from digitlab import plots

        if not plots.conv_layers(self._model):
            return None
        with self._lock:
            (_, maps), = plots.feature_maps(self._model, x, layers=1)  # (H, W, F)
        return plots.scale_maps(maps.transpose(2, 0, 1))  # (F, H, W)

    def explain(self, x: np.ndarray, cls: int) -> np.ndarray:
        """float32 [28, 28] in [-1, 1]: d score[cls] / d input x (input - blank input), from the network's own
        backward pass (gradient x input, measured from a blank pad so the background says nothing)."""
        with self._lock:
            if self._explainer is None:
                self._explainer = explainer_net(self._model.net)
            xin = self._model.prepare(x[None])  # (1, 784) as the model normalises it
            blank = self._model.prepare(np.zeros_like(x)[None])  # (1, 784)
            scores = self._explainer.forward(xin, train=True)  # (1, C), caches for backward
            d = np.zeros_like(scores)
            d[0, cls] = 1.0
            grad = self._explainer.backward(d, input_grad=True)  # (1, 784), a scratch buffer: used under the lock
            a = (np.asarray(grad) * (xin - blank)).reshape(x.shape).astype(np.float32)  # (28, 28)
        peak = float(np.abs(a).max())
        return a / peak if peak > 0 else a

    def __getattr__(self, name: str):
        attr = getattr(self._model, name)
        if name in self._LOCKED and callable(attr):
            lock = self._lock

            def locked(*args, **kwargs):
                with lock:
                    return attr(*args, **kwargs)

            return locked
        return attr


def explainer_net(net):
    """A private copy of `net` without its Dropout layers (identity at inference), so a train-mode forward for
    backward is the inference function itself and never touches the served network's buffers."""
    from digitlab.nn import Sequential

    twin = copy.deepcopy(net)
    return Sequential([layer for layer in twin.layers if layer.spec().get("type") != "Dropout"])


def create_app(
    model,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_decodes: int = MAX_DECODES,
    decode_wait: float = DECODE_WAIT,
    body_timeout: float = BODY_TIMEOUT,
    allowed_hosts: Iterable[str] = LOCAL_HOSTS,
    allowed_origins: Iterable[str] = (),
    runs_dir=None,
    model_id: str = "served",
    data_dir=None,
) -> FastAPI:
    """Build the app serving `model` (a `digitlab.nn.model.Classifier`; read-only while serving).

    `allowed_hosts`: Host header names accepted ("*" for any; "*.example.org" patterns); `allowed_origins`:
    other origins whose pages may POST here (they also get CORS headers). `runs_dir`: offer its runs' models
    too (/api/models, ?model=ID); `model_id`: the served model's id there (its run folder's name).
    `data_dir`: where "Try a test digit" finds MNIST (default: digitlab's usual search, else the bundled sample).
    """
    from digitlab.web.models import ModelShelf

    from starlette.middleware.cors import CORSMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    shelf = ModelShelf(runs_dir, model, model_id, wrap=SerializedModel)
    guarded = shelf.get(None)
    decodes = asyncio.Semaphore(max_decodes)
    test_digits = _TestDigits(data_dir)
    allowed_origins = [o.rstrip("/") for o in allowed_origins]
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

    def pick(model: str | None):
        try:
            return shelf.get(model)
        except KeyError:
            raise HTTPException(404, f"no model {model!r}: GET /api/models lists them")

    @app.get("/api/model", tags=["model"])
    def api_model(model: str | None = None) -> dict[str, Any]:
        """The model's metadata: recipe, metrics (test accuracy), class names, digitlab version, architecture."""
        return copy.deepcopy(info) if model in (None, model_id) else model_info(pick(model))

    @app.get("/api/models", tags=["model"])
    def api_models() -> dict[str, Any]:
        """The models this server can use: the served one and the runs of its runs folder, most accurate first."""
        keys = ("id", "recipe", "dataset", "test_accuracy", "val_accuracy", "date")  # no file-system paths
        runs = [{k: r.as_dict()[k] for k in keys} for r in shelf.runs() if r.error is None]
        if not any(r["id"] == model_id for r in runs):
            metrics = info.get("metrics") or {}
            runs.insert(0, {"id": model_id, "recipe": info.get("recipe"), "dataset": info.get("dataset"),
                            "test_accuracy": metrics.get("test_accuracy"), "val_accuracy": metrics.get("val_accuracy"),
                            "date": None})
        return {"current": model_id, "models": runs}

    @app.get("/api/test-digit", response_model=TestDigit, tags=["model"])
    def api_test_digit(index: int | None = None) -> dict[str, Any]:
        """A random MNIST test digit (or the one at `index`) with its true label."""
        return test_digits.get(index)

    @app.post(
        "/api/predict",
        response_model=Prediction,
        tags=["model"],
        responses={
            413: {"description": f"body larger than {max_upload_bytes} bytes"},
            415: {"description": "the bytes are not an image"},
            422: {"description": "empty body, missing 'file' field, or an image that cannot be decoded/used"},
            403: {"description": "a POST from a page of another origin"},
            408: {"description": f"the upload took more than {body_timeout:g} s"},
            503: {"description": "busy decoding other uploads; retry after the Retry-After seconds"},
        },
        openapi_extra={"requestBody": _request_body_schema()},
    )
    async def api_predict(request: Request, model: str | None = None) -> dict:
        """Predict the digit in an image sent as the raw body or as the multipart field `file`."""
        chosen = await run_in_threadpool(pick, model)
        data = await _read_image_bytes(request, max_upload_bytes, body_timeout)
        try:  # a short, bounded wait: a long queue of big pictures would hold memory and starve the other routes
            async with asyncio.timeout(decode_wait):
                await decodes.acquire()
        except TimeoutError:
            raise HTTPException(503, f"busy: {max_decodes} images are being read right now; try again in a moment",
                                headers={"Retry-After": "1"})
        try:
            return await run_in_threadpool(predict_bytes, chosen, data)
        finally:
            decodes.release()

    app.mount("/static", StaticFiles(packages=[STATIC_PACKAGE]), name="static")
    # the last one added runs first: Host, then Origin, then CORS headers for the origins allowed explicitly
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=allowed_origins, allow_methods=["GET", "POST"],
                           allow_headers=["content-type"])
    app.add_middleware(SameOriginWrites, allowed_origins=allowed_origins)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts), www_redirect=False)
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
        raise HTTPException(415, "not an image: send a photo or drawing as PNG, JPEG, GIF, BMP or WebP")
    except Exception as exc:  # noqa: BLE001 - any decoder failure on hostile bytes is a client error
        raise HTTPException(422, f"the uploaded image cannot be read: {exc}")
    try:
        result = predict_image(model, data, top=3)
    except DigitlabError as exc:
        raise HTTPException(422, f"the uploaded image cannot be used: {exc}")
    best = result["top"][0][0]
    explains = hasattr(model, "explain")  # a SerializedModel (the app's); a bare Classifier gets no explanations
    heat = model.explain(result["input"], best) if result["found"] and explains else None
    template = model.template(best) if explains else None
    features = model.features(result["input"]) if result["found"] and explains else None
    return {
        "digit": None if result["digit"] is None else int(result["digit"]),
        "reason": result["reason"],
        "probabilities": [float(p) for p in result["probabilities"]],
        "top": [{"digit": int(d), "probability": float(p)} for d, p in result["top"]],
        "input_png": png_base64(result["input"]),
        "heatmap": None if heat is None else np.round(heat, 3).tolist(),
        "template": None if template is None else np.round(template, 3).tolist(),
        "features": None if features is None else grey_levels(features),
    }


class _TestDigits:
    """MNIST's test digits, loaded on first use (full MNIST where digitlab finds it, else the bundled sample)."""

    def __init__(self, data_dir=None) -> None:
        self.data_dir = data_dir
        self._data = None
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    def get(self, index: int | None) -> dict[str, Any]:
        with self._lock:
            if self._data is None:
                self._data = self._load()
            images, labels, name = self._data
            if index is None:
                index = int(self._rng.integers(len(images)))
        if not 0 <= index < len(images):
            raise HTTPException(404, f"no test digit {index}: {name} has {len(images)} (0..{len(images) - 1})")
        return {"index": index, "label": int(labels[index]), "image_png": png_base64(images[index]), "dataset": name}

    def _load(self):
        from digitlab.data import load_dataset

        try:
            ds = load_dataset("mnist", data_dir=self.data_dir, download=False, quiet=True)
        except DigitlabError:
            ds = load_dataset("mnist-sample", download=False, quiet=True)
        return ds.test.images, ds.test.labels, ds.name if ds.notice is None else "mnist-sample"


def grey_levels(maps: np.ndarray) -> dict[str, Any]:
    """float [F, H, W] in [0, 1] -> {"shape": [F, H, W], "levels": base64 of round(255 x maps) as bytes}."""
    levels = np.round(np.clip(maps, 0.0, 1.0) * 255).astype(np.uint8)
    return {"shape": list(levels.shape), "levels": base64.b64encode(levels.tobytes()).decode("ascii")}


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


async def _read_image_bytes(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> bytes:
    """The image bytes of a request: the multipart field "file", else the whole raw body; never more than `limit`
    bytes, never longer than `timeout` seconds."""
    from starlette.formparsers import MultiPartException, MultiPartParser
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_size = int(declared)
        except ValueError:
            raise HTTPException(400, f"invalid Content-Length header {declared!r}")
        if declared_size > limit:  # refused before reading a byte of the body
            raise HTTPException(413, f"upload declares {declared_size} bytes; the limit is {_mb(limit)}")

    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        async with asyncio.timeout(timeout):
            if content_type == "multipart/form-data":
                parser = MultiPartParser(request.headers, _limited(request.stream(), limit), max_files=1, max_fields=10,
                                         max_part_size=limit)
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
        raise HTTPException(413, f"more than {_mb(limit)} arrived (counted while reading); the limit is {_mb(limit)}")
    except TimeoutError:
        raise HTTPException(408, f"the upload did not arrive within {timeout:g} s")
    except ClientDisconnect:  # the client left mid-upload: nobody is there to read an answer, nothing to log
        raise HTTPException(400, "the client disconnected during the upload")
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
