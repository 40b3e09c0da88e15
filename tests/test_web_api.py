"""The web app's JSON API through FastAPI's TestClient, plus `digitlab serve` itself.

    .venv/bin/python -m pytest tests/test_web_api.py -q

Answers are checked with the session's real trained model (`trained_mlp`) and real MNIST test digits rendered
as PNG files; refusals, limits and the server's own protections use a small model trained on the bundled
sample (`sample_model`), so they run, and never skip, without full MNIST.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photolike import train_sample_cnn, train_sample_model  # noqa: E402

LIMIT = 5 * 1024 * 1024
BASE = "http://127.0.0.1"  # an allowed Host (TestClient's default "testserver" is not)


# ---------- helpers and fixtures ----------

def png_bytes(image: np.ndarray, scale: int = 4, invert: bool = False) -> bytes:
    """uint8 [H, W] (255 = ink) -> PNG bytes, upscaled like a drawing; `invert` gives dark ink on white."""
    from PIL import Image

    img = Image.fromarray(255 - image if invert else image, mode="L")
    img = img.resize((image.shape[1] * scale, image.shape[0] * scale), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A valid, tiny PNG (about 100 bytes) whose IHDR claims width x height pixels: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def decode_png(b64: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(b64))) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("L"))


@pytest.fixture(scope="module")
def model(trained_mlp):
    return trained_mlp.model


def make_client(app):
    with warnings.catch_warnings():  # starlette warns that its TestClient runs on httpx; not our business
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    return TestClient(app, base_url=BASE)


@pytest.fixture(scope="module")
def client(model):
    from digitlab.web import create_app

    with make_client(create_app(model)) as c:
        yield c


@pytest.fixture(scope="module")
def sample_model_file(tmp_path_factory):
    """A small MLP trained on the bundled mnist-sample in a few seconds: for everything but accuracy."""
    return train_sample_model(tmp_path_factory.mktemp("sample-model"))


@pytest.fixture(scope="module")
def sample_model(sample_model_file):
    import digitlab

    return digitlab.load(sample_model_file)


@pytest.fixture(scope="module")
def sample_client(sample_model):
    from digitlab.web import create_app

    with make_client(create_app(sample_model)) as c:
        yield c


def drawn_png(size: int = 120, scale: int = 1) -> bytes:
    """A drawn "7" (white on black), PNG: an image that needs no MNIST."""
    from PIL import Image, ImageDraw

    img = Image.new("L", (size, size), 0)
    s = size / 100
    ImageDraw.Draw(img).line([(25 * s, 20 * s), (75 * s, 20 * s), (45 * s, 85 * s)], fill=255, width=round(9 * s))
    buf = io.BytesIO()
    img.resize((size * scale, size * scale)).save(buf, format="PNG")
    return buf.getvalue()


def run_asgi(app, receive, headers, method="POST", path="/api/predict"):
    """Call the ASGI app directly with a scripted `receive`; returns the messages it sent."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1")] + headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def status_of(sent) -> int:
    return next(m for m in sent if m["type"] == "http.response.start")["status"]


def body_of(sent) -> dict:
    return json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """64 MNIST test digits (uint8 [64, 28, 28]) and their labels."""
    import digitlab.data

    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir)
    return np.asarray(images[:64]), np.asarray(labels[:64], dtype=np.int64)


# ---------- happy path ----------

def test_page_and_static_files_are_served(sample_client):
    client = sample_client
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<canvas id="pad"' in page.text and 'aria-live="polite"' in page.text
    for path, kind in (("/static/app.js", "javascript"), ("/static/style.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
    # no CDN, no build step: the page only refers to its own files
    for text in (page.text, client.get("/static/app.js").text, client.get("/static/style.css").text):
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text)
        assert "@import" not in text


def test_mnist_digits_as_png_predict_their_labels(client, model, digits):
    from digitlab.images import load_image, to_mnist

    images, labels = digits
    answers = []
    for image, label in zip(images[:20], labels[:20]):
        data = png_bytes(image)
        r = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) >= {"digit", "probabilities", "top", "input_png"}
        probs = np.array(body["probabilities"])
        assert probs.shape == (10,) and np.all(probs >= 0) and abs(probs.sum() - 1) < 1e-4
        assert body["digit"] == int(np.argmax(probs)) == body["top"][0]["digit"]
        top_p = [t["probability"] for t in body["top"]]
        assert top_p == sorted(top_p, reverse=True)
        # the 28x28 shown is exactly what the library's preprocessing makes of this file
        seen = decode_png(body["input_png"])
        expected, found = to_mnist(load_image(data))
        assert found and seen.shape == (28, 28) and np.array_equal(seen, expected)
        assert body["digit"] == int(model.predict(expected[None])[0])
        answers.append(body["digit"])
    correct = int(np.sum(np.array(answers) == labels[:20]))
    assert correct >= 18, f"only {correct}/20 MNIST test digits answered right: {answers} vs {labels[:20].tolist()}"


