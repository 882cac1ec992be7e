// The aiayn samples page: a class chosen, /v1/samples' images shown, and the denoising steps behind a slider.
// Plain JavaScript, no build step. Text from the model is only ever set with textContent.
"use strict";

const $ = (id) => document.getElementById(id);
let frames = [];

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

function showStep(i) {
  if (!frames.length) return;
  $("strip").src = frames[i];
  $("strip").hidden = false;
  $("step-label").textContent = `step ${i + 1} of ${frames.length}`;
}

async function draw() {
  showError("");
  $("status").textContent = "drawing…";
  $("go").disabled = true;
  try {
    const body = {
      class: $("class").value,
      n: Number($("n").value),
      steps: Number($("steps").value),
      guidance: Number($("guidance").value),
      seed: Number($("seed").value),
      trajectory: true,
    };
    const response = await fetch("/v1/samples", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.message || `${response.status}`);
    $("samples").textContent = "";
    for (const url of data.images) {
      const img = document.createElement("img");
      img.src = url;
      img.className = "pixels sample";
      img.alt = `a sample of ${data.class}`;
      $("samples").appendChild(img);
    }
    frames = data.steps;
    $("step").max = String(frames.length - 1);
    $("step").value = String(frames.length - 1);
    $("step").disabled = frames.length < 2;
    showStep(frames.length - 1);
    $("status").textContent = "";
  } catch (e) {
    showError(e.message);
    $("status").textContent = "";
  } finally {
    $("go").disabled = false;
  }
}

async function describe() {
  try {
    const info = (await (await fetch("/v1/models")).json()).models[0];
    const c = info.config;
    $("model-info").textContent = `${info.id}: ${(info.parameters / 1e6).toFixed(1)}M parameters, ${c.layers} layers of ${c.d_model} on ${c.image_size}×${c.image_size} images in ${c.patch_size}×${c.patch_size} patches, ${c.diffusion_steps} noise levels (${c.noise_schedule})`;
    for (const name of info.classes) {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name;
      $("class").appendChild(option);
    }
  } catch (_) {
    $("model-info").textContent = "";
  }
}

$("go").addEventListener("click", draw);
$("step").addEventListener("input", () => showStep(Number($("step").value)));
describe();
