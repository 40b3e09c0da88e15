"""The draw-a-digit page in a real browser: Playwright (sync API) driving Debian's chromium.

    .venv/bin/python -m pytest tests/test_browser.py -q

A real uvicorn server on 127.0.0.1 (free port, background thread) serves the session's trained model. The tests
draw with mouse events on the canvas and read what the page shows. Screenshots go to test-artifacts/.
Skipped only when /usr/bin/chromium is missing (install it with `apt-get install -y chromium`).
"""

from __future__ import annotations

import io
import math
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def server_url(trained_mlp):
    """http://127.0.0.1:PORT/ of a uvicorn server running the web app in a background thread."""
    import uvicorn

    from digitlab.commands.serve import bind_socket
    from digitlab.web import create_app

    sock = bind_socket("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(create_app(trained_mlp.model), log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser, server_url, request):
    context = browser.new_context(viewport={"width": 1000, "height": 760}, device_scale_factor=1)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server_url)
    pg.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
    yield pg
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"web-{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def stroke(page, points) -> None:
    """Draw one stroke through `points` given as fractions (0..1) of the canvas box."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def draw_one(page) -> None:
    stroke(page, [(0.52, 0.15 + 0.07 * i) for i in range(11)])


def draw_zero(page) -> None:
    n = 36
    stroke(page, [(0.5 + 0.22 * math.sin(2 * math.pi * i / n), 0.5 - 0.33 * math.cos(2 * math.pi * i / n))
                  for i in range(n + 2)])


DROP_OR_PASTE = """({bytes, event}) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([new Uint8Array(bytes)], "digit.png", {type: "image/png"}));
    if (event === "drop") {
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    } else {
        document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true}));
    }
}"""


def pad_pixel(page, fx: float, fy: float) -> int:
    """The red value (0..255) of the pad's pixel at fractions (fx, fy) of its size."""
    return page.eval_on_selector(
        "#pad", "(c, [fx, fy]) => c.getContext('2d').getImageData(fx * c.width, fy * c.height, 1, 1).data[0]", [fx, fy]
    )


def shown_probabilities(page) -> list[str]:
    return page.eval_on_selector_all("#bars li", "items => items.map(li => li.dataset.probability)")


def test_drawn_one_and_zero_are_recognised(page):
    from playwright.sync_api import expect

    answer = page.locator("#answer-digit")
    expect(answer).to_have_text("No digit found")
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    probs = [float(p) for p in shown_probabilities(page)]
    assert len(probs) == 10 and int(np.argmax(probs)) == 1 and abs(sum(probs) - 1) < 1e-3
    assert page.locator("#input28").is_visible()
    assert page.eval_on_selector("#input28", "img => img.naturalWidth") == 28

    page.click("#clear")
    draw_zero(page)
    expect(answer).to_have_text("0", timeout=15_000)
    assert page.locator("#model-info").text_content().startswith("Model:")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"))


