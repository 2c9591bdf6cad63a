// The page of `remamber serve`: pick an image and phrases, POST /v1/segment, draw each mask.
// The server returns each mask (exact, at the request's threshold) and its probability map as
// 8-bit grey at display size, so the threshold slider re-cuts the masks here without a request.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = [
  [0, 110, 255], [255, 0, 170], [0, 190, 110], [255, 120, 0],
  [140, 60, 255], [0, 200, 220], [230, 30, 30], [120, 120, 0],
];
const MAX_SIDE = 1024; // longest side of the drawn picture and of the probability maps
const ALPHA = 0.5;

const state = {
  blob: null, // the image as sent
  name: "image",
  img: null, // decoded, for drawing
  width: 0, // original size
  height: 0,
  dw: 0, // drawn size
  dh: 0,
  base: null, // ImageData of the picture at drawn size
  response: null,
  requestThreshold: 0.5,
  results: [], // {text, color, area, meanProb, found, presence, mask (exact, drawn size), probs, maskPng, visible, shownArea}
  busy: false,
  auth: false,
};

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

function slug(text) {
  const s = text.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, "-").replace(/^-+|-+$/g, "");
  return s.slice(0, 60) || "text";
}

function stem() {
  return state.name.replace(/\.[^.]*$/, "") || "image";
}

function threshold() {
  return Number($("threshold").value);
}

function atRequestThreshold() {
  return Math.abs(threshold() - state.requestThreshold) < 1e-9;
}

function updateButton() {
  $("go").disabled = state.busy || !state.blob || !$("texts").value.trim();
}

function fitted(w, h) {
  const scale = Math.min(1, MAX_SIDE / Math.max(w, h));
  return [Math.max(1, Math.round(w * scale)), Math.max(1, Math.round(h * scale))];
}

// Draw the picture at (w, h) and keep its pixels as the base of every overlay.
function drawBase(w, h) {
  const canvas = $("canvas");
  canvas.width = w;
  canvas.height = h;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(state.img, 0, 0, w, h);
  state.dw = w;
  state.dh = h;
  state.base = ctx.getImageData(0, 0, w, h);
  canvas.hidden = false;
  $("empty").hidden = true;
}

async function setImage(blob, name) {
  if (!blob || !blob.type.startsWith("image/")) {
    setStatus("That is not an image file.", true);
    return;
  }
  const url = URL.createObjectURL(blob);
  const img = new Image();
  img.src = url;
  try {
    await img.decode();
  } catch {
    URL.revokeObjectURL(url);
    setStatus("The browser cannot read that image.", true);
    return;
  }
  state.blob = blob;
  state.name = name || blob.name || "image";
  state.img = img;
  state.width = img.naturalWidth;
  state.height = img.naturalHeight;
  state.results = [];
  state.response = null;
  renderList();
  drawBase(...fitted(state.width, state.height));
  $("json").disabled = true;
  setStatus(`${state.name}: ${state.width} x ${state.height}`);
  updateButton();
}

// Pixels of a PNG (base64) drawn at (w, h), nearest neighbour: one byte per pixel (red channel).
async function pngPixels(b64, w, h) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  const off = document.createElement("canvas");
  off.width = w;
  off.height = h;
  const ctx = off.getContext("2d", { willReadFrequently: true });
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(bitmap, 0, 0, w, h);
  const rgba = ctx.getImageData(0, 0, w, h).data;
  const out = new Uint8Array(w * h);
  for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i];
  return { pixels: out, width: bitmap.width, height: bitmap.height, bytes };
}

async function pngSize(b64) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const bitmap = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  return [bitmap.width, bitmap.height];
}

// The mask shown for result r at the slider's threshold (drawn size, 0/1 bytes). A phrase the
// presence head found nothing for keeps its empty mask at any threshold.
function shownMask(r) {
  if (atRequestThreshold() || !r.probs || !r.found) return r.mask;
  const cut = threshold() * 255;
  const out = new Uint8Array(r.probs.length);
  for (let i = 0; i < out.length; i++) out[i] = r.probs[i] > cut ? 1 : 0;
  return out;
}

// Pixels of the mask within `width` pixels of its edge.
function outline(mask, w, h, width) {
  let inner = mask;
  for (let k = 0; k < width; k++) {
    const next = new Uint8Array(inner.length);
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        next[i] = inner[i] && (y > 0 ? inner[i - w] : 1) && (y < h - 1 ? inner[i + w] : 1)
          && (x > 0 ? inner[i - 1] : 1) && (x < w - 1 ? inner[i + 1] : 1) ? 1 : 0;
      }
    }
    inner = next;
  }
  const edge = new Uint8Array(mask.length);
  for (let i = 0; i < mask.length; i++) edge[i] = mask[i] && !inner[i] ? 1 : 0;
  return edge;
}