def test_multipart_upload_and_dark_on_light_give_the_same_digit(client, digits):
    images, labels = digits
    for image in images[:5]:
        raw = client.post("/api/predict", content=png_bytes(image), headers={"content-type": "image/png"}).json()
        multi = client.post("/api/predict", files={"file": ("digit.png", png_bytes(image), "image/png")}).json()
        assert multi == raw
        inverted = client.post("/api/predict", content=png_bytes(image, invert=True)).json()
        assert inverted["digit"] == raw["digit"]


def test_blank_canvas_gives_no_digit(sample_client):
    client = sample_client
    for value in (0, 255):
        blank = np.full((70, 70), value, dtype=np.uint8)
        r = client.post("/api/predict", content=png_bytes(blank), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["digit"] is None


def test_model_info_and_health(sample_client, sample_model):
    client, model = sample_client, sample_model
    info = client.get("/api/model").json()
    assert info["class_names"] == list(model.class_names) and len(info["class_names"]) == 10
    assert info["recipe"] == model.metadata["recipe"]
    assert info["metrics"] == model.metadata["metrics"]
    assert info["digitlab_version"] == model.metadata["digitlab_version"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_docs_describe_the_api(sample_client):
    client = sample_client
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/png" in body
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    assert {"413", "415", "422"} <= set(spec["paths"]["/api/predict"]["post"]["responses"])


def test_docs_page_loads_only_local_assets(sample_client):
    client = sample_client
    """Swagger UI must work offline: every URL in /docs is ours and answers with real JS/CSS."""
    html = client.get("/docs")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert not re.search(r"(https?:)?//[a-z0-9.-]", html.text, re.I), "the docs page refers to another host"
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html.text)
    assert {"/docs-static/swagger-ui-bundle.js", "/docs-static/swagger-ui.css"} <= set(urls), urls
    assert "url: '/openapi.json'" in html.text
    for url in urls:
        assert url.startswith("/docs-static/"), url
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 1000, url
        kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[1]]
        assert kind in r.headers["content-type"], (url, r.headers["content-type"])
    # Swagger UI 5.x: 4.x cannot render FastAPI's OpenAPI 3.1
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.', client.get("/docs-static/swagger-ui-bundle.js").text)
    assert version and int(version.group(1)) >= 5
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert client.get("/redoc").status_code == 404  # ReDoc would fetch its logo from a CDN


# ---------- refusals ----------

def test_declared_oversize_upload_is_refused_before_reading_the_body(sample_model):
    """The Content-Length pre-check: 413 naming the declared size, and not one body byte is read."""
    from digitlab.web import create_app

    pulled = []

    async def receive():
        pulled.append(1)
        return {"type": "http.request", "body": b"x" * 4096, "more_body": True}

    sent = run_asgi(create_app(sample_model), receive, [(b"content-length", str(LIMIT + 1).encode()),
                                                        (b"content-type", b"image/png")])
    assert status_of(sent) == 413
    assert body_of(sent)["detail"] == f"upload declares {LIMIT + 1} bytes; the limit is 5 MB"
    assert pulled == []


def test_streamed_oversize_upload_without_length_is_refused(sample_client):
    """No Content-Length at all (chunked): the streaming count refuses it, with its own message."""
    def chunks():
        for _ in range(LIMIT // 65536 + 10):
            yield b"\x89PNG" + b"\0" * 65532

    r = sample_client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413
    assert r.json()["detail"] == "more than 5 MB arrived (counted while reading); the limit is 5 MB"


@pytest.mark.parametrize("multipart", [False, True])
def test_lying_content_length_stops_reading_at_the_limit(sample_model, multipart):
    """An endless body under a small Content-Length: the streaming check answers 413 just past the limit."""
    from digitlab.web import create_app

    limit = 100_000
    app = create_app(sample_model, max_upload_bytes=limit)
    chunk = b"x" * 4096
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += len(chunk)
        if pulled > 50 * limit:  # the app kept reading: end it so the test fails instead of hanging
            return {"type": "http.request", "body": b"", "more_body": False}
        if multipart and pulled == len(chunk):
            head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            return {"type": "http.request", "body": head + chunk[len(head):], "more_body": True}
        return {"type": "http.request", "body": chunk, "more_body": True}

    content_type = b"multipart/form-data; boundary=XyZ" if multipart else b"image/png"
    sent = run_asgi(app, receive, [(b"content-length", b"1000"), (b"content-type", content_type)])
    assert status_of(sent) == 413
    assert "counted while reading" in body_of(sent)["detail"]
    assert pulled <= limit + 2 * len(chunk)


def test_a_slow_body_times_out_with_408(sample_model):
    from digitlab.web import create_app

    calls = 0

    async def receive():  # one chunk, then nothing ever again
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"\x89PNG", "more_body": True}
        await asyncio.sleep(3600)

    sent = run_asgi(create_app(sample_model, body_timeout=0.2), receive, [(b"content-type", b"image/png")])
    assert status_of(sent) == 408 and body_of(sent)["detail"] == "the upload did not arrive within 0.2 s"


