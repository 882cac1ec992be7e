// The aiayn image page: send an image to /v1/classify, show its classes and the attention rollout.
// Plain JavaScript, no build step. Text from the model is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

function drawImage(canvas, url) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      ctx.clearRect(0, 0, canvas.width, canvas.height);
      ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
      resolve(true);
    };
    img.onerror = () => resolve(false);
    img.src = url;
  });
}

function drawRollout(grid) {
  const canvas = $("rollout");
  const ctx = canvas.getContext("2d");
  ctx.drawImage($("picture"), 0, 0);
  const n = grid.length;
  const top = Math.max(...grid.flat());
  const cell = canvas.width / n;
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const w = top > 0 ? grid[i][j] / top : 0;
      ctx.fillStyle = `rgba(255, 140, 0, ${0.75 * w})`;
      ctx.fillRect(j * cell, i * cell, cell, cell);
    }
  }
}

async function classify(file) {
  showError("");
  $("labels").textContent = "";
  $("status").textContent = "classifying…";
  try {
    const url = await readFile(file);
    await drawImage($("picture"), url);
    const response = await fetch("/v1/classify", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: url, top_k: 5, rollout: true }),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.message || `${response.status}`);
    for (const { label, probability } of data.labels) {
      const li = document.createElement("li");
      li.textContent = `${label} — ${(probability * 100).toFixed(1)}%`;
      $("labels").appendChild(li);
    }
    drawRollout(data.rollout);
    $("status").textContent = "";
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  }
}

async function describe() {
  try {
    const info = (await (await fetch("/v1/models")).json()).models[0];
    const c = info.config;
    $("model-info").textContent = `${info.id}: ${(info.parameters / 1e6).toFixed(1)}M parameters, ${c.layers} layers, patches of ${c.patch_size} on ${c.image_size}×${c.image_size} images, ${info.classes.length} classes`;
  } catch (_) {
    $("model-info").textContent = "";
  }
}

$("file").addEventListener("change", (e) => {
  if (e.target.files.length) classify(e.target.files[0]);
});
describe();
