"""The web app's JSON API through FastAPI's TestClient, plus `digitlab serve` itself.

    .venv/bin/python -m pytest tests/test_web_api.py -q

Uses the session's real trained model (`trained_mlp`) and real MNIST test digits rendered as PNG files.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
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

import numpy as np
import pytest

LIMIT = 5 * 1024 * 1024


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


@pytest.fixture(scope="module")
def client(model):
    from digitlab.web import create_app

    with warnings.catch_warnings():  # starlette warns that its TestClient runs on httpx; not our business
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient
    with TestClient(create_app(model)) as c:
        yield c


@pytest.fixture(scope="module")
def digits(mnist_dir):
    """64 MNIST test digits (uint8 [64, 28, 28]) and their labels."""
    import digitlab.data

    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir)
    return np.asarray(images[:64]), np.asarray(labels[:64], dtype=np.int64)


# ---------- happy path ----------

def test_page_and_static_files_are_served(client):
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


def test_blank_canvas_gives_no_digit(client):
    for value in (0, 255):
        blank = np.full((70, 70), value, dtype=np.uint8)
        r = client.post("/api/predict", content=png_bytes(blank), headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["digit"] is None


def test_model_info_and_health(client, model):
    info = client.get("/api/model").json()
    assert info["class_names"] == list(model.class_names) and len(info["class_names"]) == 10
    assert info["recipe"] == model.metadata["recipe"]
    assert info["metrics"] == model.metadata["metrics"]
    assert info["digitlab_version"] == model.metadata["digitlab_version"]
    assert client.get("/healthz").json() == {"status": "ok"}


def test_openapi_docs_describe_the_api(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/png" in body
    assert "file" in body["multipart/form-data"]["schema"]["properties"]
    assert {"413", "415", "422"} <= set(spec["paths"]["/api/predict"]["post"]["responses"])


def test_docs_page_loads_only_local_assets(client):
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

def test_declared_oversize_upload_is_refused(client):
    r = client.post("/api/predict", content=b"\0" * (LIMIT + 1), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "5 MB" in r.json()["detail"]


def test_streamed_oversize_upload_without_length_is_refused(client):
    def chunks():  # chunked transfer: no Content-Length at all
        for _ in range(LIMIT // 65536 + 10):
            yield b"\x89PNG" + b"\0" * 65532

    r = client.post("/api/predict", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


@pytest.mark.parametrize("multipart", [False, True])
def test_lying_content_length_stops_reading_at_the_limit(model, multipart):
    """An endless body under a small Content-Length: the app answers 413 after reading just past the limit."""
    from digitlab.web import create_app

    limit = 100_000
    app = create_app(model, max_upload_bytes=limit)
    chunk = b"x" * 4096
    pulled = 0
    sent = []

    async def receive():
        nonlocal pulled
        pulled += len(chunk)
        if pulled > 50 * limit:  # the app kept reading: end it so the test fails instead of hanging
            return {"type": "http.request", "body": b"", "more_body": False}
        if multipart and pulled == len(chunk):
            head = b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
            return {"type": "http.request", "body": head + chunk[len(head):], "more_body": True}
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    content_type = b"multipart/form-data; boundary=XyZ" if multipart else b"image/png"
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/api/predict", "raw_path": b"/api/predict", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"test"), (b"content-length", b"1000"), (b"content-type", content_type)],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 413
    assert pulled <= limit + 2 * len(chunk)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"hello, this is text", "text/plain", 415, "not an image"),
        (b'{"image": [0, 1, 2]}', "application/json", 415, "not an image"),
        (b"", "image/png", 422, "empty"),
    ],
)
def test_bad_bodies_are_refused_with_a_message(client, body, content_type, status, words):
    r = client.post("/api/predict", content=body, headers={"content-type": content_type})
    assert r.status_code == status
    assert words in r.json()["detail"]


def test_broken_images_are_refused_with_a_message(client, digits):
    good = png_bytes(digits[0][0], scale=10)
    for broken in (good[: len(good) // 2], good[:60] + b"\0" * 200):
        r = client.post("/api/predict", content=broken, headers={"content-type": "image/png"})
        assert r.status_code in (415, 422), r.text
        assert r.json()["detail"]
    r = client.post("/api/predict", files={"file": ("a.png", good[: len(good) // 2], "image/png")})
    assert r.status_code in (415, 422)


@pytest.mark.parametrize("side", [50_000, 10_000])  # past Pillow's error limit; past its warning limit only
def test_decompression_bomb_is_refused_without_decoding(client, side):
    bomb = png_claiming(side, side)
    assert len(bomb) < 200
    started = time.monotonic()
    for r in (client.post("/api/predict", content=bomb, headers={"content-type": "image/png"}),
              client.post("/api/predict", files={"file": ("bomb.png", bomb, "image/png")})):
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert "too large" in detail and f"{side}×{side}" in detail and "decompression bomb" in detail, detail
    assert time.monotonic() - started < 5  # refused from the header: 2.5 G pixels were never allocated


def test_multipart_without_file_field_is_refused(client, digits):
    r = client.post("/api/predict", files={"image": ("a.png", png_bytes(digits[0][0]), "image/png")})
    assert r.status_code == 422 and '"file"' in r.json()["detail"]
    r = client.post("/api/predict", data={"file": "not a file"}, files={"other": ("a.txt", b"x", "text/plain")})
    assert r.status_code == 422 and '"file"' in r.json()["detail"]
    r = client.post("/api/predict", data={"file": "a form, not an image"})  # urlencoded body
    assert r.status_code == 415


def test_no_request_path_reaches_the_file_system(client):
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


# ---------- digitlab serve ----------

def test_newest_model_picks_the_latest_run(tmp_path):
    from digitlab.commands.serve import newest_model

    assert newest_model(tmp_path / "missing") is None
    assert newest_model(tmp_path) is None
    for name, age_s in (("b-run", 30), ("a-run", 10), ("c-run", 20)):
        f = tmp_path / name / "model.safetensors"
        f.parent.mkdir()
        f.write_bytes(b"x")
        os.utime(f, (time.time() - age_s, time.time() - age_s))
    (tmp_path / "d-run").mkdir()  # a run without a model is ignored
    assert newest_model(tmp_path) == tmp_path / "a-run" / "model.safetensors"


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


def test_serve_trains_a_model_when_runs_is_empty(trained_mlp, digits, tmp_path, monkeypatch, capsys):
    """`digitlab serve` with no MODEL and no run trains the default recipe into --runs-dir, then serves that model.

    The training is faked (it copies the session's trained model) and so is uvicorn (serve_socket records what it
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
        shutil.copyfile(trained_mlp.model_path, model_path)
        trained.append({"name": name, "out_dir": out_dir, "quiet": quiet})
        return type("FakeResult", (), {"model_path": model_path})()

    def fake_serve_socket(model, sock):
        served.append((model, sock.getsockname()))
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
    images, _ = digits
    expected = digitlab.load(trained_mlp.model_path).predict(images[:16])
    assert np.array_equal(model.predict(images[:16]), expected)

    # a second start finds that run and trains nothing
    assert main(["serve", "--runs-dir", str(runs), "--port", "0", "--json"]) == 0
    assert len(trained) == 1 and len(served) == 2
    assert json.loads(capsys.readouterr().out)["model"] == str(model_path)


def test_serve_command_serves_a_model(trained_mlp, tmp_path):
    """`digitlab serve MODEL --port 0 --json` prints its URL and answers over real HTTP until terminated."""
    import httpx

    cmd = [sys.executable, "-m", "digitlab", "serve", str(trained_mlp.model_path), "--port", "0", "--json"]
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
        assert httpx.get(started["url"], timeout=5).text.count("<canvas") == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------- hostile bytes never crash the server ----------

@pytest.fixture(scope="module")
def small_png(digits):
    return png_bytes(digits[0][0], scale=2)


def test_random_and_corrupted_bodies_get_a_clear_answer(client, small_png):
    """Random bytes and bit-flipped PNGs: 200, 415 or 422 with a message, never a 500."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        junk=st.binary(max_size=512),
        flips=st.lists(st.tuples(st.integers(0, len(small_png) - 1), st.integers(1, 255)), max_size=6),
        cut=st.integers(0, len(small_png)),
    )
    def check(junk, flips, cut):
        corrupted = bytearray(small_png)
        for pos, mask in flips:
            corrupted[pos] ^= mask
        for body in (junk, bytes(corrupted), small_png[:cut]):
            r = client.post("/api/predict", content=body, headers={"content-type": "image/png"})
            assert r.status_code in (200, 415, 422), (r.status_code, r.text)
            if r.status_code != 200:
                assert r.json()["detail"]

    check()
