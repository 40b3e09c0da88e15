"""The draw-a-digit page in a real browser: Playwright (sync API) driving Debian's chromium.

    .venv/bin/python -m pytest tests/test_browser.py -q

A real uvicorn server on 127.0.0.1 (free port, background thread; digitlab's own server settings) serves a small
model trained on the bundled mnist-sample, with a runs folder of two models to switch between, so nothing here
needs full MNIST. The tests draw with mouse or touch-like events on the canvas and read what the page shows.
Screenshots go to test-artifacts/ (web-desktop-1280.png and web-phone-390x844.png are the README's).
Skipped only when /usr/bin/chromium is missing (install it with `apt-get install -y chromium`).
"""

from __future__ import annotations

import base64
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
def runs(tmp_path_factory):
    """A runs folder: the sample-trained MLP (served), an untrained linear model and a small sample-trained CNN."""
    import sys

    from digitlab.nn.model import Classifier, build_linear

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from photolike import train_sample_cnn, train_sample_model

    folder = tmp_path_factory.mktemp("runs")
    served = train_sample_model(folder)  # folder/sample-run/model.safetensors
    other = folder / "linear-run" / "model.safetensors"
    other.parent.mkdir()
    net = build_linear(784, 10, init="glorot_normal", rng=np.random.default_rng(0))
    Classifier(net).save(other, recipe="linear", dataset="mnist-sample", metrics={"test_accuracy": 0.5})
    train_sample_cnn(folder)  # folder/cnn-run/model.safetensors
    return folder, served


@pytest.fixture(scope="module")
def served_model(runs):
    import digitlab

    return digitlab.load(runs[1])


@pytest.fixture(scope="module")
def server_url(runs, served_model):
    """http://127.0.0.1:PORT/ of digitlab's uvicorn server running the web app in a background thread."""
    from digitlab.commands.serve import bind_socket, make_server

    folder, served = runs
    sock = bind_socket("127.0.0.1", 0)
    server = make_server(served_model, runs_dir=folder, model_id=served.parent.name)
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


def ink_at(page, fx: float, fy: float) -> bool:
    """Whether the pad shows ink at fractions (fx, fy) of its size (its colour is far from the paper's corner)."""
    return page.eval_on_selector("#pad", """(c, [fx, fy]) => {
        const g = c.getContext('2d');
        const at = g.getImageData(fx * c.width, fy * c.height, 1, 1).data, paper = g.getImageData(2, 2, 1, 1).data;
        return Math.abs(at[0] - paper[0]) + Math.abs(at[1] - paper[1]) + Math.abs(at[2] - paper[2]) > 200;
    }""", [fx, fy])


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
    assert page.locator("#input28").is_visible() and page.locator("#template-figure").is_hidden()
    assert page.eval_on_selector("#input28", "img => img.naturalWidth") == 28
    # the heat map shows where the ink pushed the answer: some opaque pixels, none outside the 28x28 ink
    painted = page.eval_on_selector("#heat", "c => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)"
                                    ".filter((v, i) => i % 4 === 3 && v > 0).length")
    assert 10 < painted < 28 * 28

    page.click("#clear")
    draw_zero(page)
    expect(answer).to_have_text("0", timeout=15_000)
    assert page.locator("#model-info").text_content().startswith("Model:")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"))


