// netvis viewer: a small single-page application over the viewer's JSON API (no build step, no libraries).
"use strict";

const state = { model: null, route: 0, gallery: null, uploads: [] };
const app = () => document.getElementById("app");

// ---------------------------------------------------------------------------------------------------
// DOM and HTTP helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function show(...nodes) {
  const root = app();
  root.replaceChildren(...nodes.flat(Infinity));
  return root;
}

// One id per tab: the server's job limits and fair scheduling count per client.
const CLIENT_ID = Array.from(crypto.getRandomValues(new Uint8Array(8)), (b) => b.toString(16).padStart(2, "0")).join("");

async function api(path, options = {}, retries = 5) {
  const headers = Object.assign({ "X-Netvis-Client": CLIENT_ID }, options.headers || {});
  const response = await fetch(path, Object.assign({}, options, { headers }));
  let payload = null;
  try { payload = await response.json(); } catch (e) { payload = null; }
  if (response.status === 429 && retries > 0) {  // busy: wait as the server says, then ask again
    const seconds = Math.min(30, Math.max(1, Number(response.headers.get("Retry-After")) || 1));
    await sleep(seconds * 1000);
    return api(path, options, retries - 1);
  }
  if (!response.ok) {
    const message = payload && payload.error ? payload.error : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return payload;
}

function postJob(request) {
  return api("/api/jobs", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(request) });
}

class Stale extends Error {}

// Start a job and poll it until it is done; `onProgress(job)` sees every status. Throws Stale when the
// page changed meanwhile (the job keeps running on the server and its result is cached).
async function runJob(request, onProgress, token) {
  let job = await postJob(request);
  let wait = 150;
  while (job.status === "queued" || job.status === "running") {
    if (token !== state.route) throw new Stale();
    if (onProgress) onProgress(job);
    await sleep(wait);
    wait = Math.min(600, wait + 50);
    if (token !== state.route) throw new Stale();
    job = await api(`/api/jobs/${job.id}`);
  }
  if (token !== state.route) throw new Stale();
  if (onProgress) onProgress(job);
  if (job.status !== "done") throw new Error(job.error || `job ${job.status}`);
  return job.result;
}

function progressView(label) {
  const fill = el("div");
  const text = el("div", { class: "progress-text", text: label || "queued" });
  const node = el("div", { class: "job-progress" }, el("div", { class: "progress" }, fill), text);
  node.update = (job) => {
    fill.style.width = `${Math.round(100 * (job.progress || 0))}%`;
    text.textContent = `${job.status}${job.message && job.message !== job.status ? ": " + job.message : ""}` +
      ` (${Math.round(100 * (job.progress || 0))}%)`;
  };
  return node;
}

function errorView(error) {
  return el("p", { class: "error", text: error.message || String(error) });
}

// An image with an optional box (top, left, bottom, right) in pixels of an image of size [height, width].
function picture(url, { size = "s96", box = null, inputSize = null, alt = "" } = {}) {
  const wrap = el("span", { class: `pic ${size}` }, el("img", { src: url, alt }));
  if (box && inputSize && box[2] > box[0] && box[3] > box[1]) {
    const [h, w] = inputSize;
    const frame = el("span", { class: "box" });
    frame.style.top = `${(100 * box[0]) / h}%`;
    frame.style.left = `${(100 * box[1]) / w}%`;
    frame.style.height = `${(100 * (box[2] - box[0])) / h}%`;
    frame.style.width = `${(100 * (box[3] - box[1])) / w}%`;
    wrap.append(frame);
  }
  return wrap;
}

const className = (label) => {
  const names = state.model.data.classes;
  return label !== null && label !== undefined && label < names.length ? names[label] : String(label);
};
const fmt = (value) => (Math.abs(value) >= 100 || value === 0 ? value.toFixed(0) : value.toPrecision(3));
const layerLink = (name) => `#/layers/${encodeURIComponent(name)}`;

// ---------------------------------------------------------------------------------------------------
// Pages

function modelPage() {
  const m = state.model;
  const metrics = Object.entries(m.metrics).filter(([k]) => k !== "epoch").map(([k, v]) => [k, typeof v === "number" ? fmt(v) : v]);
  const facts = [
    ["model", m.model], ["parameters", m.parameters.toLocaleString()], ["epoch", m.epoch],
    ["checkpoint", m.checkpoint], ["data", `${m.data.name} (${m.data.images} images)`],
    ["input", m.input_shape.join(" x ")], ["classes", m.classes.join(", ")], ...metrics,
  ];
  show(
    el("h1", { text: "Model" }),
    el("div", { class: "card" }, el("dl", { class: "kv" }, facts.map(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]))),
    el("p", {}, "Browse the ", el("a", { href: "#/layers", text: "layers" }), " and their channels, explain a prediction on the ",
      el("a", { href: "#/saliency", text: "saliency" }), " page, or reconstruct an image from a layer on the ",
      el("a", { href: "#/inversion", text: "inversion" }), " page."),
  );
}

