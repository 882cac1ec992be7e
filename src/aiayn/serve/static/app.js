// The aiayn page: translate with /v1/translate, draw the encoder-decoder attention of /v1/attention.
// Plain JavaScript, no build step. Text from the model is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { maps: null, texts: [], search: null }; // search: the options the shown translations were made with

async function postJSON(url, body) {
  const response = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    /* not JSON: reported below */
  }
  if (!response.ok) {
    const message = data && data.message ? data.message : `${response.status} ${response.statusText}`;
    throw new Error(message);
  }
  return data;
}

function showError(message) {
  const el = $("error");
  el.textContent = message || "";
  el.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

function beamSize() {
  const beam = parseInt($("beam").value, 10);
  if (!Number.isInteger(beam) || beam < 1 || beam > 16) {
    throw new Error("the beam size must be a whole number from 1 to 16");
  }
  return beam;
}

function noRepeatNgram() {
  const n = parseInt($("no-repeat-ngram").value, 10);
  if (!Number.isInteger(n) || n < 0 || n > 16) {
    throw new Error("the n-gram ban must be a whole number from 0 (off) to 16");
  }
  return n;
}

function searchOptions() {
  return { beam: beamSize(), no_repeat_ngram: noRepeatNgram() };
}

async function translate() {
  showError("");
  const button = $("translate");
  let search;
  try {
    search = searchOptions();
  } catch (e) {
    showError(e.message);
    return;
  }
  const texts = $("source").value.split("\n").map((t) => t.trim()).filter((t) => t.length > 0);
  if (texts.length === 0) {
    showError("type a sentence to translate");
    return;
  }
  button.disabled = true;
  setStatus("translating…");
  const started = performance.now();
  try {
    const result = await postJSON("/v1/translate", { texts, ...search });
    const translations = result.translations;
    $("translation").textContent = translations.map((t) => t.text).join("\n");
    $("score").textContent = translations.length === 1 && translations[0].score !== null
      ? `score ${translations[0].score.toFixed(3)} (log-probability / length penalty)` : "";
    setStatus(`translated in ${Math.round(performance.now() - started)} ms; drawing the attention…`);
    state.texts = texts;
    state.search = search;
    fillSentenceSelect(texts);
    await loadAttention(0, search);
    setStatus(`done in ${Math.round(performance.now() - started)} ms`);
  } catch (e) {
    showError(e.message);
    setStatus("");
  } finally {
    button.disabled = false;
  }
}

function fillSentenceSelect(texts) {
  const select = $("sentence");
  select.replaceChildren(...texts.map((t, i) => new Option(`${i + 1}: ${t.slice(0, 40)}${t.length > 40 ? "…" : ""}`, String(i))));
  select.hidden = $("sentence-label").hidden = texts.length < 2;
}

async function loadAttention(index, search) {
  const maps = await postJSON("/v1/attention", { text: state.texts[index], ...search });
  state.maps = maps;
  const layers = maps.cross.length;
  const heads = layers ? maps.cross[0].length : 0;
  const layerSelect = $("layer");
  const headSelect = $("head");
  const keepLayer = layerSelect.value;
  const keepHead = headSelect.value;
  layerSelect.replaceChildren(...Array.from({ length: layers }, (_, l) => new Option(`${l + 1}`, String(l))));
  headSelect.replaceChildren(new Option("average of heads", "mean"),
    ...Array.from({ length: heads }, (_, h) => new Option(`${h + 1}`, String(h))));
  layerSelect.value = keepLayer && Number(keepLayer) < layers ? keepLayer : String(layers - 1);
  headSelect.value = keepHead && (keepHead === "mean" || Number(keepHead) < heads) ? keepHead : "mean";
  layerSelect.disabled = headSelect.disabled = layers === 0;
  drawHeatmap();
}

function currentWeights() {
  const maps = state.maps;
  const layer = maps.cross[Number($("layer").value)];
  const head = $("head").value;
  if (head !== "mean") return layer[Number(head)];
  const rows = layer[0].length;
  const cols = rows ? layer[0][0].length : 0;
  return Array.from({ length: rows }, (_, r) => Array.from({ length: cols }, (_, c) => {
    let sum = 0;
    for (const h of layer) sum += h[r][c];
    return sum / layer.length;
  }));
}

// Viridis from 0 to the largest weight shown, as `aiayn attention` draws its PNGs.
const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
  [31, 158, 137], [53, 183, 121], [110, 206, 88], [253, 231, 37]];

