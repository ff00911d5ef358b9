// detserve's page: send an image to POST /api/ once, then draw and filter the answer here.
// Plain script, no framework and no build step; it talks only to the server that served it.
"use strict";

(() => {
  // Asked once with a low threshold; the slider filters in the page without a new request.
  // Greedy NMS never lets a weaker box remove a stronger one, so filtering at 0.3 here shows
  // exactly what the server answers at its own 0.3. A server that ignores the option answers
  // at its default, which the slider's starting position matches.
  const REQUEST_CONFIDENCE = 0.05;
  const STATUS_INTERVAL_MS = 3000;
  const STATUS_MAX_INTERVAL_MS = 30000;
  // What a person chose stays for the tab (a reload keeps it, another tab starts afresh).
  const MODEL_KEY = "detserve.model";
  const NMS_MODE_KEY = "detserve.nms_mode";
  const LABEL_FONT_PX = 13;  // CSS pixels: legible whatever the image's own size
  // Dark enough for white label text; a class keeps its colour unless two present classes collide.
  const PALETTE = ["#d1242f", "#0969da", "#1a7f37", "#8250df", "#bf3989", "#bc4c00", "#0a7ea4",
                   "#6639ba", "#9a6700", "#116329", "#a40e26", "#0550ae", "#953800", "#57606a"];

  const $ = (id) => document.getElementById(id);
  const state = {
    answer: null, detections: [], hiddenClasses: new Set(), colours: new Map(),
    apiKey: null,          // only in this variable: never localStorage, cookies or the URL
    pendingImage: null,    // what to resend after the key is given or on retry
    imageUrl: null, requestSeq: 0,
  };

  // -- choosing an image -------------------------------------------------------------------
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) submit(file, file.name);
    event.target.value = "";  // choosing the same file again still submits
  });

  const dropzone = $("dropzone");
  // Dropping anywhere works; without this the browser would navigate away to the file.
  document.addEventListener("dragover", (event) => { event.preventDefault(); dropzone.classList.add("over"); });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) dropzone.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) submit(file, file.name);
    else showError("Nothing to detect", "The drop held no file. Drop an image file (JPEG or PNG).");
  });

  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? [...event.clipboardData.items] : [];
    const item = items.find((i) => i.kind === "file");
    if (item) {
      event.preventDefault();
      submit(item.getAsFile(), "pasted image");
    }
  });

  for (const button of document.querySelectorAll("button[data-sample]")) {
    button.addEventListener("click", async () => {
      try {
        const response = await fetch(button.dataset.sample);
        if (!response.ok) throw new Error(`HTTP ${response.status}`);
        submit(await response.blob(), button.dataset.sample.split("/").pop());
      } catch (err) {
        showError("Could not load the sample", String(err.message || err));
      }
    });
  }

  // -- how to ask: the model and the NMS mode ---------------------------------------------------
  function remembered(key) {
    try { return sessionStorage.getItem(key); } catch (_) { return null; }  // storage may be disabled
  }

  function remember(key, value) {
    try { sessionStorage.setItem(key, value); } catch (_) { /* the choice then lasts until a reload */ }
  }

  // The list comes from the server, so it names exactly what this server serves. Until it has
  // come (or if it cannot), the one option is "the server's default": no model is sent.
  async function loadModels() {
    let models;
    try {
      const response = await fetch("/api/models", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      models = await response.json();
      if (!Array.isArray(models) || !models.length) throw new Error("no models listed");
    } catch (_) {
      $("model-note").textContent = "The server did not list its models; its default model answers.";
      $("model-note").hidden = false;
      return;
    }
    const select = $("model");
    const wanted = remembered(MODEL_KEY);
    const chosen = models.some((m) => m.name === wanted) ? wanted : (models.find((m) => m.default) || models[0]).name;
    select.replaceChildren(...models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} (${m.input_size_px} px${m.default ? ", default" : ""})`;
      return option;
    }));
    select.value = chosen;
    select.dataset.loaded = String(models.length);
  }

  $("model").addEventListener("change", () => {
    remember(MODEL_KEY, $("model").value);
    resubmit();
  });

  // Always sent, so the switch says what was asked (a server's --nms-mode is its API clients' default).
  function nmsMode() {
    return document.querySelector("input[name='nms-mode']:checked").value;
  }

  for (const radio of document.querySelectorAll("input[name='nms-mode']")) {
    if (radio.value === remembered(NMS_MODE_KEY)) radio.checked = true;
    radio.addEventListener("change", () => {
      remember(NMS_MODE_KEY, nmsMode());
      resubmit();
    });
  }

  // A new choice is asked of the server at once, for the image shown (or refused) last.
  function resubmit() {
    if (state.pendingImage) submit(state.pendingImage.blob, state.pendingImage.name);
  }

  // -- asking the server ---------------------------------------------------------------------
  async function submit(blob, name) {
    const seq = ++state.requestSeq;
    state.pendingImage = { blob, name };
    hideMessage();
    clearResult();  // what is shown always belongs to the image chosen last
    $("busy").hidden = false;
    const imageId = `page-${Date.now().toString(36)}-${seq}`;
    // The server decides what it accepts (415 in words for anything else).
    const headers = { "Content-Type": blob.type || "application/octet-stream" };
    if (state.apiKey) headers.Authorization = `Bearer ${state.apiKey}`;
    const model = $("model").value;  // "" until the list came: the server's default
    const url = `/api/?id=${encodeURIComponent(imageId)}&confidence=${REQUEST_CONFIDENCE}` +
      (model ? `&model=${encodeURIComponent(model)}` : "") + `&nms_mode=${nmsMode()}`;
    const startedMs = performance.now();
    let response, text;
    try {
      response = await fetch(url, { method: "POST", headers, body: blob, cache: "no-store" });
      text = await response.text();
    } catch (err) {
      if (seq !== state.requestSeq) return;
      $("busy").hidden = true;
      return showError("Could not reach the server",
        `${err.message || err}. The server may be down, or it refused ${name} ` +
        `(${formatBytes(blob.size)}) before reading it all: a body over its size limit ` +
        "(20 MB by default) is refused that way.", true);
    }
    const roundTripMs = performance.now() - startedMs;
    if (seq !== state.requestSeq) return;  // a newer image was chosen meanwhile
    $("busy").hidden = true;
    let payload = null;
    try { payload = JSON.parse(text); } catch (_) { /* shown as text below */ }

    if (response.status === 401) return askForKey(payload);
    if (!response.ok || !payload || !Array.isArray(payload.detections)) {
      return showHttpError(response, payload, text, name);
    }
    $("key-form").hidden = true;
    try {
      await showImage(blob);
    } catch (_) {
      return showError("The browser cannot show this image",
        `The server found ${payload.detections.length} detection(s), listed on the right, ` +
        "but this browser could not decode the picture to draw them.");
    }
    state.answer = payload;
    state.detections = payload.detections;
    assignColours();
    showTiming(response, roundTripMs);
    showAnsweringModel(response);
    $("json").textContent = JSON.stringify(payload, null, 2);
    $("caption").textContent = `${name}: ${$("image").naturalWidth} x ${$("image").naturalHeight} px`;
    render();
  }

  function clearResult() {
    state.answer = null;
    state.detections = [];
    $("figure").hidden = true;
    $("detections").tBodies[0].replaceChildren();
    for (const label of $("classes").querySelectorAll("label")) label.remove();
    $("classes").dataset.labels = "";
    $("classes-empty").hidden = false;
    $("classes-empty").textContent = "Nothing detected yet.";
    $("overlay").removeAttribute("data-drawn");
    $("answered-by").hidden = true;
    $("answer-model").textContent = "";
    $("json").textContent = "";
    for (const id of ["request-id", "t-queue", "t-inference", "t-total", "t-roundtrip"]) $(id).textContent = "–";
  }

  function askForKey(payload) {
    const form = $("key-form");
    const hadKey = state.apiKey !== null;
    state.apiKey = null;
    form.hidden = false;
    showError(hadKey ? "401: that API key was refused" : "401: this server needs an API key",
      (payload && payload.error) || "Enter the key below.");
    $("api-key").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("api-key").value;
    $("api-key").value = "";
    $("key-form").hidden = true;
    if (state.pendingImage) submit(state.pendingImage.blob, state.pendingImage.name);
  });

  const STATUS_TITLES = {
    400: "The server could not read this image",
    404: "Not found",
    405: "Method not allowed",
    411: "Length required",
    413: "Too large",
    415: "Not a JPEG or PNG",
    500: "Server error",
    503: "The server is busy or stopping",
    504: "No answer in time",
  };

  function showHttpError(response, payload, text, name) {
    const title = `${response.status} ${STATUS_TITLES[response.status] || response.statusText || "Error"}`;
    let detail = payload && payload.error ? payload.error : (text || "").slice(0, 300) || "No explanation was given.";
    detail = asSentence(`${name}: ${detail}`);
    const retryAfter = response.headers.get("Retry-After");
    if (retryAfter) detail += ` The server asks to wait ${retryAfter} s before trying again.`;
    const requestId = response.headers.get("X-Request-ID");
    if (requestId) detail += ` (request id ${requestId})`;
    showError(title, detail, response.status >= 500);
  }

  // -- showing the image and the detections -----------------------------------------------------
  async function showImage(blob) {
    const img = $("image");
    if (state.imageUrl) URL.revokeObjectURL(state.imageUrl);
    state.imageUrl = URL.createObjectURL(blob);
    img.src = state.imageUrl;
    // <img> applies EXIF orientation, as OpenCV's decoder does, so the boxes line up.
    await img.decode();
    $("figure").hidden = false;
  }

  const threshold = () => Number($("threshold").value);

  function visibleDetections() {
    const minimum = threshold();
    return state.detections.filter((d) => d.confidence >= minimum && !state.hiddenClasses.has(d.label));
  }

  function assignColours() {
    state.colours = new Map();
    const used = new Set();
    for (const label of classesByConfidence()) {
      let index = hash(label) % PALETTE.length;
      for (let probe = 0; probe < PALETTE.length && used.has(index); probe++) index = (index + 1) % PALETTE.length;
      used.add(index);
      state.colours.set(label, PALETTE[index]);
    }
  }

  function classesByConfidence() {
    const best = new Map();
    for (const d of state.detections) best.set(d.label, Math.max(best.get(d.label) || 0, d.confidence));
    return [...best.keys()].sort((a, b) => best.get(b) - best.get(a) || a.localeCompare(b));
  }

  function hash(text) {
    let h = 0;
    for (const ch of text) h = (h * 31 + ch.codePointAt(0)) >>> 0;
    return h;
  }

  function render() {
    const minimum = threshold();
    $("threshold-value").textContent = minimum.toFixed(2);
    if (!state.answer) return;
    renderClasses(minimum);
    renderTable();
    draw();
    announce();
  }

  function renderClasses(minimum) {
    const fieldset = $("classes");
    const counts = new Map();
    for (const d of state.detections) if (d.confidence >= minimum) counts.set(d.label, (counts.get(d.label) || 0) + 1);
    const labels = classesByConfidence();
    $("classes-empty").hidden = labels.length > 0;
    $("classes-empty").textContent = "Nothing detected in this image.";
    // Rebuilt only when the classes change, so a focused toggle keeps its focus.
    const key = labels.join("\n");
    if (fieldset.dataset.labels !== key) {
      fieldset.dataset.labels = key;
      for (const old of fieldset.querySelectorAll("label")) old.remove();
      for (const label of labels) {
        const wrapper = document.createElement("label");
        wrapper.dataset.label = label;
        const box = document.createElement("input");
        box.type = "checkbox";
        box.addEventListener("change", () => {
          if (box.checked) state.hiddenClasses.delete(label); else state.hiddenClasses.add(label);
          render();
        });
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = state.colours.get(label);
        const text = document.createElement("span");
        text.className = "class-name";
        wrapper.append(box, swatch, text);
        fieldset.append(wrapper);
      }
    }
    for (const wrapper of fieldset.querySelectorAll("label[data-label]")) {
      const label = wrapper.dataset.label;
      wrapper.querySelector("input").checked = !state.hiddenClasses.has(label);
      wrapper.querySelector(".swatch").style.background = state.colours.get(label);
      const count = counts.get(label) || 0;
      // "car (0)" beside a checked box read as a bug: say why nothing of that class is drawn.
      wrapper.querySelector(".class-name").textContent =
        count ? `${label} (${count})` : `${label} (none above ${minimum.toFixed(2)})`;
      wrapper.classList.toggle("below-threshold", count === 0);
      wrapper.dataset.count = String(count);
    }
  }

  function renderTable() {
    const body = $("detections").tBodies[0];
    body.replaceChildren();
    const shown = visibleDetections().sort((a, b) => b.confidence - a.confidence);
    for (const d of shown) {
      const row = body.insertRow();
      row.dataset.label = d.label;
      row.dataset.confidence = String(d.confidence);
      const name = row.insertCell();
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = state.colours.get(d.label);
      name.append(swatch, ` ${d.label}`);
      row.insertCell().textContent = d.confidence.toFixed(3);
      row.insertCell().textContent = d.bbox.join(", ");
    }
    if (!shown.length) {
      const cell = body.insertRow().insertCell();
      cell.colSpan = 3;
      cell.className = "note";
      cell.textContent = state.detections.length ? "Every detection is filtered out: lower the confidence or show more classes."
                                                 : "Nothing detected.";
    }
  }

  function draw() {
    const img = $("image");
    const canvas = $("overlay");
    const widthPx = img.clientWidth;
    const heightPx = img.clientHeight;
    if (!state.answer || !widthPx || !img.naturalWidth) return;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.round(widthPx * ratio);
    canvas.height = Math.round(heightPx * ratio);
    canvas.style.width = `${widthPx}px`;
    canvas.style.height = `${heightPx}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);  // draw in CSS pixels, sharp on high-DPI screens
    ctx.clearRect(0, 0, widthPx, heightPx);
    // bbox is in the original image's pixels; the image is shown scaled to fit.
    const scaleX = widthPx / img.naturalWidth;
    const scaleY = heightPx / img.naturalHeight;
    const boxes = visibleDetections().map((d) => ({
      d, x: d.bbox[0] * scaleX, y: d.bbox[1] * scaleY, w: d.bbox[2] * scaleX, h: d.bbox[3] * scaleY,
    }));
    for (const b of boxes) {  // a light halo keeps a box visible on dark and light pictures alike
      ctx.strokeStyle = "rgba(255,255,255,0.85)";
      ctx.lineWidth = 4;
      ctx.strokeRect(b.x + 1, b.y + 1, Math.max(b.w - 2, 1), Math.max(b.h - 2, 1));
      ctx.strokeStyle = state.colours.get(b.d.label);
      ctx.lineWidth = 2;
      ctx.strokeRect(b.x + 1, b.y + 1, Math.max(b.w - 2, 1), Math.max(b.h - 2, 1));
    }
    // Labels after every box, weakest first, so the strongest label is never covered.
    ctx.font = `600 ${LABEL_FONT_PX}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    const labelHeightPx = LABEL_FONT_PX + 6;
    for (const b of [...boxes].sort((p, q) => p.d.confidence - q.d.confidence)) {
      const text = `${b.d.label} ${b.d.confidence.toFixed(2)}`;
      const labelWidthPx = ctx.measureText(text).width + 8;
      const x = Math.max(0, Math.min(b.x, widthPx - labelWidthPx));
      const y = b.y >= labelHeightPx ? b.y - labelHeightPx : Math.min(b.y, heightPx - labelHeightPx);
      ctx.fillStyle = state.colours.get(b.d.label);
      ctx.fillRect(x, y, labelWidthPx, labelHeightPx);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x + 4, y + labelHeightPx / 2);
    }
    canvas.dataset.drawn = String(boxes.length);
  }

  let announceTimer = null;
  function announce() {
    clearTimeout(announceTimer);  // one announcement after the slider stops, not one per step
    announceTimer = setTimeout(() => {
      const shown = visibleDetections();
      const counts = new Map();
      for (const d of shown) counts.set(d.label, (counts.get(d.label) || 0) + 1);
      const parts = [...counts].map(([label, n]) => `${n} ${label}`);
      $("announce").textContent = shown.length
        ? `${shown.length} detection${shown.length === 1 ? "" : "s"} shown: ${parts.join(", ")}.`
        : "No detections shown.";
    }, 400);
  }

  $("threshold").addEventListener("input", render);
  new ResizeObserver(() => draw()).observe($("image"));

  function showTiming(response, roundTripMs) {
    $("request-id").textContent = response.headers.get("X-Request-ID") || "–";
    const stages = parseServerTiming(response.headers.get("Server-Timing") || "");
    for (const name of ["queue", "inference", "total"]) {
      $(`t-${name}`).textContent = name in stages ? `${stages[name].toFixed(1)} ms` : "–";
    }
    $("t-roundtrip").textContent = `${roundTripMs.toFixed(1)} ms`;
  }

  // X-Model names the model that ran the image, whatever was asked: the page shows what answered.
  function showAnsweringModel(response) {
    const model = response.headers.get("X-Model");
    $("answer-model").textContent = model || "";
    $("answered-by").hidden = !model;
  }

  function parseServerTiming(header) {
    const stages = {};
    for (const entry of header.split(",")) {
      const [name, ...params] = entry.trim().split(";");
      for (const param of params) {
        const [key, value] = param.trim().split("=");
        if (key === "dur" && name) stages[name.trim()] = Number(value);
      }
    }
    return stages;
  }

  $("copy").addEventListener("click", async () => {
    const button = $("copy");
    const text = $("json").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {  // no clipboard API outside a secure context: select it for Ctrl+C
      const range = document.createRange();
      range.selectNodeContents($("json"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      if (!document.execCommand("copy")) return void (button.textContent = "Selected: press Ctrl+C");
    }
    button.textContent = "Copied";
    setTimeout(() => { button.textContent = "Copy JSON"; }, 1500);
  });

  // -- messages -----------------------------------------------------------------------------------
  function showError(title, detail, canRetry = false) {
    const box = $("message");
    box.replaceChildren();
    const strong = document.createElement("strong");
    strong.textContent = title;
    const text = document.createElement("span");
    text.textContent = detail;
    box.append(strong, text);
    if (canRetry && state.pendingImage) {
      const retry = document.createElement("button");
      retry.type = "button";
      retry.className = "button";
      retry.textContent = "Try again";
      retry.addEventListener("click", () => submit(state.pendingImage.blob, state.pendingImage.name));
      box.append(document.createElement("br"), retry);
    }
    box.hidden = false;
  }

  function hideMessage() {
    $("message").hidden = true;
    $("message").replaceChildren();
  }

  // The server's messages have no final stop; what the page adds after one must not run into it.
  function asSentence(text) {
    return /[.!?]$/.test(text.trim()) ? text.trim() : `${text.trim()}.`;
  }

  function formatBytes(bytes) {
    return bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(bytes / 1024)} KB`;
  }

  // -- the status strip ---------------------------------------------------------------------------
  let statusDelayMs = STATUS_INTERVAL_MS;

  async function pollStatus() {
    try {
      const ready = await fetch("/readyz", { cache: "no-store" });
      if (ready.status === 404) {  // e.g. behind the Ingress, which publishes only / and the API
        return setStatus("unknown", "Server status is not published at this address");
      }
      const body = await ready.json();
      let queue = "";
      const metrics = await fetch("/metrics", { cache: "no-store" });
      if (metrics.ok) {
        const match = /^detserve_queue_depth\s+(\S+)/m.exec(await metrics.text());
        if (match) queue = ` · queue ${Number(match[1])}`;
      }
      const workers = `${body.workers_ready}/${body.workers} workers ready`;
      if (ready.ok) setStatus("ready", `${workers}${queue}`);
      else setStatus("degraded", `Not ready${body.reason ? ` (${body.reason})` : ""} · ${workers}${queue}`);
      statusDelayMs = STATUS_INTERVAL_MS;
    } catch (_) {
      // Unreachable: wait longer each time so a stopped server is not flooded when it returns.
      statusDelayMs = Math.min(statusDelayMs * 2, STATUS_MAX_INTERVAL_MS);
      setStatus("down", `Server unreachable; checking again in ${Math.round(statusDelayMs / 1000)} s`);
    }
    setTimeout(pollStatus, document.hidden ? STATUS_MAX_INTERVAL_MS : statusDelayMs);
  }

  function setStatus(stateName, text) {
    $("status").dataset.state = stateName;
    $("status-text").textContent = text;
  }

  pollStatus();
  loadModels();
  render();
})();
