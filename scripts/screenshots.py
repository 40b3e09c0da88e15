"""README screenshots of the draw-a-digit page, a 7 drawn on it: desktop 1280x800 and phone 390x844 (2x).

    .venv/bin/python scripts/screenshots.py runs/cnn/model.safetensors docs/images

Serves MODEL (its run folder as the runs folder) with digitlab's own server on a free port and drives Debian's
chromium through Playwright, as tests/test_browser.py does; writes OUT/web-page.png and OUT/web-phone.png.
"""
import sys
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

import digitlab
from digitlab.commands.serve import bind_socket, make_server

model_path, out = Path(sys.argv[1]), Path(sys.argv[2])
model = digitlab.load(model_path)
sock = bind_socket("127.0.0.1", 0)
server = make_server(model, runs_dir=model_path.parent.parent, model_id=model_path.parent.name)
thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
thread.start()
while not server.started:
    time.sleep(0.05)
url = f"http://127.0.0.1:{sock.getsockname()[1]}/"


def draw_seven(page) -> None:
    """One stroke: the bar, then the leg, as fractions of the pad."""
    points = [(0.28 + 0.045 * i, 0.22) for i in range(11)] + [(0.73 - 0.03 * i, 0.22 + 0.06 * i) for i in range(1, 11)]
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


with sync_playwright() as p:
    b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox", "--disable-gpu"])
    for name, vp, scale, touch in (("web-page.png", {"width": 1280, "height": 800}, 1, False),
                                   ("web-phone.png", {"width": 390, "height": 844}, 2, True)):
        ctx = b.new_context(viewport=vp, device_scale_factor=scale, has_touch=touch, is_mobile=touch)
        pg = ctx.new_page()
        pg.goto(url)
        pg.wait_for_function("document.getElementById('model-info').textContent.startsWith('Model:')")
        draw_seven(pg)
        pg.wait_for_function("!document.getElementById('features-figure').hidden", timeout=10000)
        pg.wait_for_function("document.getElementById('answer-digit').textContent.trim() === '7'", timeout=10000)
        pg.screenshot(path=str(out / name), full_page=not touch)
        ctx.close()
    b.close()
server.should_exit = True
thread.join(timeout=10)