def test_a_client_leaving_mid_upload_is_no_server_error(sample_model):
    from digitlab.web import create_app

    messages = iter([{"type": "http.request", "body": b"\x89PNG\0\0", "more_body": True}, {"type": "http.disconnect"}])

    async def receive():
        return next(messages)

    sent = run_asgi(create_app(sample_model), receive, [(b"content-type", b"image/png"), (b"content-length", b"9000")])
    assert status_of(sent) == 400  # nobody reads it; what matters is no exception and no 500


def test_decodes_are_bounded_and_health_stays_up(sample_model, monkeypatch):
    """With every decode slot taken, another upload waits at most `decode_wait`, then gets 503 + Retry-After;
    /healthz still answers."""
    import threading

    import digitlab.web.app as web_app

    entered, release = threading.Event(), threading.Event()
    real = web_app.predict_bytes

    def slow_predict(model, data):
        entered.set()
        assert release.wait(30), "never released"
        return real(model, data)

    monkeypatch.setattr(web_app, "predict_bytes", slow_predict)
    png = drawn_png()
    with make_client(web_app.create_app(sample_model, max_decodes=1, decode_wait=0.1)) as c:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/api/predict", content=png, headers={"content-type": "image/png"})
            assert entered.wait(30)
            busy = c.post("/api/predict", content=png, headers={"content-type": "image/png"})
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            assert "busy" in busy.json()["detail"]
            assert c.get("/healthz").json() == {"status": "ok"}
            release.set()
            assert first.result(timeout=60).status_code == 200
        monkeypatch.setattr(web_app, "predict_bytes", real)
        assert c.post("/api/predict", content=png, headers={"content-type": "image/png"}).status_code == 200


# ---------- other sites: Host and Origin ----------

@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "[::2]:80"])
def test_unknown_host_headers_are_refused(sample_client, host):
    """DNS rebinding: another site's name pointing at this machine must not reach the API."""
    for r in (sample_client.get("/api/model", headers={"host": host}),
              sample_client.post("/api/predict", content=drawn_png(), headers={"host": host, "content-type": "image/png"})):
        assert r.status_code == 400 and r.text == "Invalid host header"


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"])
def test_local_host_headers_are_served(sample_client, host):
    assert sample_client.get("/healthz", headers={"host": host}).status_code == 200


def test_allowed_hosts_are_configurable(sample_model):
    from digitlab.web import create_app

    with make_client(create_app(sample_model, allowed_hosts=["digits.lan"])) as c:
        assert c.get("/healthz", headers={"host": "digits.lan:8000"}).status_code == 200
        assert c.get("/healthz", headers={"host": "localhost"}).status_code == 400
    with make_client(create_app(sample_model, allowed_hosts=["*"])) as c:
        assert c.get("/healthz", headers={"host": "anything.example"}).status_code == 200


def test_cross_origin_posts_are_refused(sample_client):
    """A text/plain POST is a "simple" request: browsers send it from any page without asking; we refuse it."""
    png = drawn_png()
    for headers in ({"origin": "http://evil.example", "content-type": "text/plain"},
                    {"origin": "http://evil.example", "content-type": "image/png"},
                    {"origin": "null", "content-type": "text/plain"},  # a sandboxed frame or a file:// page
                    {"origin": "http://127.0.0.1:9999", "content-type": "image/png"},  # another port is another origin
                    {"sec-fetch-site": "cross-site", "content-type": "image/png"}):
        r = sample_client.post("/api/predict", content=png, headers=headers)
        assert r.status_code == 403, headers
        assert "cross-origin request" in r.json()["detail"] and "--allow-origin" in r.json()["detail"]
    # the page's own origin, and clients that are not browsers (no Origin), are served
    for headers in ({"origin": BASE}, {"sec-fetch-site": "same-origin"}, {}):
        r = sample_client.post("/api/predict", content=png, headers={"content-type": "image/png", **headers})
        assert r.status_code == 200, (headers, r.text)
    assert sample_client.get("/api/model", headers={"origin": "http://evil.example"}).status_code == 200  # reads are fine