function colour(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const i = Math.min(Math.floor(x), VIRIDIS.length - 2);
  const f = x - i;
  const [r, g, b] = [0, 1, 2].map((k) => Math.round(VIRIDIS[i][k] + (VIRIDIS[i + 1][k] - VIRIDIS[i][k]) * f));
  return `rgb(${r}, ${g}, ${b})`;
}

function label(text, cls, extra) {
  const el = document.createElement("div");
  el.className = `label ${cls}`;
  el.textContent = text;
  Object.assign(el.dataset, extra);
  return el;
}

function drawHeatmap() {
  const { source, target } = state.maps;
  const weights = currentWeights();
  const grid = $("heatmap");
  const top = Math.max(1e-6, ...weights.flat());
  grid.style.gridTemplateColumns = `max-content repeat(${source.length}, 26px)`;
  $("scale-max").textContent = top.toFixed(3);
  $("scale").hidden = false;
  const cells = [document.createElement("div")]; // the corner
  source.forEach((piece, c) => cells.push(label(piece, "col-label", { col: String(c) })));
  target.forEach((piece, r) => {
    cells.push(label(piece, "row-label", { row: String(r) }));
    source.forEach((_, c) => {
      const cell = document.createElement("div");
      const w = weights[r][c];
      cell.className = "cell";
      cell.dataset.row = String(r);
      cell.dataset.col = String(c);
      cell.dataset.weight = w.toFixed(4);
      cell.title = `${piece} ← ${source[c]}: ${w.toFixed(3)}`;
      cell.style.backgroundColor = colour(w / top);
      cells.push(cell);
    });
  });
  grid.replaceChildren(...cells);
  grid.dataset.rows = String(target.length);
  grid.dataset.cols = String(source.length);
}

function hover(event) {
  const cell = event.target.closest(".cell");
  const grid = $("heatmap");
  grid.querySelectorAll(".active").forEach((el) => el.classList.remove("active"));
  if (!cell || !state.maps) return;
  const r = Number(cell.dataset.row);
  const c = Number(cell.dataset.col);
  cell.classList.add("active");
  grid.querySelector(`.row-label[data-row="${r}"]`)?.classList.add("active");
  grid.querySelector(`.col-label[data-col="${c}"]`)?.classList.add("active");
  $("hover-info").textContent =
    `output "${state.maps.target[r]}" ← source "${state.maps.source[c]}": ${Number(cell.dataset.weight).toFixed(4)}`;
}

async function loadModelInfo() {
  try {
    const response = await fetch("/v1/models");
    const model = (await response.json()).models[0];
    const c = model.config;
    $("model-info").textContent = `model ${model.id}: ${c.encoder_layers}+${c.decoder_layers} layers, d_model ${c.d_model}, `
      + `${c.heads} heads, ${(model.parameters / 1e6).toFixed(1)}M parameters, on ${model.device}`;
  } catch (_) {
    $("model-info").textContent = "";
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("translate").addEventListener("click", translate);
  $("source").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) translate();
  });
  $("layer").addEventListener("change", drawHeatmap);
  $("head").addEventListener("change", drawHeatmap);
  $("sentence").addEventListener("change", async () => {
    showError("");
    try {
      await loadAttention(Number($("sentence").value), state.search);
    } catch (e) {
      showError(e.message);
    }
  });
  $("heatmap").addEventListener("mouseover", hover);
  $("heatmap").addEventListener("mouseleave", () => {
    $("heatmap").querySelectorAll(".active").forEach((el) => el.classList.remove("active"));
  });
  loadModelInfo();
});