def test_uploaded_image_is_answered(page, served_model, tmp_path):
    """A photo-like file (dark ink on white, bigger than 28x28) gives the answer the model gives for it."""
    from playwright.sync_api import expect
    from PIL import Image

    import digitlab.data
    from digitlab.images import predict_image

    images, labels = digitlab.data.load("mnist-sample", split="test")
    files = []
    for image, label in zip(images[:40], labels[:40]):
        img = Image.fromarray(255 - image, mode="L").resize((168, 168), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        expected = predict_image(served_model, buf.getvalue())["digit"]
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
    expect(page.locator("#status")).to_contain_text("That file is not an image. Try a photo or drawing", timeout=15_000)
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
    heights = page.eval_on_selector_all("#bars .fill", "fills => fills.map(f => f.style.height)")
    assert heights == ["0%"] * 10
    assert page.locator("#input28").is_hidden()

    # Undo takes the last stroke away: a "1" with a stray stroke, undone, is a "1" again.
    draw_one(page)
    expect(answer).to_have_text("1", timeout=15_000)
    stroke(page, [(0.2, 0.2), (0.8, 0.2)])
    assert ink_at(page, 0.3, 0.2)
    page.click("#undo")
    assert not ink_at(page, 0.3, 0.2) and ink_at(page, 0.52, 0.5)
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


def open_page(browser, server_url, **context_options):
    context = browser.new_context(**context_options)
    pg = context.new_page()
    errors = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(server_url)
    pg.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
    return context, pg, errors


def test_phone_390x844_shows_pad_answer_and_all_bars_without_scrolling(browser, server_url):
    from playwright.sync_api import expect

    context, pg, errors = open_page(browser, server_url, viewport={"width": 390, "height": 844}, device_scale_factor=3,
                                    has_touch=True, is_mobile=True)
    try:
        empty_answer = pg.locator("#answer").bounding_box()
        draw_one(pg)
        expect(pg.locator("#answer-digit")).to_have_text("1", timeout=15_000)
        assert pg.locator("#answer").bounding_box() == empty_answer, "the layout jumped when the answer arrived"
        assert pg.evaluate("document.documentElement.scrollWidth") <= 390
        pad = pg.locator("#pad").bounding_box()
        bars = pg.locator("#bars").bounding_box()
        assert pad["x"] >= 0 and pad["x"] + pad["width"] <= 390 and pad["width"] >= 300
        assert bars["y"] + bars["height"] <= 844, f"the bars end at {bars['y'] + bars['height']} px"
        for d in range(10):
            assert pg.locator(f"#bars li[data-digit='{d}']").is_visible()
        # sharp on a 3x screen: one canvas pixel per device pixel
        assert pg.eval_on_selector("#pad", "c => c.width") == round(pad["width"] * 3)
        assert pg.eval_on_selector("#pad", "c => getComputedStyle(c).touchAction") == "none"
        # hints for fingers, none about keys
        assert pg.locator(".hint-mouse").is_hidden() and "Ctrl" not in pg.locator("body").inner_text()
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "web-phone-390x844.png"))
    finally:
        context.close()
    assert errors == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_desktop_1280_layout_theme_and_favicon(browser, server_url, scheme):
    from playwright.sync_api import expect

    context, pg, errors = open_page(browser, server_url, viewport={"width": 1280, "height": 800}, color_scheme=scheme)
    try:
        draw_zero(pg)
        expect(pg.locator("#answer-digit")).to_have_text("0", timeout=15_000)
        pad, result = pg.locator(".pad-card").bounding_box(), pg.locator("#result").bounding_box()
        assert result["x"] > pad["x"] + pad["width"], "pad and answer side by side"
        assert pad["width"] + result["width"] > 900, "no large empty areas at 1280 px"
        background = pg.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        level = sum(int(v) for v in re.findall(r"\d+", background)[:3]) / 3
        assert (level < 60) if scheme == "dark" else (level > 200), background
        icon = pg.get_attribute("link[rel=icon]", "href")
        r = pg.request.get(server_url.rstrip("/") + icon)
        assert r.ok and r.headers["content-type"].startswith("image/svg+xml")
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / f"web-desktop-1280{'-dark' if scheme == 'dark' else ''}.png"))
    finally:
        context.close()
    assert errors == []


def test_the_pad_is_sent_as_a_small_raster_not_a_png(page):
    """No canvas.toBlob PNG encoding (0.7-1 s in headless chromium): the pad goes out as a 140x140 binary PGM."""
    from playwright.sync_api import expect

    page.evaluate("""() => {
        window.__bodies = [];
        const realFetch = window.fetch;
        window.fetch = async (url, options) => {
            if (String(url).includes("/api/predict")) {
                const bytes = new Uint8Array(await options.body.arrayBuffer());
                window.__bodies.push({type: options.headers["Content-Type"], size: bytes.length,
                                      head: new TextDecoder().decode(bytes.slice(0, 15))});
            }
            return realFetch(url, options);
        };
    }""")
    draw_one(page)
    expect(page.locator("#answer-digit")).to_have_text("1", timeout=15_000)
    bodies = page.evaluate("window.__bodies")
    assert bodies and all(b == {"type": "image/x-portable-graymap", "size": 15 + 140 * 140, "head": "P5\n140 140\n255\n"}
                          for b in bodies), bodies