def test_allowed_origins_may_post_and_get_cors_headers(sample_model):
    from digitlab.web import create_app

    with make_client(create_app(sample_model, allowed_origins=["http://app.example:3000/"])) as c:
        r = c.post("/api/predict", content=drawn_png(), headers={"content-type": "image/png", "origin": "http://app.example:3000"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example:3000"
        r = c.post("/api/predict", content=drawn_png(), headers={"content-type": "image/png", "origin": "http://app.example"})
        assert r.status_code == 403


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"hello, this is text", "text/plain", 415, "not an image"),
        (b'{"image": [0, 1, 2]}', "application/json", 415, "not an image"),
        (b"", "image/png", 422, "empty"),
    ],
)
def test_bad_bodies_are_refused_with_a_message(sample_client, body, content_type, status, words):
    r = sample_client.post("/api/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == status
    assert words in r.json()["detail"]


def test_broken_images_are_refused_with_a_message(sample_client):
    good = drawn_png(scale=3)
    # a PNG signature and header followed by garbage: Pillow knows the format, the data is broken -> 422
    for broken in (good[: len(good) // 2], good[:60] + b"\0" * 200):
        r = sample_client.post("/api/predict", content=broken, headers={"content-type": "image/png"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("the uploaded image cannot be used: <bytes>: truncated or corrupt")
    r = sample_client.post("/api/predict", files={"file": ("a.png", good[: len(good) // 2], "image/png")})
    assert r.status_code == 422 and "truncated or corrupt" in r.json()["detail"]


@pytest.mark.parametrize(("width", "height", "words"), [
    (50_000, 50_000, "too large: 50000×50000 pixels"),  # past Pillow's own error limit
    (10_000, 10_000, "too large: 10000×10000 pixels"),  # past its warning limit only
    (9400, 9400, "too large: 9400×9400 pixels"),  # under Pillow's limits: 5.8 GB and 24 s before
    (1, 89_000_000, "too large: 1×89000000 pixels"),  # 1.6 GB and 9 s before
    (4000, 150, "too elongated: 4000×150 pixels"),
])
def test_decompression_bomb_is_refused_without_decoding(sample_client, monkeypatch, width, height, words):
    from PIL import Image

    load = Image.Image.load

    def no_decoding(self, *args):  # Pillow itself loads a small internal image the first time it runs
        if self.size == (width, height):
            raise AssertionError("pixels were decoded")
        return load(self, *args)

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    bomb = png_claiming(width, height)
    assert len(bomb) < 200
    for r in (sample_client.post("/api/predict", content=bomb, headers={"content-type": "image/png"}),
              sample_client.post("/api/predict", files={"file": ("bomb.png", bomb, "image/png")})):
        assert r.status_code == 422, r.text
        assert words in r.json()["detail"]


def test_multipart_without_file_field_is_refused(sample_client):
    r = sample_client.post("/api/predict", files={"image": ("a.png", drawn_png(), "image/png")})
    assert r.status_code == 422 and '"file"' in r.json()["detail"]
    r = sample_client.post("/api/predict", data={"file": "not a file"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 422 and '"file"' in r.json()["detail"]
    r = sample_client.post("/api/predict", data={"file": "a form, not an image"})  # urlencoded body
    assert r.status_code == 415


def test_no_request_path_reaches_the_file_system(sample_client):
    client = sample_client
    for path in (
        "/static/../app.py",
        "/static/%2e%2e/app.py",
        "/static/..%2fapp.py",
        "/static/%2e%2e/%2e%2e/%2e%2e/pyproject.toml",
        "/static//etc/passwd",
        "/static/%2fetc%2fpasswd",
        "/docs-static/%2e%2e/core.py",
        "/docs-static/..%2f..%2fcore.py",
        "/etc/passwd",
        "/../../pyproject.toml",
    ):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "root:" not in r.text and "create_app" not in r.text
    assert client.get("/api/predict").status_code == 405


# ---------- concurrency ----------

def test_concurrent_requests_give_the_same_answers_as_sequential(client, digits):
    images, _ = digits
    bodies = [png_bytes(img, scale=3 + i % 3, invert=bool(i % 2)) for i, img in enumerate(images)]

    def ask(data):
        r = client.post("/api/predict", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        return r.json()

    sequential = [ask(b) for b in bodies]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(ask, bodies))
    assert parallel == sequential
    assert len({a["digit"] for a in sequential}) >= 8  # many different answers were in flight at once


# ---------- the real server over loopback ----------

@pytest.fixture
def live_server(sample_model):
    """start(header_timeout=..., max_connections=...) -> (port, server): digitlab's uvicorn server in a thread."""
    import contextlib
    import socket
    import threading

    from digitlab.commands.serve import make_server

    running = []

    def start(**limits):
        server = make_server(sample_model, **limits)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread, sock))
        for _ in range(600):  # bounded: up to ~60 s on a loaded machine
            if server.started:
                break
            time.sleep(0.1)
        assert server.started, "the server did not start"
        return sock.getsockname()[1], server

    yield start
    for server, thread, sock in running:
        server.should_exit = True
        thread.join(timeout=30)
        with contextlib.suppress(OSError):
            sock.close()


def half_sent(port: int):
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the head never ends
    return s


def closed_by_server(sock) -> bool:
    """Waits (up to the socket's timeout) until the server closes the connection: EOF, or a reset when the server
    closed it with our bytes unread."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def test_half_sent_requests_are_closed_after_the_header_timeout(live_server):
    port, _ = live_server(header_timeout=0.5)
    socks = [half_sent(port) for _ in range(20)]
    try:
        for s in socks:
            assert closed_by_server(s)  # a hang would raise socket.timeout after 20 s
    finally:
        for s in socks:
            s.close()


def test_connections_past_the_limit_are_closed_at_once(live_server):
    port, server = live_server(header_timeout=60, max_connections=4)
    socks = [half_sent(port) for _ in range(4)]
    extra = half_sent(port)
    try:
        assert closed_by_server(extra)  # at once, long before the 60 s head timeout
        for s in socks:  # the first four are still open
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(100)
    finally:
        for s in socks + [extra]:
            s.close()
    for _ in range(300):  # bounded wait until the server has seen them go
        if not server.server_state.connections:
            break
        time.sleep(0.05)
    import httpx

    assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=20).json() == {"status": "ok"}


def test_a_client_leaving_mid_upload_logs_no_traceback(live_server, caplog):
    import logging
    import socket

    import httpx

    port, server = live_server()
    uvicorn_log = logging.getLogger("uvicorn.error")  # uvicorn's loggers do not propagate to the root
    uvicorn_log.addHandler(caplog.handler)
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: 100000\r\n\r\n\x89PNG" + b"\0" * 5000)
        for _ in range(300):  # until the request is being served
            if server.server_state.tasks:
                break
            time.sleep(0.02)
        s.close()
        for _ in range(300):  # until it has ended
            if not server.server_state.tasks:
                break
            time.sleep(0.02)
        assert not server.server_state.tasks
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=20).status_code == 200
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert problems == [], [r.getMessage() for r in problems]


def test_the_real_server_refuses_other_hosts_and_origins(live_server):
    import httpx

    port, _ = live_server()
    url = f"http://127.0.0.1:{port}"
    png = drawn_png()
    assert httpx.get(url + "/api/model", headers={"host": "rebound.example"}, timeout=20).status_code == 400
    r = httpx.post(url + "/api/predict", content=png, headers={"content-type": "text/plain", "origin": "http://evil.example"},
                   timeout=20)
    assert r.status_code == 403
    r = httpx.post(url + "/api/predict", content=png, headers={"content-type": "image/png", "origin": url}, timeout=20)
    assert r.status_code == 200 and r.json()["digit"] in range(10)


def test_serve_flags_reach_the_app(tmp_path):
    from digitlab.commands.serve import allowed_hosts

    assert allowed_hosts("127.0.0.1", []) == ["localhost", "127.0.0.1", "[::1]", "127.0.0.1"]
    assert allowed_hosts("0.0.0.0", ["digits.lan"]) == ["localhost", "127.0.0.1", "[::1]", "digits.lan"]
    assert allowed_hosts("::1", []) [-1] == "[::1]" and allowed_hosts("Box.LAN", [])[-1] == "box.lan"


# ---------- digitlab serve ----------

def fake_run(runs, name, accuracy, dataset="mnist", seed=0):
    """RUNS/NAME/model.safetensors: a small linear model whose header says its test accuracy and data set."""
    from digitlab.nn.model import Classifier, build_linear

    net = build_linear(784, 10, init="glorot_normal", rng=np.random.default_rng(seed))
    path = runs / name / "model.safetensors"
    path.parent.mkdir(parents=True)
    Classifier(net).save(path, recipe=name, dataset=dataset, metrics={"test_accuracy": accuracy})
    return path


def test_serve_picks_the_most_accurate_run_and_says_which(tmp_path, capsys, monkeypatch):
    from digitlab.cli import main
    from digitlab.commands import serve

    runs = tmp_path / "runs"
    fake_run(runs, "newest-but-worse", 0.95)
    best = fake_run(runs, "best", 0.985)
    fake_run(runs, "sample-only", 0.99, dataset="mnist-sample")  # 1,000 sample test digits: not comparable
    (runs / "broken").mkdir()
    (runs / "broken" / "model.safetensors").write_bytes(b"not a model")
    os.utime(best, (time.time() - 60, time.time() - 60))
    served = []
    monkeypatch.setattr(serve, "serve_socket", lambda model, sock, **options: (served.append(options), sock.close()))
    assert main(["serve", "--runs-dir", str(runs), "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"digitlab: serving {best} (the most accurate of 3 in {runs}/: 98.50 % on mnist test) at http://")
    assert served[0]["model_id"] == "best" and served[0]["runs_dir"] == runs


def test_a_busy_port_suggests_port_0(capsys):
    import socket

    from digitlab.commands.serve import bind_socket
    from digitlab.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{port}: .*--port 0 for any free one"):
            bind_socket("127.0.0.1", port)


def test_models_are_listed_and_can_be_switched(sample_model, tmp_path):
    import digitlab
    from digitlab.web import create_app

    runs = tmp_path / "runs"
    other = fake_run(runs, "other", 0.93, seed=3)
    fake_run(runs, "better", 0.97, seed=4)
    with make_client(create_app(sample_model, runs_dir=runs, model_id="served-sample")) as c:
        listing = c.get("/api/models").json()
        assert listing["current"] == "served-sample"
        assert [m["id"] for m in listing["models"]] == ["served-sample", "better", "other"]
        assert listing["models"][2] == {"id": "other", "recipe": "other", "dataset": "mnist", "test_accuracy": 0.93,
                                        "val_accuracy": None, "date": listing["models"][2]["date"]}
        png = drawn_png()
        mine = c.post("/api/predict", content=png).json()
        theirs = c.post("/api/predict?model=other", content=png).json()
        expected = digitlab.load(other).predict_image(png)
        assert theirs["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
        assert mine["probabilities"] != theirs["probabilities"]
        assert c.get("/api/model?model=other").json()["recipe"] == "other"
        # a linear model's answer comes with the best class's weight template; the MLP's does not
        assert mine["template"] is None
        best = theirs["top"][0]["digit"]
        W = digitlab.load(other).net.layers[0].W  # (784, 10)
        template = np.array(theirs["template"])  # (28, 28)
        assert template.shape == (28, 28) and np.abs(template).max() == pytest.approx(1.0)
        assert np.allclose(template.ravel(), W[:, best] / np.abs(W[:, best]).max(), atol=1e-3)
        for bad in ("nope", "../runs/other", str(other)):
            r = c.post("/api/predict", params={"model": bad}, content=png)
            assert r.status_code == 404 and "GET /api/models" in r.json()["detail"]


def test_try_a_test_digit_gives_a_real_test_digit_and_its_label(sample_client):
    import digitlab.data

    images, labels = digitlab.data.load("mnist-sample", split="test")
    r = sample_client.get("/api/test-digit", params={"index": 17})
    assert r.status_code == 200
    body = r.json()
    assert body["dataset"] == "mnist-sample" and body["index"] == 17 and body["label"] == int(labels[17])
    assert np.array_equal(decode_png(body["image_png"]), images[17])
    random_pick = sample_client.get("/api/test-digit").json()
    assert 0 <= random_pick["index"] < len(images) and random_pick["label"] == int(labels[random_pick["index"]])
    assert sample_client.get("/api/test-digit", params={"index": len(images)}).status_code == 404


def pgm(img) -> bytes:
    """The page's raster: binary PGM (P5) of a greyscale PIL image."""
    return f"P5\n{img.width} {img.height}\n255\n".encode() + img.convert("L").tobytes()


def test_the_pads_pgm_raster_is_answered_like_the_png(sample_client):
    from PIL import Image

    png = drawn_png(size=140)
    raster = pgm(Image.open(io.BytesIO(png)))
    a = sample_client.post("/api/predict", content=png, headers={"content-type": "image/png"}).json()
    b = sample_client.post("/api/predict", content=raster, headers={"content-type": "image/x-portable-graymap"}).json()
    assert a == b
    lying = raster[:-100]  # a raster shorter than its header says
    r = sample_client.post("/api/predict", content=lying, headers={"content-type": "image/x-portable-graymap"})
    assert r.status_code == 422 and "truncated or corrupt" in r.json()["detail"]


def test_not_a_digit_and_no_ink_have_no_digit_and_say_why(sample_client):
    from PIL import Image, ImageDraw

    def pad(draw):
        img = Image.new("L", (140, 140), 0)
        draw(ImageDraw.Draw(img))
        return pgm(img)

    cases = {
        "a blob or dot, not a digit": pad(lambda d: d.ellipse((10, 10, 30, 30), fill=255)),  # a dot in a corner
        "a flat mark, not a digit": pad(lambda d: d.line([(20, 70), (120, 70)], fill=255, width=10)),  # a dash
        "no ink found": pad(lambda d: None),
    }
    for reason, body in cases.items():
        answer = sample_client.post("/api/predict", content=body).json()
        assert answer["digit"] is None and answer["reason"] == reason, answer
        assert len(answer["probabilities"]) == 10  # the model's answer is still shown
        assert (answer["heatmap"] is None) == (reason == "no ink found")


def test_the_heat_map_is_the_models_own_gradient_times_input(sample_model, sample_client):
    """heatmap = d score[best] / d input x (input - blank), scaled to [-1, 1]: checked against finite differences."""
    from digitlab.data.dataset import affine
    from digitlab.images import load_image, to_mnist

    png = drawn_png()
    answer = sample_client.post("/api/predict", content=png).json()
    heat = np.array(answer["heatmap"])  # (28, 28)
    x, _ = to_mnist(load_image(png))
    assert heat.shape == (28, 28) and np.abs(heat).max() == pytest.approx(1.0, abs=1e-3)
    assert np.all(heat[x == 0] == 0)  # nothing is credited to the blank background
    best = answer["top"][0]["digit"]
    net = sample_model.net

    scale, offset = affine(sample_model.normalization)  # the model's normalisation of 0..255 pixels

    def score(pixels):  # the best class's score for (784,) pixels on the 0..255 scale (may step past 255)
        return float(net.forward((pixels * scale + offset)[None], train=False)[0, best])

    base = x.astype(np.float64).ravel()
    attribution = np.zeros(784)
    strongest = np.argsort(-np.abs(heat).ravel())[:6]
    for i in strongest:
        step = np.zeros(784)
        step[i] = 8.0  # 8 grey levels
        grad = (score(base + step) - score(base - step)) / (2 * 8.0)  # d score / d pixel
        attribution[i] = grad * base[i]
    # gradient x (input - blank) is, per pixel, d score / d pixel x pixel value (the normalisation is affine)
    ratio = attribution[strongest] / heat.ravel()[strongest]
    assert np.all(ratio > 0), "the heat map's signs are not the gradient's"
    assert ratio.max() / ratio.min() < 1.1, ratio  # one common scale (the peak)


@pytest.fixture(scope="module")
def sample_cnn_model(tmp_path_factory):
    """A small CNN (conv 6@5x5 first) trained one epoch on the bundled sample."""
    import digitlab

    return digitlab.load(train_sample_cnn(tmp_path_factory.mktemp("sample-cnn")))


def test_a_cnn_answer_carries_its_first_conv_layers_feature_maps(sample_cnn_model, sample_client):
    """features = the first Conv2D layer's raw output for the 28x28 input, each map scaled to [0, 1]; null for an
    MLP and for a pad without ink."""
    from PIL import Image

    from digitlab.images import load_image, to_mnist
    from digitlab.web import create_app

    png = drawn_png()
    with make_client(create_app(sample_cnn_model)) as c:
        answer = c.post("/api/predict", content=png).json()
        blank = c.post("/api/predict", content=pgm(Image.new("L", (140, 140), 0))).json()
    shape, levels = answer["features"]["shape"], base64.b64decode(answer["features"]["levels"])
    assert len(levels) == math.prod(shape)
    features = np.frombuffer(levels, np.uint8).reshape(shape) / 255  # (F, H, W)
    conv = sample_cnn_model.net.layers[0]
    assert features.shape == (conv.filters, 24, 24) == (6, 24, 24)  # 5x5 "valid" on 28x28
    x, _ = to_mnist(load_image(png))  # the 28x28 image the model received
    assert np.array_equal(decode_png(answer["input_png"]), x)
    raw = conv.forward(sample_cnn_model.prepare(x[None]), train=False)[0].transpose(2, 0, 1)  # (F, 24, 24)
    lo, hi = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    assert np.all(hi > lo)
    assert np.allclose(features, (raw - lo) / (hi - lo), atol=0.5 / 255 + 1e-6)  # rounded to grey levels
    assert features.min() == 0.0 and features.max() == 1.0
    assert blank["features"] is None and blank["reason"] == "no ink found"
    assert sample_client.post("/api/predict", content=png).json()["features"] is None  # an MLP has no conv layer


def test_serve_refuses_bad_arguments_with_one_line(tmp_path, capsys):
    from digitlab.cli import main

    assert main(["serve", str(tmp_path / "nope.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error:") and "nope.safetensors" in err and err.count("\n") == 1
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"this is not a model")
    assert main(["serve", str(bogus)]) == 1
    assert "bogus.safetensors" in capsys.readouterr().err
    assert main(["serve", str(bogus), "--port", "70000"]) == 1
    assert "70000" in capsys.readouterr().err


def test_serve_trains_a_model_when_runs_is_empty(sample_model_file, tmp_path, monkeypatch, capsys):
    """`digitlab serve` with no MODEL and no run trains the default recipe into --runs-dir, then serves that model.

    The training is faked (it copies a model trained on the bundled sample) and so is uvicorn (serve_socket records what it
    was given), so this checks the command's own steps: train, load, bind, print the URL, serve.
    """
    import digitlab
    import digitlab.train
    from digitlab.cli import main
    from digitlab.commands import serve
    from digitlab.recipes import DEFAULT_RECIPE

    runs = tmp_path / "runs"
    runs.mkdir()
    trained, served = [], []

    def fake_train_recipe(name, out_dir=None, quiet=True, **kwargs):
        print(f"epoch 1/1  (fake training of {name!r})", flush=True)
        out_dir.mkdir(parents=True)
        model_path = out_dir / "model.safetensors"
        shutil.copyfile(sample_model_file, model_path)
        trained.append({"name": name, "out_dir": out_dir, "quiet": quiet})
        return type("FakeResult", (), {"model_path": model_path})()

    def fake_serve_socket(model, sock, **protections):
        served.append((model, sock.getsockname()))
        assert protections == {"allowed_hosts": ["localhost", "127.0.0.1", "[::1]", "127.0.0.1"], "allowed_origins": [],
                               "runs_dir": runs, "model_id": trained[-1]["out_dir"].name, "data_dir": None}
        sock.close()

    monkeypatch.setattr(digitlab.train, "train_recipe", fake_train_recipe)
    monkeypatch.setattr(serve, "serve_socket", fake_serve_socket)

    assert main(["serve", "--runs-dir", str(runs), "--port", "0"]) == 0
    out = capsys.readouterr().out
    assert len(trained) == 1 and trained[0]["name"] == DEFAULT_RECIPE == "cnn" and trained[0]["quiet"] is False
    run_dir = trained[0]["out_dir"]
    assert run_dir.parent == runs and run_dir.name.startswith("cnn-")
    model_path = run_dir / "model.safetensors"
    lines = out.splitlines()
    assert lines[0] == f"digitlab: no model in {runs}/; training the 'cnn' recipe into {run_dir} first"
    assert "fake training" in lines[1]  # the training's own progress reaches the terminal
    (model, (host, port)), = served
    assert host == "127.0.0.1" and port > 0
    assert lines[-1].startswith(f"digitlab: serving {model_path} at http://127.0.0.1:{port}/")
    # the model served is the one just trained: same answers as the trained model
    images, _ = digitlab.data.load("mnist-sample", split="test")
    expected = digitlab.load(sample_model_file).predict(images[:16])
    assert np.array_equal(model.predict(images[:16]), expected)

    # a second start finds that run and trains nothing
    assert main(["serve", "--runs-dir", str(runs), "--port", "0", "--json"]) == 0
    assert len(trained) == 1 and len(served) == 2
    assert json.loads(capsys.readouterr().out)["model"] == str(model_path)


def test_serve_command_serves_a_model(sample_model_file, tmp_path):
    """`digitlab serve MODEL --port 0 --json` prints its URL and answers over real HTTP until terminated."""
    import httpx

    cmd = [sys.executable, "-m", "digitlab", "serve", str(sample_model_file), "--port", "0", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        lines = []
        while not lines or lines[-1] != "}\n":
            line = proc.stdout.readline()
            assert line, f"serve exited early: {proc.stderr.read()}"
            lines.append(line)
        started = json.loads("".join(lines))
        assert started["url"].startswith("http://127.0.0.1:") and started["port"] > 0
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(started["url"] + "healthz", timeout=5)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server never answered"
                time.sleep(0.1)
        assert health.json() == {"status": "ok"}
        assert '<canvas id="pad"' in httpx.get(started["url"], timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------- hostile bytes never crash the server ----------

def test_random_and_corrupted_bodies_get_a_clear_answer(sample_client):
    """Random bytes, bit-flipped and cut PNGs, as raw body or multipart: 200, 415 or 422 with a message."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    small_png = drawn_png(size=60)

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        junk=st.binary(max_size=512),
        flips=st.lists(st.tuples(st.integers(0, len(small_png) - 1), st.integers(1, 255)), max_size=6),
        cut=st.integers(0, len(small_png)),
        multipart=st.booleans(),
    )
    def check(junk, flips, cut, multipart):
        corrupted = bytearray(small_png)
        for pos, mask in flips:
            corrupted[pos] ^= mask
        for body in (junk, bytes(corrupted), small_png[:cut]):
            if multipart:
                r = sample_client.post("/api/predict", files={"file": ("x.png", body, "image/png")})
            else:
                r = sample_client.post("/api/predict", content=body, headers={"content-type": "image/png"})
            assert r.status_code in (200, 415, 422), (r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["detail"]

    check()


def test_fuzzed_image_headers_are_judged_before_decoding(sample_client):
    """PNG/GIF/BMP headers claiming any size up to 65535x65535: a clean answer, and bounded memory."""
    import resource

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    def header(fmt, w, h):
        if fmt == "PNG":
            return png_claiming(w, h)
        if fmt == "GIF":
            return b"GIF89a" + struct.pack("<HH", w, h) + b"\x00\x00\x00,\x00\x00\x00\x00" + struct.pack("<HH", w, h) + b"\x00\x02\x02D\x01\x00;"
        row = (w * 3 + 3) // 4 * 4
        return (b"BM" + struct.pack("<IHHI", (54 + row * h) & 0xFFFFFFFF, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 0, 0, 0, 0)
                + b"\0" * 64)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(fmt=st.sampled_from(["PNG", "GIF", "BMP"]), w=st.integers(1, 65535), h=st.integers(1, 65535))
    def check(fmt, w, h):
        r = sample_client.post("/api/predict", content=header(fmt, w, h), headers={"content-type": "image/png"})
        assert r.status_code in (200, 415, 422), (r.status_code, r.text)
        if w * h > 16_000_000:
            assert r.status_code == 422 and "too large" in r.json()["detail"]

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, the process's peak so far
    check()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 300 * 1024, f"peak memory grew by {grown // 1024} MB"  # one 65535x65535 decode is 4 GB