def test_uploaded_image_is_answered(page, trained_mlp, mnist_dir, tmp_path):
    """A photo-like file (dark ink on white, bigger than 28x28) gives the answer the model gives for it."""
    from playwright.sync_api import expect
    from PIL import Image

    import digitlab.data
    from digitlab.images import predict_image

    images, labels = digitlab.data.load("mnist", split="test", data_dir=mnist_dir, quiet=True)
    files = []
    for image, label in zip(images[:20], labels[:20]):
        img = Image.fromarray(255 - image, mode="L").resize((168, 168), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        expected = predict_image(trained_mlp.model, buf.getvalue())["digit"]
        if expected == int(label) and int(label) not in [lab for _, lab in files]:
            files.append((buf.getvalue(), int(label)))  # one file per digit, so each answer below is fresh
    assert len(files) >= 3, "the model misreads most MNIST test digits"
    answer = page.locator("#answer-digit")
    data, label = files[0]
    path = tmp_path / f"digit-{label}.png"
    path.write_bytes(data)
    page.set_input_files("#file", str(path))
    expect(answer).to_have_text(str(label), timeout=15_000)

    # the same file dropped on the pad, then pasted: other digits, so each answer is fresh
    for (data, label), event in ((files[1], "drop"), (files[2], "paste")):
        page.evaluate(DROP_OR_PASTE, {"bytes": list(data), "event": event})
        expect(answer).to_have_text(str(label), timeout=15_000)

    page.set_input_files("#file", files={"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    expect(page.locator("#status")).to_contain_text("not an image", timeout=15_000)
    # the refused file leaves no trace of the previous answer: no digit, no bars, no 28x28 image
    expect(answer).to_have_text("No digit found")
    assert shown_probabilities(page) == [""] * 10
    assert page.locator("#input28").is_hidden()


def test_clear_undo_and_keyboard(page):
    from playwright.sync_api import expect

    answer = page.locator("#answer-digit")
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    assert all(p != "" for p in shown_probabilities(page))

    page.click("#clear")
    expect(answer).to_have_text("No digit found")
    assert shown_probabilities(page) == [""] * 10
    widths = page.eval_on_selector_all("#bars .fill", "fills => fills.map(f => f.style.width)")
    assert widths == ["0%"] * 10
    assert page.locator("#input28").is_hidden()

    # Undo takes the last stroke away: a "1" with a stray stroke, undone, is a "1" again.
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    stroke(page, [(0.2, 0.2), (0.8, 0.2)])
    assert pad_pixel(page, 0.3, 0.2) == 255
    page.wait_for_timeout(400)
    page.click("#undo")
    assert pad_pixel(page, 0.3, 0.2) == 0 and pad_pixel(page, 0.52, 0.5) == 255
    expect(answer).to_have_text("1", timeout=15_000)

    # Keyboard: the buttons are reachable with Tab, Enter presses them, Ctrl+Z undoes, Escape clears.
    page.focus("#undo")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "clear"
    page.keyboard.press("Enter")
    expect(answer).to_have_text("No digit found")
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    page.keyboard.press("Control+z")
    expect(answer).to_have_text("No digit found")
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    page.keyboard.press("Escape")
    expect(answer).to_have_text("No digit found")


TRACK_REQUESTS = """() => {
    // Wraps fetch to log when each /api/predict starts and ends, and logs pointer events on the pad.
    window.__log = {requests: [], pointer: [], inFlight: 0, maxInFlight: 0};
    const realFetch = window.fetch;
    window.fetch = async (url, options) => {
        if (!String(url).includes("/api/predict")) return realFetch(url, options);
        const entry = {start: performance.now(), end: null};
        window.__log.requests.push(entry);
        window.__log.maxInFlight = Math.max(window.__log.maxInFlight, ++window.__log.inFlight);
        try { return await realFetch(url, options); }
        finally { window.__log.inFlight -= 1; entry.end = performance.now(); }
    };
    for (const type of ["pointerdown", "pointermove"]) {  // the changes to the pad
        document.addEventListener(type, () => window.__log.pointer.push(performance.now()), true);
    }
}"""


def test_live_answer_is_throttled_and_ends_with_the_last_change(page):
    """While drawing the answer updates live (one request at a time, at most one per ~150 ms); the last change
    always gets a request of its own; screen readers hear the answer once, after the stroke, not mid-stroke."""
    from playwright.sync_api import expect

    page.evaluate(TRACK_REQUESTS)
    spoken = page.locator("#answer-spoken")
    assert page.get_attribute("#answer", "aria-live") is None  # the visual answer changes too often to be live
    assert page.get_attribute("#answer-spoken", "aria-live") == "polite"

    box = page.locator("#pad").bounding_box()
    at = lambda fx, fy: (box["x"] + fx * box["width"], box["y"] + fy * box["height"])  # noqa: E731
    page.mouse.move(*at(0.52, 0.15))
    page.mouse.down()
    for i in range(1, 11):  # a slow stroke: about 1.5 s, so several live answers come in while the button is down
        page.mouse.move(*at(0.52, 0.15 + 0.07 * i), steps=3)
        page.wait_for_timeout(150)
    expect(page.locator("#answer-digit")).to_have_class(re.compile(r"\bis-digit\b"), timeout=15_000)
    assert spoken.text_content() == "", "the screen-reader answer was updated in the middle of a stroke"
    # a quick last wiggle, then lift: these changes come after the last live request
    for i in range(6):
        page.mouse.move(*at(0.50 + 0.01 * (i % 2), 0.85), steps=2)
    page.mouse.up()
    expect(spoken).to_have_text(re.compile(r"^The network says 1, [\d.]+ % sure"), timeout=15_000)
    page.wait_for_timeout(500)  # nothing more should be asked after the final answer
    log = page.evaluate("window.__log")
    starts = [r["start"] for r in log["requests"]]
    assert len(starts) >= 3, f"too few live requests while drawing: {log}"
    assert log["maxInFlight"] == 1, f"requests overlapped: {log}"
    assert min(b - a for a, b in zip(starts, starts[1:])) >= 140, f"requests closer than 150 ms: {starts}"
    assert starts[-1] >= max(log["pointer"]), "the last change on the pad was never sent"
    assert len(starts) <= 2 + (max(log["pointer"]) - min(log["pointer"])) / 150 + 2


def test_phone_width_has_no_horizontal_scrolling(browser, server_url):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, has_touch=True)
    pg = context.new_page()
    try:
        pg.goto(server_url)
        pg.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
        draw_one(pg)
        expect(pg.locator("#answer-digit")).to_have_text("1", timeout=15_000)
        assert pg.evaluate("document.documentElement.scrollWidth") <= 360
        box = pg.locator("#pad").bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360 and box["width"] >= 250
        assert pg.eval_on_selector("#pad", "c => getComputedStyle(c).touchAction") == "none"
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "web-phone-360.png"), full_page=True)
    finally:
        context.close()


def test_api_docs_render_offline(browser, server_url):
    """/docs is Swagger UI from our own /docs-static/ files (no CDN: chromium runs without background networking)."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1000, "height": 760})
    pg = context.new_page()
    errors, foreign = [], []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.on("request", lambda req: None if req.url.startswith((server_url, "data:", "blob:")) else foreign.append(req.url))
    try:
        pg.goto(server_url + "docs")
        expect(pg.locator(".swagger-ui .info .title")).to_contain_text("digitlab", timeout=15_000)
        expect(pg.locator(".opblock-summary-path", has_text="/api/predict")).to_be_visible()
        expect(pg.locator(".opblock-summary-path", has_text="/api/model")).to_be_visible()
        assert pg.evaluate("typeof SwaggerUIBundle") == "function"
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "web-docs.png"), full_page=True)
    finally:
        context.close()
    assert foreign == [], f"the docs page asked for other hosts: {foreign}"
    assert errors == [], f"JavaScript errors on the docs page: {errors}"
