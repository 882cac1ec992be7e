// The aiayn zero-shot page: labels typed by the user, an image uploaded, /v1/zero-shot's probabilities shown.
// Plain JavaScript, no build step. Text from the model or the user is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let imageUrl = null;

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

function labels() {
  return $("label-text").value.split(",").map((s) => s.trim()).filter((s) => s.length);
}

async function classify() {
  showError("");
  $("labels").textContent = "";
  if (!imageUrl) return showError("choose an image first");
  const names = labels();
  if (!names.length) return showError("type at least one label");
  $("status").textContent = "classifying…";
  try {
    const response = await fetch("/v1/zero-shot", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ image: imageUrl, labels: names }),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.message || `${response.status}`);
    for (const { label, probability } of data.labels) {
      const li = document.createElement("li");
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.round(probability * 200)}px`;
      li.textContent = `${label} — ${(probability * 100).toFixed(1)}% `;
      li.appendChild(bar);
      $("labels").appendChild(li);
    }
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
    $("model-info").textContent = `${info.id}: ${(info.parameters / 1e6).toFixed(1)}M parameters, a ${c.vision_layers}-layer image tower on ${c.image_size}×${c.image_size} images and a ${c.text_layers}-layer text tower, joint space of ${c.d_embed}`;
    if (!$("label-text").value && info.classes.length) $("label-text").value = info.classes.join(", ");
  } catch (_) {
    $("model-info").textContent = "";
  }
}

$("file").addEventListener("change", async (e) => {
  if (!e.target.files.length) return;
  try {
    imageUrl = await readFile(e.target.files[0]);
    await drawImage($("picture"), imageUrl);
    classify();
  } catch (err) {
    showError(err.message);
  }
});
$("go").addEventListener("click", classify);
describe();
