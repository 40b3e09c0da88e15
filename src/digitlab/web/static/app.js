// digitlab draw-a-digit page: draw (Pointer Events), upload/drop/paste an image or try a test digit; the answer
// follows every change. Talks to the JSON API of digitlab.web.app: GET /api/models, /api/model, /api/test-digit,
// /healthz and POST /api/predict (the pad as a small greyscale PGM raster: no PNG encoding on the way).
"use strict";

(() => {
  const SIZE = 280;                // pad units (the canvas has SIZE * devicePixelRatio-ish pixels, drawn in units)
  const STROKE = SIZE / 14;        // 20 units on 280: after scaling this is MNIST's 2-3 px pen
  const RASTER = 140;              // side of the greyscale raster sent to the server (19.6 kB, white ink on black)
  const LIVE_MS = 150;             // live answers while drawing: see "asking the server" below
  const RETRY_MS = [1000, 2000, 4000, 8000];  // server unreachable: retry after these pauses (then every 8 s)

  const $ = (id) => document.getElementById(id);
  const pad = $("pad");
  const ctx = pad.getContext("2d");
  const raster = document.createElement("canvas");
  raster.width = raster.height = RASTER;
  const rctx = raster.getContext("2d", { willReadFrequently: true });
  const dropZone = $("drop-zone");
  const fileInput = $("file");
  const undoButton = $("undo");
  const answerDigit = $("answer-digit");
  const answerDetail = $("answer-detail");
  const answerSpoken = $("answer-spoken");
  const truthLine = $("truth");
  const statusLine = $("status");
  const resultPanel = $("result");
  const barsList = $("bars");
  const input28 = $("input28");
  const input28Empty = $("input28-empty");
  const heatCtx = $("heat").getContext("2d");
  const templateCtx = $("template").getContext("2d");
  const templateFigure = $("template-figure");
  const featuresCanvas = $("features");
  const featuresFigure = $("features-figure");
  const modelInfo = $("model-info");
  const modelSelect = $("model-select");

  // ---- state: the strokes drawn plus an optional picture (upload or test digit) under them ----
  const strokes = [];              // each stroke: array of [x, y] in pad units
  let current = null;              // the stroke being drawn
  let background = null;           // {bitmap, file, digit?: {label}} (bitmap null: the browser cannot show it)
  let timer = null;                // pending live request
  let inFlight = false;
  let lastStart = -Infinity;       // performance.now() when the last request started
  let dirty = false;               // the drawing changed while a request was in flight
  let generation = 0;              // bumps on Clear/new picture, so late answers for an old drawing are dropped
  let modelId = null;              // null: the served model; else a run id from /api/models
  let retries = 0;                 // consecutive failed attempts to reach the server
  let retryTimer = null;

  // ---- probability bars: ten columns ----
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.dataset.digit = String(d);
    li.innerHTML = `<span class="pct">–</span><span class="track"><span class="fill"></span></span>` +
      `<span class="label">${d}</span>`;
    barsList.appendChild(li);
    bars.push({ li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
  }

  function showBars(probabilities) {
    const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    bars.forEach((bar, d) => {
      const p = probabilities ? probabilities[d] : null;
      bar.fill.style.height = p === null ? "0%" : `${(100 * p).toFixed(1)}%`;
      bar.pct.textContent = p === null ? "–" : `${Math.round(100 * p)}%`;
      bar.li.dataset.probability = p === null ? "" : String(p);
      bar.li.classList.toggle("top", d === best);
      bar.li.setAttribute("aria-label", p === null ? `${d}: no answer` : `${d}: ${(100 * p).toFixed(1)} percent`);
    });
  }

  function showInput(pngBase64) {
    if (pngBase64) {
      input28.src = `data:image/png;base64,${pngBase64}`;
      input28.hidden = false;
      input28Empty.hidden = true;
    } else {
      input28.removeAttribute("src");
      input28.hidden = true;
      input28Empty.hidden = false;
    }
  }

  // A 28x28 map in [-1, 1] (the heat map: gradient x input, warm where a pixel pushed towards the answer, cool
  // away; a linear model's weight template) painted on a 28x28 canvas.
  function paintMap(c, map) {
    c.clearRect(0, 0, 28, 28);
    if (!map) return;
    const img = c.createImageData(28, 28);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const v = map[y][x], i = 4 * (28 * y + x), a = Math.min(1, Math.abs(v) * 1.6);
        const [r, g, b] = v >= 0 ? [232, 89, 12] : [28, 126, 214];
        img.data[i] = r; img.data[i + 1] = g; img.data[i + 2] = b; img.data[i + 3] = Math.round(255 * a);
      }
    }
    c.putImageData(img, 0, 0);
  }

  function showHeat(map) { paintMap(heatCtx, map); }

  function showTemplate(map, digit) {
    templateFigure.hidden = !map;
    paintMap(templateCtx, map);
    $("template-digit").textContent = String(digit);
  }

  // A CNN's first-layer feature maps ({shape: [F, H, W], levels: base64 grey bytes}) as one montage canvas,
  // FEATURE_COLS maps a row, bright where a filter responds strongly; hidden for networks without a convolution layer.
  const FEATURE_COLS = 8;
  function showFeatures(maps) {
    featuresFigure.hidden = !maps;
    if (!maps) return;
    const [n, h, w] = maps.shape;
    const levels = Uint8Array.from(atob(maps.levels), (c) => c.charCodeAt(0));  // (F, H, W) bytes
    const cols = Math.min(FEATURE_COLS, n), rows = Math.ceil(n / cols);
    const W = cols * (w + 1) - 1, H = rows * (h + 1) - 1;  // one pixel of gap between maps
    if (featuresCanvas.width !== W || featuresCanvas.height !== H) {
      featuresCanvas.width = W;
      featuresCanvas.height = H;
    }
    const img = featuresCanvas.getContext("2d").createImageData(W, H);  // transparent gaps: the card shows through
    for (let k = 0; k < n; k++) {
      const x0 = (k % cols) * (w + 1), y0 = Math.floor(k / cols) * (h + 1);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          const v = levels[(k * h + y) * w + x], i = 4 * ((y0 + y) * W + x0 + x);
          img.data[i] = img.data[i + 1] = img.data[i + 2] = v;
          img.data[i + 3] = 255;
        }
      }
    }
    featuresCanvas.getContext("2d").putImageData(img, 0, 0);
    $("features-count").textContent = `(${n} maps, ${h}×${w})`;
  }

  function setAnswer(text, kind, detail) {
    answerDigit.textContent = text;
    answerDigit.classList.toggle("is-digit", kind === "digit");
    answerDigit.classList.toggle("is-unsure", kind === "unsure");
    answerDetail.textContent = detail;
  }

  function showEmpty(detail) {
    setAnswer("No digit found", "none", detail);
    showBars(null);
    showHeat(null);
    showTemplate(null, "");
    showFeatures(null);
    truthLine.hidden = true;
  }

  // Screen readers hear the answer once it is final (stroke ended, nothing more to ask), not at every live update.
  function announce() {
    const detail = answerDetail.textContent;
    answerSpoken.textContent = answerDigit.classList.contains("is-digit")
      ? `The network says ${answerDigit.textContent}, ${detail}` : `${answerDigit.textContent}. ${detail}`;
  }

  function settled() { return current === null && timer === null && !inFlight && !dirty; }

  function showAnswer(result) {
    statusLine.textContent = "";
    showInput(result.input_png);
    if (result.digit === null && !result.heatmap) {  // no ink at all
      showEmpty("Nothing that looks like ink. Draw bigger or darker.");
      return;
    }
    const [best, second] = result.top;
    if (result.digit === null) {
      const unsure = result.reason && result.reason.startsWith("not sure");
      setAnswer("?", "unsure", unsure ? `Not sure: maybe ${best.digit} or ${second ? second.digit : "…"}`
        : `That doesn't look like a digit (${result.reason}).`);
    } else {
      const runnerUp = second ? `, then ${second.digit} (${(100 * second.probability).toFixed(1)} %)` : "";
      setAnswer(String(result.digit), "digit", `${(100 * best.probability).toFixed(1)} % sure${runnerUp}`);
    }
    showBars(result.probabilities);
    showHeat(result.heatmap);
    showTemplate(result.template, best.digit);
    showFeatures(result.features);
    const truth = background && strokes.length === 0 && background.digit;
    truthLine.hidden = !truth;
    if (truth) {
      const right = result.digit === truth.label;
      truthLine.className = `truth ${right ? "right" : "wrong"}`;
      truthLine.textContent = `MNIST test digit #${truth.index}, labelled ${truth.label}: ` +
        (right ? "the model got it right" : result.digit === null ? "the model did not commit" : "the model got it wrong");
    }
  }

  // ---- the server cannot be reached: say so in the answer slot, grey the rest, retry on our own ----
  function offline(what) {
    resultPanel.classList.add("offline");
    const wait = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
    retries += 1;
    setAnswer("Offline", "none", `${what} Trying again in ${wait / 1000} s…`);
    truthLine.hidden = true;
    if (retryTimer === null) retryTimer = setTimeout(retry, wait);
  }

  function retry() {
    retryTimer = null;
    if (!isEmpty()) { predictCanvas(); return; }
    fetch("/healthz")
      .then((r) => { if (!r.ok) throw new Error(`status ${r.status}`); online(); showEmpty("Draw a digit in the box."); })
      .catch((error) => offline(`Cannot reach the server (${error.message}).`));
  }

  function online() {
    retries = 0;
    resultPanel.classList.remove("offline");
  }

  // ---- drawing: the visible pad is sharp on high-density screens (canvas pixels = CSS pixels x DPR) ----
  function colors() {
    const style = getComputedStyle(document.documentElement);
    return { pen: style.getPropertyValue("--pen").trim() || "#000", paper: style.getPropertyValue("--paper").trim() || "#fff",
      dark: matchMedia("(prefers-color-scheme: dark)").matches };
  }

  function fitCanvas() {
    const side = Math.round(pad.getBoundingClientRect().width * (window.devicePixelRatio || 1));
    if (side > 0 && pad.width !== side) { pad.width = pad.height = side; }
    redraw();
  }

  // Paints strokes and picture on a context whose unit square is SIZE: the pad (theme colours) or the raster.
  function paint(c, scale, pen, paper, forServer) {
    c.setTransform(scale, 0, 0, scale, 0, 0);
    c.fillStyle = paper;
    c.fillRect(0, 0, SIZE, SIZE);
    if (background && background.bitmap) {
      const { bitmap } = background;
      const fit = Math.min(SIZE / bitmap.width, SIZE / bitmap.height);
      const w = bitmap.width * fit, h = bitmap.height * fit;
      // a test digit is white on black; on a light pad it is shown the other way round, as the pen draws
      c.filter = !forServer && background.digit && !colors().dark ? "invert(1)" : "none";
      c.imageSmoothingEnabled = !background.digit;  // a 28x28 test digit shows its pixels
      c.drawImage(bitmap, (SIZE - w) / 2, (SIZE - h) / 2, w, h);
      c.filter = "none";
      c.imageSmoothingEnabled = true;
    }
    for (const stroke of strokes) drawStroke(c, stroke, pen);
  }

  function redraw() {
    const { pen, paper } = colors();
    paint(ctx, pad.width / SIZE, pen, paper, false);
    undoButton.disabled = isEmpty();
  }

  function drawStroke(c, points, pen) {
    c.strokeStyle = c.fillStyle = pen;
    c.lineWidth = STROKE;
    c.lineCap = "round";
    c.lineJoin = "round";
    c.beginPath();
    if (points.length === 1) {
      c.arc(points[0][0], points[0][1], STROKE / 2, 0, 2 * Math.PI);
      c.fill();
      return;
    }
    c.moveTo(points[0][0], points[0][1]);
    for (let i = 1; i < points.length; i++) c.lineTo(points[i][0], points[i][1]);
    c.stroke();
  }

  function padPoint(event) {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * (SIZE / rect.width), (event.clientY - rect.top) * (SIZE / rect.height)];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    current = [padPoint(event)];
    strokes.push(current);
    drawStroke(ctx, current, colors().pen);
    undoButton.disabled = false;
    truthLine.hidden = true;
    schedule();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    const coalesced = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    const events = coalesced.length ? coalesced : [event];
    for (const e of events) current.push(padPoint(e));
    drawStroke(ctx, current.slice(Math.max(0, current.length - events.length - 1)), colors().pen);  // the new piece
    schedule();
  });

  function endStroke() {
    if (!current) return;
    current = null;
    if (settled()) announce();  // the answer for the pad as it is may already be here
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // ---- asking the server ----
  // Live answers while drawing, throttled with a trailing edge. Every change calls schedule(): the first change
  // starts a LIVE_MS timer and later changes ride along with it. When it fires, predictCanvas() sends the pad as it
  // is then, unless a request is still in flight: then `dirty` asks for one more round once that answer is in. So
  // at most one request is in flight, a new one starts at most every LIVE_MS, and a change after the last request
  // always gets its own (trailing) request: the final answer is the answer for the pad as it is.
  function isEmpty() { return strokes.length === 0 && !background; }

  function schedule() {
    if (timer === null) timer = setTimeout(fire, LIVE_MS);
  }

  function fire() {
    const early = lastStart + LIVE_MS - performance.now();
    if (early > 0) { timer = setTimeout(fire, early); return; }
    timer = null;
    predictCanvas();
  }

  // The pad as a binary PGM (P5) raster, white ink on black, RASTER x RASTER: a real image format the server
  // decodes and checks like any upload, made synchronously in ~1 ms (canvas.toBlob PNG took 0.7-1 s).
  function padRaster() {
    paint(rctx, RASTER / SIZE, "#fff", "#000", true);
    const rgba = rctx.getImageData(0, 0, RASTER, RASTER).data;
    const head = new TextEncoder().encode(`P5\n${RASTER} ${RASTER}\n255\n`);
    const body = new Uint8Array(head.length + RASTER * RASTER);
    body.set(head);
    for (let i = 0; i < RASTER * RASTER; i++) body[head.length + i] = rgba[4 * i];  // red = grey here
    return new Blob([body], { type: "image/x-portable-graymap" });
  }

  function predictCanvas() {
    if (isEmpty()) { showInput(null); showEmpty("Draw a digit in the box."); return; }
    if (inFlight) { dirty = true; return; }
    // The picture as sent is better than its copy on the pad, as long as nothing was drawn over it.
    send(background && strokes.length === 0 ? background.file : padRaster(), generation);
  }

  function modelQuery() { return modelId === null ? "" : `?model=${encodeURIComponent(modelId)}`; }

  const FRIENDLY = {
    413: "That file is too big (the limit is 5 MB).",
    415: "That file is not an image. Try a photo or drawing as PNG, JPEG, GIF or WebP.",
    422: "That image cannot be read or used.",
  };

  // `mine` is the drawing's generation when its pixels were taken; answers for an older one are dropped.
  async function send(blob, mine) {
    inFlight = true;
    lastStart = performance.now();
    try {
      const response = await fetch(`/api/predict${modelQuery()}`, {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        body: blob,
      });
      const body = await response.json().catch(() => ({}));
      if (response.status >= 500) {
        offline(response.status === 503 ? "The server is busy." : `The server failed (${response.status}).`);
        return;
      }
      online();
      if (mine !== generation) return;
      if (!response.ok) {
        const detail = body.detail ? String(body.detail) : `The server answered ${response.status}.`;
        statusLine.textContent = FRIENDLY[response.status] ? `${FRIENDLY[response.status]} (${detail})` : detail;
        showInput(null);  // the last good 28x28 image does not belong to this picture
        showEmpty("The image could not be used.");
        return;  // the status line (role="status") already tells screen readers why
      }
      showAnswer(body);
      if (current === null && timer === null && !dirty) announce();  // the final answer for the pad as it is
    } catch (error) {
      offline(`Cannot reach the server (${error.message}).`);
    } finally {
      inFlight = false;
      if (dirty) { dirty = false; schedule(); }
    }
  }

  // ---- buttons and keys ----
  function reset() {
    strokes.length = 0;
    current = null;
    background = null;
    generation += 1;
    dirty = false;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    statusLine.textContent = "";
    answerSpoken.textContent = "";  // so the next answer is spoken even when its words are the same
  }

  function clearAll() {
    reset();
    redraw();
    showInput(null);
    showEmpty("Draw a digit in the box.");
  }

  function undo() {
    if (strokes.length) strokes.pop();
    else background = null;
    redraw();
    if (isEmpty()) clearAll(); else schedule();
  }

  $("clear").addEventListener("click", clearAll);
  undoButton.addEventListener("click", undo);
  $("upload").addEventListener("click", () => fileInput.click());

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement;
    if (typing) return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
    else if (event.key === "Escape") clearAll();
  });

  // ---- pictures: upload, drag and drop, paste, test digits ----
  async function usePicture(file, digit = null) {
    if (!file) return;
    reset();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (_) {
      // The browser cannot show it; the server still judges it (and says why if it cannot).
    }
    background = { bitmap, file, digit };
    redraw();
    predictCanvas();
  }

  fileInput.addEventListener("change", () => {
    usePicture(fileInput.files[0]);
    fileInput.value = "";
  });

  dropZone.addEventListener("dragover", (event) => {
    event.preventDefault();
    dropZone.classList.add("dragging");
  });
  dropZone.addEventListener("dragleave", () => dropZone.classList.remove("dragging"));
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropZone.classList.remove("dragging");
    usePicture(event.dataTransfer.files[0]);
  });

  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) { event.preventDefault(); usePicture(item.getAsFile()); }
  });

  $("try-digit").addEventListener("click", async () => {
    try {
      const response = await fetch("/api/test-digit");
      if (!response.ok) throw new Error(`status ${response.status}`);
      const digit = await response.json();
      const bytes = Uint8Array.from(atob(digit.image_png), (ch) => ch.charCodeAt(0));
      await usePicture(new Blob([bytes], { type: "image/png" }), { label: digit.label, index: digit.index });
    } catch (error) {
      offline(`Cannot get a test digit (${error.message}).`);
    }
  });

  // ---- models ----
  function describeModel(info) {
    const m = info.metrics || {};
    const acc = m.test_accuracy ?? m.val_accuracy;
    const parts = [`Model: ${info.recipe || "unnamed"}`];
    if (typeof acc === "number") parts.push(`${(100 * acc).toFixed(2)} % on ${info.dataset || "MNIST"} test`);
    if (info.digitlab_version) parts.push(`digitlab ${info.digitlab_version}`);
    return parts.join(" · ");
  }

  function loadModelInfo() {
    return fetch(`/api/model${modelQuery()}`)
      .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`status ${r.status}`))))
      .then((info) => { modelInfo.textContent = describeModel(info); })
      .catch((error) => { modelInfo.textContent = `Model info unavailable (${error.message}).`; });
  }

  function optionText(run) {
    const acc = run.test_accuracy ?? run.val_accuracy;
    const bits = [run.recipe || run.id];
    if (typeof acc === "number") bits.push(`${(100 * acc).toFixed(2)} %`);
    if (run.dataset && run.dataset !== "mnist") bits.push(run.dataset);
    if (run.date) bits.push(run.date.slice(0, 10));
    return bits.join(" · ");
  }

  fetch("/api/models")
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`status ${r.status}`))))
    .then(({ current: served, models }) => {
      modelSelect.replaceChildren(...models.map((run) => {
        const option = new Option(optionText(run), run.id, false, run.id === served);
        option.title = run.id;
        return option;
      }));
      modelSelect.disabled = models.length < 2;
      modelSelect.addEventListener("change", () => {
        modelId = modelSelect.value === served ? null : modelSelect.value;
        loadModelInfo();
        generation += 1;  // answers of the other model are not this one's
        if (!isEmpty()) predictCanvas();
      });
    })
    .catch(() => { modelSelect.replaceChildren(new Option("served model")); });

  loadModelInfo();
  new ResizeObserver(fitCanvas).observe(pad);
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", redraw);
  fitCanvas();
  showInput(null);
  showEmpty("Draw a digit in the box.");
})();