function layersPage() {
  const rows = state.model.layers.map((layer) =>
    el("tr", { class: "layer-row", "data-layer": layer.name, onclick: () => { location.hash = layerLink(layer.name); } },
      el("td", { class: `indent-${Math.min(layer.depth, 4)}` }, el("a", { href: layerLink(layer.name), text: layer.name })),
      el("td", { text: layer.type }), el("td", { text: layer.shape.join(" x ") })));
  show(
    el("h1", { text: "Layers" }),
    el("p", { class: "muted", text: "Every module of the model with its output shape (channels x height x width). " +
      "Pick one to see the images of the data that excite each of its channels most." }),
    el("table", { class: "card" }, el("thead", {}, el("tr", {}, el("th", { text: "layer" }), el("th", { text: "type" }),
      el("th", { text: "output" }))), el("tbody", {}, rows)),
  );
}

async function layerPage(name, token) {
  const layer = state.model.layers.find((l) => l.name === name);
  if (!layer) return show(errorView(new Error(`unknown layer ${name}`)));
  const progress = progressView("finding the dataset examples");
  const body = el("div", {}, progress);
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/layers", text: "layers" }), " / ", el("strong", { text: name })),
    el("h1", { text: `${name} (${layer.type}, ${layer.shape.join(" x ")})` }),
    el("p", { class: "muted", text: "Each channel with the image of the data that excites it most (by its mean activation); " +
      "the box is the part of the image its strongest unit sees. Pick a channel for its top images and filter visualizations." }),
    body,
  );
  try {
    const result = await runJob({ kind: "examples", layer: name, k: state.model.defaults.k }, progress.update, token);
    const tiles = result.units.map((unit) =>
      el("a", { class: "tile channel-tile", href: `${layerLink(name)}/${unit.channel}`, "data-channel": unit.channel },
        picture(`/api/data/${unit.indices[0]}.png`, { box: unit.boxes[0], inputSize: result.input_size, alt: `channel ${unit.channel}` }),
        el("div", { class: "caption", text: `ch ${unit.channel} · ${fmt(unit.values[0])}` })));
    body.replaceChildren(el("p", { class: "muted", text: `${result.channels} channels, top ${result.k} of ${result.num_images} images` }),
      el("div", { class: "grid channels" }, tiles));
  } catch (error) {
    if (!(error instanceof Stale)) body.replaceChildren(errorView(error));
  }
}

async function channelPage(name, channel, token) {
  const layer = state.model.layers.find((l) => l.name === name);
  if (!layer || !(channel >= 0 && channel < layer.channels)) return show(errorView(new Error(`no channel ${channel} in ${name}`)));
  const examples = el("div", {}, progressView("dataset examples"));
  const filters = el("div", {}, progressView("filter visualizations"));
  const nav = el("div", { class: "controls" },
    channel > 0 ? el("a", { href: `${layerLink(name)}/${channel - 1}`, text: "‹ previous channel" }) : null,
    channel + 1 < layer.channels ? el("a", { href: `${layerLink(name)}/${channel + 1}`, text: "next channel ›" }) : null);
  show(
    el("div", { class: "crumbs" }, el("a", { href: "#/layers", text: "layers" }), " / ", el("a", { href: layerLink(name), text: name }),
      " / ", el("strong", { text: `channel ${channel}` })),
    el("h1", { text: `${name}, channel ${channel}` }), nav,
    el("h2", { text: "Dataset examples" }),
    el("p", { class: "muted", text: "The images of the data with the largest mean activation of this channel, best first; " +
      "the box is the receptive field of the channel's strongest unit in that image." }),
    examples,
    el("h2", { text: "Filter visualizations" }),
    el("p", { class: "muted", text: "Guided backprop of (sum of the channel's units)^2 to each top image: the pattern in the " +
      "image the channel responds to (grey is zero; the box holds every non-zero pixel)." }),
    filters,
  );
  const request = { layer: name, k: state.model.defaults.k };
  try {
    const result = await runJob({ kind: "examples", ...request }, examples.firstChild.update, token);
    const unit = result.units[channel];
    examples.replaceChildren(el("div", { class: "grid examples" }, unit.indices.map((index, i) =>
      el("div", { class: "tile" }, picture(`/api/data/${index}.png`, { size: "s128", box: unit.boxes[i], inputSize: result.input_size, alt: `image ${index}` }),
        el("div", { class: "caption", text: `#${index} ${className(unit.labels[i])}` }), el("div", { class: "caption", text: fmt(unit.values[i]) })))));
  } catch (error) {
    if (error instanceof Stale) return;
    examples.replaceChildren(errorView(error));
  }
  try {
    const result = await runJob({ kind: "filters", ...request, channel, n: state.model.defaults.filters }, filters.firstChild.update, token);
    filters.replaceChildren(el("div", { class: "grid filters" }, result.items.map((item) =>
      el("div", { class: "tile" }, el("div", { class: "pair" },
        picture(item.image_url, { size: "s128", box: item.box, inputSize: result.input_size, alt: `image ${item.index}` }),
        picture(item.url, { size: "s128", alt: `guided backprop of channel ${channel} on image ${item.index}` })),
      el("div", { class: "caption", text: `#${item.index} ${className(item.label)}` })))));
  } catch (error) {
    if (!(error instanceof Stale)) filters.replaceChildren(errorView(error));
  }
}

