// digitlab draw-a-digit page: draw (Pointer Events) or upload/drop/paste an image, show the answer live.
// Talks to the JSON API of digitlab.web.app: GET /api/model, POST /api/predict (raw image body).
"use strict";

(() => {
  const SIZE = 280;                // canvas pixels; the server scales the digit to MNIST's 20x20 box anyway
  const STROKE = SIZE / 14;        // 20 px on 280: after scaling this is MNIST's 2-3 px pen
  const LIVE_MS = 150;             // live answers while drawing: see "asking the server" below

  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const dropZone = document.getElementById("drop-zone");
  const fileInput = document.getElementById("file");
  const undoButton = document.getElementById("undo");
  const clearButton = document.getElementById("clear");
  const uploadButton = document.getElementById("upload");
  const answerDigit = document.getElementById("answer-digit");
  const answerDetail = document.getElementById("answer-detail");
  const answerSpoken = document.getElementById("answer-spoken");
  const statusLine = document.getElementById("status");
  const barsList = document.getElementById("bars");
  const input28 = document.getElementById("input28");
  const input28Empty = document.getElementById("input28-empty");
  const modelInfo = document.getElementById("model-info");

  // ---- state: the strokes drawn plus an optional uploaded picture under them ----
  const strokes = [];              // each stroke: array of [x, y] in canvas pixels
  let current = null;              // the stroke being drawn
  let background = null;           // {bitmap, file} of an uploaded image (bitmap null: the browser cannot show it)
  let timer = null;                // pending live request
  let inFlight = false;
  let lastStart = -Infinity;       // performance.now() when the last request started
  let dirty = false;               // the drawing changed while a request was in flight
  let generation = 0;              // bumps on Clear, so late answers for an old drawing are dropped

  // ---- probability bars ----
  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.dataset.digit = String(d);
    li.innerHTML = `<span class="label">${d}</span>` +
      `<span class="track"><span class="fill"></span></span><span class="pct">–</span>`;
    barsList.appendChild(li);
    bars.push({ li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
  }

  function showBars(probabilities) {
    const best = probabilities ? probabilities.indexOf(Math.max(...probabilities)) : -1;
    bars.forEach((bar, d) => {
      const p = probabilities ? probabilities[d] : null;
      bar.fill.style.width = p === null ? "0%" : `${(100 * p).toFixed(1)}%`;
      bar.pct.textContent = p === null ? "–" : `${(100 * p).toFixed(1)} %`;
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

  function showEmpty(detail) {
    answerDigit.textContent = "No digit found";
    answerDigit.classList.remove("is-digit");
    answerDetail.textContent = detail;
    showBars(null);
  }

  // Screen readers hear the answer once it is final (stroke ended, nothing more to ask), not at every live update:
  // the visual answer is not a live region, this one is.
  function announce() {
    const detail = answerDetail.textContent;
    answerSpoken.textContent = answerDigit.classList.contains("is-digit")
      ? `The network says ${answerDigit.textContent}, ${detail}` : `${answerDigit.textContent}. ${detail}`;
  }

  function settled() { return current === null && timer === null && !inFlight && !dirty; }

  function showAnswer(result) {
    statusLine.textContent = "";
    showInput(result.input_png);
    if (result.digit === null) {
      showEmpty("Nothing that looks like ink. Draw bigger or darker.");
      return;
    }
    const p = result.probabilities[result.digit];
    answerDigit.textContent = String(result.digit);
    answerDigit.classList.add("is-digit");
    const runnerUp = result.top.length > 1 ? `, then ${result.top[1].digit} (${(100 * result.top[1].probability).toFixed(1)} %)` : "";
    answerDetail.textContent = `${(100 * p).toFixed(1)} % sure${runnerUp}`;
    showBars(result.probabilities);
  }

  // ---- drawing ----
  function redraw() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, SIZE, SIZE);
    if (background && background.bitmap) {
      const { bitmap } = background;
      const scale = Math.min(SIZE / bitmap.width, SIZE / bitmap.height);
      const w = bitmap.width * scale, h = bitmap.height * scale;
      ctx.drawImage(bitmap, (SIZE - w) / 2, (SIZE - h) / 2, w, h);
    }
    for (const stroke of strokes) drawStroke(stroke);
    undoButton.disabled = strokes.length === 0 && !background;
  }

  function setPen() {
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = STROKE;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
  }

  function drawStroke(points) {
    setPen();
    if (points.length === 1) {
      ctx.beginPath();
      ctx.arc(points[0][0], points[0][1], STROKE / 2, 0, 2 * Math.PI);
      ctx.fill();
      return;
    }
    ctx.beginPath();
    ctx.moveTo(points[0][0], points[0][1]);
    for (let i = 1; i < points.length; i++) ctx.lineTo(points[i][0], points[i][1]);
    ctx.stroke();
  }

  function canvasPoint(event) {
    const rect = pad.getBoundingClientRect();
    return [(event.clientX - rect.left) * (SIZE / rect.width), (event.clientY - rect.top) * (SIZE / rect.height)];
  }

  pad.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault();
    pad.setPointerCapture(event.pointerId);
    current = [canvasPoint(event)];
    strokes.push(current);
    drawStroke(current);
    undoButton.disabled = false;
    schedule();
  });

  pad.addEventListener("pointermove", (event) => {
    if (!current) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    setPen();
    ctx.beginPath();
    let [x, y] = current[current.length - 1];
    ctx.moveTo(x, y);
    for (const e of events.length ? events : [event]) {
      [x, y] = canvasPoint(e);
      current.push([x, y]);
      ctx.lineTo(x, y);
    }
    ctx.stroke();
    schedule();
  });

  function endStroke() {
    if (!current) return;
    current = null;
    // pointerdown/move already asked for an answer; if it is already here (the pen rested before lifting), say it now.
    if (settled()) announce();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);

  // ---- asking the server ----
  // Live answers while drawing, throttled with a trailing edge. Every change calls schedule(): the first change
  // starts a LIVE_MS timer and later changes ride along with it. When it fires, predictCanvas() sends the pad as it
  // is then, unless a request is still in flight (or the pad is being encoded): then `dirty` asks for one more
  // round once that answer is in. So at most one request is in flight, while drawing a new one starts at most
  // every LIVE_MS, and a change after the last request always gets its own (trailing) request: the final answer is
  // the answer for the pad as it is. Every request, uploads included, goes through predictCanvas().
  function isEmpty() { return strokes.length === 0 && !background; }

  // The timer counts from the change, but encoding the pad takes a variable time before the request starts, so
  // when it fires it also waits out whatever is left of LIVE_MS since the last request started.
  function schedule() {
    if (timer === null) timer = setTimeout(fire, LIVE_MS);
  }

  function fire() {
    const early = lastStart + LIVE_MS - performance.now();
    if (early > 0) { timer = setTimeout(fire, early); return; }
    timer = null;
    predictCanvas();
  }

  function predictCanvas() {
    if (isEmpty()) { showInput(null); showEmpty("Draw a digit in the box."); return; }
    if (inFlight) { dirty = true; return; }
    // The uploaded file as sent is better than its copy on the pad, as long as nothing was drawn over it.
    const mine = generation;
    if (background && strokes.length === 0) { send(background.file, mine); return; }
    inFlight = true;  // toBlob is asynchronous: hold the slot from now on
    pad.toBlob((blob) => { inFlight = false; send(blob, mine); }, "image/png");
  }

  // `mine` is the drawing's generation when its pixels were taken; answers for an older one are dropped.
  async function send(blob, mine = generation) {
    if (mine !== generation) { askAgainIfChanged(); return; }
    inFlight = true;
    lastStart = performance.now();
    try {
      const response = await fetch("/api/predict", {
        method: "POST",
        headers: { "Content-Type": blob.type || "application/octet-stream" },
        body: blob,
      });
      const body = await response.json().catch(() => ({}));
      if (mine !== generation) return;
      if (!response.ok) {
        statusLine.textContent = body.detail ? String(body.detail) : `The server answered ${response.status}.`;
        showInput(null);  // the last good 28x28 image does not belong to this picture
        showEmpty("The image could not be used.");
        return;  // the status line (role="status") already tells screen readers why
      }
      showAnswer(body);
      if (current === null && timer === null && !dirty) announce();  // the final answer for the pad as it is
    } catch (error) {
      if (mine === generation) statusLine.textContent = `Cannot reach the server: ${error.message}`;
    } finally {
      inFlight = false;
      askAgainIfChanged();
    }
  }

  function askAgainIfChanged() {
    if (dirty) { dirty = false; schedule(); }
  }

  // ---- buttons and keys ----
  function clearAll() {
    strokes.length = 0;
    current = null;
    background = null;
    generation += 1;
    dirty = false;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    statusLine.textContent = "";
    answerSpoken.textContent = "";  // so the next answer is spoken even when its words are the same
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

  clearButton.addEventListener("click", clearAll);
  undoButton.addEventListener("click", undo);
  uploadButton.addEventListener("click", () => fileInput.click());

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement;
    if (typing) return;
    if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "z") { event.preventDefault(); undo(); }
    else if (event.key === "Escape") clearAll();
  });

  // ---- files: upload, drag and drop, paste ----
  async function useFile(file) {
    if (!file) return;
    statusLine.textContent = "";
    clearAll();
    let bitmap = null;
    try {
      bitmap = await createImageBitmap(file);
    } catch (_) {
      // The browser cannot show it; the server still judges it (and says why if it cannot).
    }
    // The file as sent goes to the server either way (predictCanvas), after any request still in flight.
    background = { bitmap, file };
    redraw();
    predictCanvas();
  }

  fileInput.addEventListener("change", () => {
    useFile(fileInput.files[0]);
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
    useFile(event.dataTransfer.files[0]);
  });

  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
    const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
    if (item) { event.preventDefault(); useFile(item.getAsFile()); }
  });

  // ---- model info ----
  function describeModel(info) {
    const recipe = typeof info.recipe === "string" ? info.recipe : (info.recipe && (info.recipe.name || info.recipe.recipe));
    const m = info.metrics || {};
    const acc = m.test_accuracy ?? m.accuracy ?? (m.test && m.test.accuracy) ?? m.val_accuracy;
    const parts = [`Model: ${recipe || "unnamed"}`];
    if (typeof acc === "number") parts.push(`test accuracy ${(100 * acc).toFixed(2)} %`);
    if (info.digitlab_version) parts.push(`digitlab ${info.digitlab_version}`);
    return parts.join(" · ");
  }

  fetch("/api/model")
    .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`status ${r.status}`))))
    .then((info) => { modelInfo.textContent = describeModel(info); })
    .catch((error) => { modelInfo.textContent = `Model info unavailable (${error.message}).`; });

  redraw();
  showInput(null);
  showEmpty("Draw a digit in the box.");
})();
