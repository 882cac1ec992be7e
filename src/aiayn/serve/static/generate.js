// The aiayn language-model page: stream a continuation from /v1/completions (server-sent events),
// then show the self-attention of a chosen token from /v1/attention.
// Plain JavaScript, no build step. Text from the model is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { maps: null, chosen: null };

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function number(id, low, high) {
  const value = parseFloat($(id).value);
  if (!Number.isFinite(value) || value < low || value > high) {
    throw new Error(`${$(id).previousElementSibling.textContent} must be between ${low} and ${high}`);
  }
  return value;
}

async function generate() {
  showError("");
  let body;
  try {
    body = {
      prompt: $("prompt").value,
      max_tokens: Math.round(number("max-tokens", 1, 1024)),
      temperature: number("temperature", 0, 5),
      top_p: number("top-p", 0.01, 1),
      stream: true,
    };
  } catch (e) {
    showError(e.message);
    return;
  }
  const button = $("generate");
  button.disabled = true;
  $("shown-prompt").textContent = body.prompt;
  $("completion").textContent = "";
  $("tokens").textContent = "";
  $("status").textContent = "generating…";
  const started = performance.now();
  let pieces = 0;
  try {
    const response = await fetch("/v1/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).message || message;
      } catch (_) {
        /* not JSON */
      }
      throw new Error(message);
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (!event.startsWith("data: ")) continue;
        const data = event.slice(6);
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.message);
        const text = chunk.choices[0].text;
        if (text) {
          $("completion").textContent += text;
          pieces += 1;
        }
      }
    }
    const seconds = (performance.now() - started) / 1000;
    $("status").textContent = `${pieces} pieces in ${seconds.toFixed(1)} s`;
    await loadAttention(body.prompt + $("completion").textContent);
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    button.disabled = false;
  }
}

async function loadAttention(text) {
  if (!text) return;
  const response = await fetch("/v1/attention", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text }),
  });
  if (!response.ok) {
    $("hover-info").textContent = "(no attention map for this text: it is longer than the server draws)";
    return;
  }
  state.maps = await response.json();
  state.chosen = state.maps.tokens.length - 1;
  fillSelect($("layer"), state.maps.weights.length, state.maps.weights.length - 1, (i) => `${i + 1}`);
  fillSelect($("head"), state.maps.weights[0].length + 1, 0, (i) => (i === 0 ? "mean" : `${i}`));
  drawTokens();
}

function fillSelect(select, n, chosen, label) {
  select.textContent = "";
  for (let i = 0; i < n; i++) {
    const option = document.createElement("option");
    option.value = String(i);
    option.textContent = label(i);
    select.appendChild(option);
  }
  select.value = String(chosen);
  select.disabled = false;
}

function weightsOf(query) {
  const layer = state.maps.weights[parseInt($("layer").value, 10)];
  const head = parseInt($("head").value, 10);
  if (head > 0) return layer[head - 1][query];
  const n = layer[0][query].length;
  const mean = new Array(n).fill(0);
  for (const h of layer) for (let k = 0; k < n; k++) mean[k] += h[query][k] / layer.length;
  return mean;
}

function drawTokens() {
  const box = $("tokens");
  box.textContent = "";
  if (!state.maps) return;
  const weights = weightsOf(state.chosen);
  const top = Math.max(...weights);
  state.maps.tokens.forEach((piece, k) => {
    const span = document.createElement("span");
    span.className = "token" + (k === state.chosen ? " active" : "");
    span.textContent = piece === "" ? "∅" : piece.replace(/\n/g, "↵\n");
    const w = weights[k] || 0;
    span.style.backgroundColor = `rgba(31, 111, 235, ${top > 0 ? (w / top) * 0.85 : 0})`;
    span.title = `weight ${w.toFixed(3)}`;
    span.addEventListener("click", () => {
      state.chosen = k;
      drawTokens();
    });
    box.appendChild(span);
  });
  $("hover-info").textContent = `token ${state.chosen + 1}: ${JSON.stringify(state.maps.tokens[state.chosen])} attends most to ${JSON.stringify(
    state.maps.tokens[weights.indexOf(top)]
  )} (${top.toFixed(3)})`;
}

async function describe() {
  try {
    const info = (await (await fetch("/v1/models")).json()).models[0];
    const c = info.config;
    $("model-info").textContent = `${info.id}: ${(info.parameters / 1e6).toFixed(1)}M parameters, ${c.layers} layers × ${c.heads} heads, d_model ${c.d_model}, context ${c.context} (${info.device}, ${info.precision})`;
  } catch (_) {
    $("model-info").textContent = "";
  }
}

$("generate").addEventListener("click", generate);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate();
});
$("layer").addEventListener("change", drawTokens);
$("head").addEventListener("change", drawTokens);
describe();