// A picker of data images (and uploads) that calls `onPick(ref)`.
async function imagePicker(selected, onPick, token) {
  if (!state.gallery) state.gallery = await api("/api/data?offset=0&limit=60");
  if (token !== state.route) throw new Stale();
  const tiles = state.gallery.items.map((item) =>
    el("button", { class: `tile${item.ref === selected ? " selected" : ""}`, type: "button", "data-ref": item.ref, title: `#${item.index} ${item.class}`,
      onclick: () => onPick(item.ref) }, el("img", { src: item.url, alt: item.class })));
  const uploads = state.uploads.map((item) =>
    el("button", { class: `tile${item.ref === selected ? " selected" : ""}`, type: "button", "data-ref": item.ref, title: "uploaded image",
      onclick: () => onPick(item.ref) }, el("img", { src: item.url, alt: "upload" })));
  const status = el("span", { class: "muted" });
  const input = el("input", { type: "file", accept: "image/png,image/jpeg", id: "upload-input" });
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    status.textContent = "uploading…";
    try {
      const result = await api("/api/images", { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
      if (!state.uploads.some((u) => u.ref === result.ref)) state.uploads.unshift(result);
      onPick(result.ref);
    } catch (error) {
      status.replaceChildren(errorView(error));
    }
  });
  return el("div", { class: "card" },
    el("div", { class: "controls" }, el("label", { for: "upload-input", text: "Upload an image:" }), input, status),
    el("div", { class: "grid gallery" }, uploads, tiles),
    el("p", { class: "muted", text: `The first ${state.gallery.items.length} of ${state.gallery.total} images of ${state.model.data.name}.` }));
}

const refUrl = (ref) => (ref.startsWith("upload:") ? `/api/images/${ref.slice(7)}.png` : `/api/data/${ref.slice(7)}.png`);

async function saliencyPage(ref, target, token) {
  const pick = (r) => { location.hash = `#/saliency/${encodeURIComponent(r)}`; };
  let picker;
  try { picker = await imagePicker(ref, pick, token); } catch (error) { if (!(error instanceof Stale)) show(errorView(error)); return; }
  const body = el("div", {});
  show(el("h1", { text: "Saliency" }),
    el("p", { class: "muted", text: "Pick an image: every saliency method shows which pixels the score of a class depends on." }),
    picker, body);
  if (!ref) return;
  const progress = progressView("computing the saliency maps");
  body.replaceChildren(progress);
  try {
    const result = await runJob({ kind: "saliency", image: ref, target: target === null ? null : target }, progress.update, token);
    const select = el("select", { id: "target-class", onchange: () => { location.hash = `#/saliency/${encodeURIComponent(ref)}/${select.value}`; } },
      el("option", { value: "auto", text: `predicted (${result.predicted_class})` }),
      result.classes.map((name, i) => el("option", { value: i, text: name, selected: target === i })));
    const bars = el("div", { class: "bars" }, result.probabilities.map((p, i) => [
      el("span", { text: result.classes[i] }),
      el("div", {}, (() => { const b = el("div", { class: `bar${i === result.target ? " target" : ""}` }); b.style.width = `${Math.max(1, 100 * p)}%`; return b; })()),
      el("span", { text: `${(100 * p).toFixed(1)}%` })]));
    const overlay = el("input", { type: "checkbox", id: "overlay", checked: true });
    const maps = el("div", { class: "grid maps" });
    const drawMaps = () => maps.replaceChildren(...result.maps.map((m) =>
      el("div", { class: `tile${m.error ? " failed" : ""}` },
        m.error ? el("p", { class: "error", text: m.error }) : picture(overlay.checked ? m.url : m.map_url, { size: "s192", alt: m.method }),
        el("div", { class: "caption", text: `${m.method} (${(1000 * m.seconds).toFixed(0)} ms)` }))));
    overlay.addEventListener("change", drawMaps);
    drawMaps();
    body.replaceChildren(
      el("div", { class: "split" },
        el("div", {}, picture(refUrl(ref), { size: "s192", alt: "the image" }),
          result.label !== null && result.label !== undefined ? el("p", { class: "muted", text: `label: ${className(result.label)}` }) : null),
        el("div", {}, el("h2", { text: `Predicted: ${result.predicted_class}` }), bars)),
      el("div", { class: "controls" }, el("label", { for: "target-class", text: "Explain the class" }), select,
        overlay, el("label", { for: "overlay", text: "overlay on the image" })),
      el("h2", { text: `Saliency for ${result.target_class}` }), maps);
  } catch (error) {
    if (!(error instanceof Stale)) body.replaceChildren(errorView(error));
  }
}