def test_server_unreachable_says_so_greys_out_and_recovers(page):
    from playwright.sync_api import expect

    draw_one(page)
    expect(page.locator("#answer-digit")).to_have_text("1", timeout=15_000)
    page.route("**/api/predict*", lambda route: route.abort())
    stroke(page, [(0.3, 0.3), (0.35, 0.3)])  # a change while the server is gone
    expect(page.locator("#answer-digit")).to_have_text("Offline", timeout=15_000)
    expect(page.locator("#answer-detail")).to_contain_text("Cannot reach the server")
    expect(page.locator("#result")).to_have_class(re.compile(r"\boffline\b"))
    assert page.eval_on_selector("#bars", "b => getComputedStyle(b).opacity") == "0.35"
    page.unroute("**/api/predict*")  # back: the page retries on its own and answers the current drawing
    expect(page.locator("#result")).not_to_have_class(re.compile(r"\boffline\b"), timeout=20_000)
    expect(page.locator("#answer-digit")).not_to_have_text("Offline")


def test_a_dot_gets_an_honest_not_a_digit(page):
    from playwright.sync_api import expect

    stroke(page, [(0.12, 0.12), (0.13, 0.12)])  # a dot in a corner
    expect(page.locator("#answer-detail")).to_contain_text("That doesn't look like a digit (", timeout=15_000)
    expect(page.locator("#answer-digit")).to_have_text("?")
    assert all(p != "" for p in shown_probabilities(page))  # the model's probabilities are still shown


def test_try_a_test_digit_shows_its_label_and_whether_the_model_got_it(page):
    from playwright.sync_api import expect

    page.click("#try-digit")
    truth = page.locator("#truth")
    expect(truth).to_contain_text("MNIST test digit #", timeout=15_000)
    label = int(re.search(r"labelled (\d)", truth.text_content()).group(1))
    answer = page.locator("#answer-digit").text_content()
    if answer == str(label):
        expect(truth).to_contain_text("the model got it right")
        expect(truth).to_have_class(re.compile(r"\bright\b"))
    else:
        expect(truth).to_contain_text("the model")
        expect(truth).to_have_class(re.compile(r"\bwrong\b"))
    assert page.locator("#undo").is_enabled()
    stroke(page, [(0.1, 0.9), (0.2, 0.9)])  # drawing over it: the label no longer describes the pad
    expect(truth).to_be_hidden()


def test_the_model_can_be_switched(page):
    from playwright.sync_api import expect

    select = page.locator("#model-select")
    assert select.is_enabled()
    options = page.eval_on_selector_all("#model-select option", "os => os.map(o => [o.value, o.textContent])")
    ids = [v for v, _ in options]
    assert sorted(ids) == ["cnn-run", "linear-run", "sample-run"] and ids[-1] == "linear-run"  # most accurate first
    assert select.input_value() == "sample-run" and "mnist-sample" in options[0][1]
    draw_one(page)
    expect(page.locator("#answer-digit")).to_have_text("1", timeout=15_000)
    with page.expect_request("**/api/predict?model=linear-run") as request:
        select.select_option("linear-run")
    assert request.value.url.endswith("?model=linear-run")
    expect(page.locator("#model-info")).to_contain_text("linear", timeout=15_000)
    # a linear model also shows the answer's weight template (the MLP has none)
    expect(page.locator("#template-figure")).to_be_visible(timeout=15_000)
    select.select_option("sample-run")
    expect(page.locator("#template-figure")).to_be_hidden(timeout=15_000)


READ_FEATURES = """c => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    return {width: c.width, height: c.height, red: Array.from(d.filter((_, i) => i % 4 === 0)),
            alpha: Array.from(d.filter((_, i) => i % 4 === 3))};
}"""