function render() {
  if (!state.base) return;
  const { dw: w, dh: h } = state;
  const out = new ImageData(new Uint8ClampedArray(state.base.data), w, h);
  const px = out.data;
  const lineWidth = Math.max(1, Math.round(Math.max(w, h) / 300));
  const scale = (state.width * state.height) / (w * h);
  for (const r of state.results) {
    const mask = shownMask(r);
    let count = 0;
    for (let i = 0; i < mask.length; i++) count += mask[i];
    r.shownArea = atRequestThreshold() ? r.area : Math.round(count * scale);
    r.shown = mask;
    if (!r.visible) continue;
    const [cr, cg, cb] = r.color;
    for (let i = 0; i < mask.length; i++) {
      if (!mask[i]) continue;
      const j = 4 * i;
      px[j] = (1 - ALPHA) * px[j] + ALPHA * cr;
      px[j + 1] = (1 - ALPHA) * px[j + 1] + ALPHA * cg;
      px[j + 2] = (1 - ALPHA) * px[j + 2] + ALPHA * cb;
    }
    const edge = outline(mask, w, h, lineWidth);
    for (let i = 0; i < edge.length; i++) {
      if (!edge[i]) continue;
      const j = 4 * i;
      px[j] = cr;
      px[j + 1] = cg;
      px[j + 2] = cb;
    }
  }
  $("canvas").getContext("2d").putImageData(out, 0, 0);
  updateNumbers();
}

function updateNumbers() {
  for (const [k, r] of state.results.entries()) {
    const li = $("results").children[k];
    if (!li) continue;
    li.dataset.area = String(r.shownArea);
    const nums = r.found
      ? `${r.shownArea.toLocaleString()} px` + (atRequestThreshold() ? ` · mean p ${r.meanProb.toFixed(3)}` : ` at ${threshold().toFixed(2)}`)
      : `not found (presence ${r.presence.toFixed(3)})`;
    li.querySelector(".nums").textContent = nums + (r.truncated ? " · phrase truncated" : "");
  }
}