async function inversionPage(ref, token) {
  const pick = (r) => { location.hash = `#/inversion/${encodeURIComponent(r)}`; };
  let picker;
  try { picker = await imagePicker(ref, pick, token); } catch (error) { if (!(error instanceof Stale)) show(errorView(error)); return; }
  const layers = state.model.layers;
  const chosen = sessionStorage.getItem("inversion-layer");
  const layerSelect = el("select", { id: "inversion-layer" }, layers.map((l) =>
    el("option", { value: l.name, text: `${l.name} (${l.shape.join("x")})`, selected: l.name === chosen })));
  const steps = el("input", { id: "inversion-steps", type: "number", min: 1, max: state.model.limits.steps, value: state.model.defaults.steps });
  const start = el("button", { class: "primary", id: "invert", type: "button", text: "Invert", disabled: !ref });
  const body = el("div", {});
  start.addEventListener("click", async () => {
    sessionStorage.setItem("inversion-layer", layerSelect.value);
    start.disabled = true;
    const progress = progressView("starting");
    body.replaceChildren(progress);
    try {
      const result = await runJob({ kind: "inversion", image: ref, layer: layerSelect.value, steps: Number(steps.value) }, progress.update, token);
      body.replaceChildren(el("div", { class: "grid inversion" },
        el("div", { class: "tile" }, picture(result.target_url, { size: "s192", alt: "target" }), el("div", { class: "caption", text: "image" })),
        el("div", { class: "tile" }, picture(result.url, { size: "s192", alt: "reconstruction" }),
          el("div", { class: "caption", text: `from ${result.layer}` }))),
        el("p", { class: "muted", text: `feature error ${(100 * result.error).toFixed(2)}% (start ${(100 * result.initial_error).toFixed(1)}%), ` +
          `${result.steps} steps, ${result.n_evals} evaluations` }));
    } catch (error) {
      if (!(error instanceof Stale)) body.replaceChildren(errorView(error));
    } finally {
      start.disabled = false;
    }
  });
  show(el("h1", { text: "Inversion" }),
    el("p", { class: "muted", text: "Reconstruct an image from a layer's representation alone (Mahendran & Vedaldi): " +
      "what the layer keeps of the image, and what it throws away." }),
    picker,
    el("div", { class: "controls" }, el("label", { for: "inversion-layer", text: "layer" }), layerSelect,
      el("label", { for: "inversion-steps", text: "steps" }), steps, start,
      ref ? el("span", { class: "muted", text: `image ${ref}` }) : el("span", { class: "muted", text: "pick an image first" })),
    body);
}

// ---------------------------------------------------------------------------------------------------
// Routing

async function render() {
  const token = ++state.route;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent).filter((p) => p !== "");
  const page = parts[0] || "model";
  for (const link of document.querySelectorAll("[data-nav]")) link.classList.toggle("active", link.dataset.nav === page);
  try {
    if (!state.model) {
      state.model = await api("/api/model");
      document.getElementById("model-name").textContent = `${state.model.model} · ${state.model.data.name}`;
    }
    if (token !== state.route) return;
    if (page === "model") modelPage();
    else if (page === "layers" && parts.length === 1) layersPage();
    else if (page === "layers" && parts.length === 2) await layerPage(parts[1], token);
    else if (page === "layers") await channelPage(parts[1], Number(parts[2]), token);
    else if (page === "saliency") await saliencyPage(parts[1] || null, parts[2] && parts[2] !== "auto" ? Number(parts[2]) : null, token);
    else if (page === "inversion") await inversionPage(parts[1] || null, token);
    else show(errorView(new Error(`no page ${page}`)));
  } catch (error) {
    if (!(error instanceof Stale)) show(errorView(error));
  }
}

window.addEventListener("hashchange", render);
document.addEventListener("DOMContentLoaded", render);