def test_a_cnn_shows_its_first_layer_feature_maps_and_an_mlp_does_not(page):
    """The CNN's answer comes with its first conv layer's maps, painted as one montage (6 maps of 24x24 in a row,
    one transparent pixel between them), grey level = the API's value; the MLP's figure stays hidden."""
    from playwright.sync_api import expect

    figure = page.locator("#features-figure")
    draw_one(page)
    expect(page.locator("#answer-digit")).to_have_text("1", timeout=15_000)
    assert figure.is_hidden()  # the served MLP has no conv layer
    with page.expect_response(lambda r: "/api/predict?model=cnn-run" in r.url) as response:
        page.locator("#model-select").select_option("cnn-run")
    features = response.value.json()["features"]
    maps = np.frombuffer(base64.b64decode(features["levels"]), np.uint8).reshape(features["shape"])  # grey levels
    assert maps.shape == (6, 24, 24)
    expect(figure).to_be_visible(timeout=15_000)
    expect(figure).to_contain_text("What the first layer sees (6 maps, 24×24)")
    shown = page.eval_on_selector("#features", READ_FEATURES)
    assert (shown["width"], shown["height"]) == (6 * 25 - 1, 24)
    red = np.array(shown["red"]).reshape(24, -1)  # (24, 149)
    alpha = np.array(shown["alpha"]).reshape(24, -1)
    tiles = np.stack([red[:, k * 25 : k * 25 + 24] for k in range(6)])  # (6, 24, 24)
    assert np.array_equal(tiles, maps)
    assert np.all(alpha[:, 24::25] == 0) and np.all(np.delete(alpha, np.s_[24::25], axis=1) == 255)
    # the montage is laid out in the answer card, below the bars, and is drawn big enough to see
    box, bars = figure.bounding_box(), page.locator("#bars").bounding_box()
    canvas = page.locator("#features").bounding_box()
    assert box["y"] > bars["y"] + bars["height"] and canvas["width"] >= 2 * shown["width"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-cnn-feature-maps.png"), full_page=True)
    page.locator("#model-select").select_option("sample-run")
    expect(figure).to_be_hidden(timeout=15_000)
    expect(page.locator("#answer-digit")).to_have_text("1", timeout=15_000)


def test_a_run_report_html_opens_on_its_own(browser, sample_model):
    """report.html from file://: every figure decodes, no console errors, no request for anything but the page."""
    from playwright.sync_api import expect

    from digitlab import plots

    report = sample_model.model_path.parent / "report.html"
    figures = re.findall(r"^!\[[^]]*\]\(([^)]+\.png)\)$", (report.parent / "report.md").read_text(), re.M)
    context = browser.new_context(viewport={"width": 1000, "height": 760})
    pg = context.new_page()
    problems, requests = [], []
    pg.on("pageerror", lambda exc: problems.append(str(exc)))
    pg.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
    pg.on("request", lambda req: None if req.url.startswith("data:") else requests.append(req.url))
    try:
        pg.goto(report.as_uri())
        pg.wait_for_function("Array.from(document.images).every(img => img.complete)")
        shown = pg.eval_on_selector_all("img", "imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight, i.alt])")
        assert len(figures) >= 3 and len(shown) == len(figures)
        kinds = {"curves.png": "curves", "weights.png": "units", "confusion.png": "confusion",
                 "mistakes.png": "mistakes"}  # an MLP's weights.png is its first-layer units
        assert [tuple(s[:2]) for s in shown] == [plots.FIGURE_PIXELS[kinds[f]] for f in figures]
        expect(pg.locator("h1")).to_have_text(f"Run report: {report.parent.name}")
        headings = pg.locator("h2").all_text_contents()
        for heading in ("Verdict", "Metrics", "Per-class accuracy (test set)", "Figures"):
            assert heading in headings, headings
        verdict = pg.locator("h2:text-is('Verdict') + p").text_content()
        assert re.match(r"^(ok|MISSED): \d+\.\d\d % test accuracy; target ≥ \d+\.\d\d %\.$", verdict), verdict
        assert pg.locator("table").count() >= 2
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "report-html.png"), full_page=True)
    finally:
        context.close()
    assert problems == [], f"errors on the report page: {problems}"
    assert requests == [report.as_uri()], f"the report asked for more than itself: {requests}"


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
        expect(pg.locator('.opblock-summary-path[data-path="/api/model"]')).to_be_visible()
        expect(pg.locator('.opblock-summary-path[data-path="/api/models"]')).to_be_visible()
        assert pg.evaluate("typeof SwaggerUIBundle") == "function"
        ARTIFACTS.mkdir(exist_ok=True)
        pg.screenshot(path=str(ARTIFACTS / "web-docs.png"), full_page=True)
    finally:
        context.close()
    assert foreign == [], f"the docs page asked for other hosts: {foreign}"
    assert errors == [], f"JavaScript errors on the docs page: {errors}"