function download(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// The mask PNG at the original size: the server's own at the request's threshold, else the
// slider's mask scaled up (nearest) from the probability map.
function downloadMask(r) {
  const name = `${stem()}.${slug(r.text)}.mask.png`;
  if (atRequestThreshold()) {
    download(new Blob([r.maskPng], { type: "image/png" }), name);
    return;
  }
  const { dw: w, dh: h } = state;
  const small = document.createElement("canvas");
  small.width = w;
  small.height = h;
  const img = new ImageData(w, h);
  for (let i = 0; i < r.shown.length; i++) {
    const v = r.shown[i] ? 255 : 0;
    img.data.set([v, v, v, 255], 4 * i);
  }
  small.getContext("2d").putImageData(img, 0, 0);
  const full = document.createElement("canvas");
  full.width = state.width;
  full.height = state.height;
  const ctx = full.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(small, 0, 0, state.width, state.height);
  full.toBlob((blob) => download(blob, name), "image/png");
}

function renderList() {
  const ul = $("results");
  ul.replaceChildren();
  for (const [k, r] of state.results.entries()) {
    const li = document.createElement("li");
    li.dataset.index = String(k);
    const show = document.createElement("input");
    show.type = "checkbox";
    show.checked = r.visible;
    show.title = "Show this mask";
    show.setAttribute("aria-label", `Show the mask of "${r.text}"`);
    show.addEventListener("change", () => { r.visible = show.checked; render(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${r.color.join(",")})`;
    const text = document.createElement("span");
    text.className = "phrase";
    text.textContent = r.text;
    const nums = document.createElement("span");
    nums.className = "nums";
    const btn = document.createElement("button");
    btn.className = "small mask-download";
    btn.type = "button";
    btn.textContent = "Mask PNG";
    btn.addEventListener("click", () => downloadMask(r));
    li.append(show, swatch, text, nums, btn);
    ul.append(li);
  }
}

async function segment() {
  const texts = $("texts").value.split("\n").map((t) => t.trim()).filter(Boolean);
  if (!state.blob || !texts.length || state.busy) return;
  state.busy = true;
  updateButton();
  setStatus(`Segmenting ${texts.length} phrase${texts.length > 1 ? "s" : ""}…`);
  const form = new FormData();
  form.append("image", state.blob, state.name);
  for (const t of texts) form.append("text", t);
  const cut = threshold();
  form.append("threshold", String(cut));
  form.append("mask_png", "true");
  form.append("probs_png", String(MAX_SIDE));
  const headers = {};
  const key = $("key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const started = performance.now();
  try {
    const res = await fetch("/v1/segment", { method: "POST", body: form, headers });
    let data = null;
    try { data = await res.json(); } catch { data = null; }
    if (!res.ok) {
      const why = data && data.error ? data.error : res.statusText;
      setStatus(`Error ${res.status}: ${why}`, true);
      if (res.status === 401) $("keyrow").hidden = false;
      return;
    }
    const roundTrip = (performance.now() - started) / 1000;
    // Draw at the probability maps' size, so that a map pixel is a canvas pixel.
    const [pw, ph] = data.results.length ? await pngSize(data.results[0].probs_png) : fitted(data.width, data.height);
    drawBase(pw, ph);
    const results = [];
    for (const [k, r] of data.results.entries()) {
      const mask = await pngPixels(r.mask_png, pw, ph);
      const probs = await pngPixels(r.probs_png, pw, ph);
      results.push({
        text: r.text, color: COLORS[k % COLORS.length], area: r.area, meanProb: r.mean_prob, truncated: r.truncated,
        found: r.found !== false, presence: r.presence,
        mask: mask.pixels.map((v) => (v > 127 ? 1 : 0)), probs: probs.pixels, maskPng: mask.bytes, visible: true,
      });
    }
    state.response = data;
    state.requestThreshold = cut;
    state.results = results;
    renderList();
    render();
    $("json").disabled = false;
    const n = results.length;
    setStatus(`${n} mask${n > 1 ? "s" : ""} in ${roundTrip.toFixed(2)} s (server ${data.seconds.toFixed(2)} s) · ${data.model}`);
  } catch (e) {
    setStatus(`The request failed: ${e.message}`, true);
  } finally {
    state.busy = false;
    updateButton();
  }
}

async function loadHealth() {
  try {
    const res = await fetch("/health");
    const h = await res.json();
    $("model").replaceChildren("model: ", Object.assign(document.createElement("b"), { textContent: h.model }), ` · ${h.preset || h.format} · ${h.device}`);
    $("demo").hidden = !h.demo;
    state.auth = h.auth;
    $("keyrow").hidden = !h.auth;
  } catch {
    $("model").textContent = "model: unreachable";
  }
}

async function loadExamples() {
  try {
    const res = await fetch("/static/examples/examples.json");
    const examples = await res.json();
    for (const ex of examples) {
      const btn = document.createElement("button");
      btn.type = "button";
      btn.title = ex.texts.join("\n");
      const img = document.createElement("img");
      img.src = `/static/examples/${ex.image}`;
      img.alt = `Example ${ex.image}: ${ex.texts.join("; ")}`;
      btn.append(img);
      btn.addEventListener("click", async () => {
        const blob = await (await fetch(img.src)).blob();
        $("texts").value = ex.texts.join("\n");
        await setImage(blob, ex.image);
      });
      $("examples").append(btn);
    }
  } catch {
    $("examples").textContent = "(no examples)";
  }
}

function wire() {
  const drop = $("drop");
  const file = $("file");
  drop.addEventListener("click", () => file.click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); file.click(); } });
  file.addEventListener("change", () => { if (file.files[0]) setImage(file.files[0], file.files[0].name); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) setImage(f, f.name);
  });
  window.addEventListener("paste", (e) => {
    for (const item of e.clipboardData ? e.clipboardData.items : []) {
      if (item.type.startsWith("image/")) {
        const f = item.getAsFile();
        setImage(f, f.name && f.name !== "image.png" ? f.name : "pasted.png");
        e.preventDefault();
        return;
      }
    }
  });
  $("texts").addEventListener("input", updateButton);
  $("texts").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) segment(); });
  $("go").addEventListener("click", segment);
  $("threshold").addEventListener("input", () => {
    $("tval").textContent = threshold().toFixed(2);
    render();
  });
  $("json").addEventListener("click", () => {
    if (!state.response) return;
    const blob = new Blob([JSON.stringify(state.response, null, 1)], { type: "application/json" });
    download(blob, `${stem()}.remamber.json`);
  });
}

wire();
loadHealth();
loadExamples();
