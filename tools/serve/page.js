// The tools.serve page: tabs, the draw forms (each draw streamed as JSON lines and shown as it comes), the run tab.
"use strict";

const $ = (root, selector) => root.querySelector(selector);
const $$ = (root, selector) => Array.from(root.querySelectorAll(selector));
let summary = null;
let upload = null; // the chosen file, as a data: URL

async function getJson(url) {
  const response = await fetch(url);
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function showTab(name) {
  $$(document, "nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  $$(document, "section.panel").forEach((p) => { p.hidden = p.id !== name; });
  if (name === "run") loadRunTab();
}

function setup(run) {
  summary = run;
  $(document, "#run-name").textContent = `${run.run_dir} · ${run.device}` +
    (run.image_size ? ` · ${run.image_size} px, ${run.levels === 2 ? "two levels" : "one level"} of codes` : "");
  const missing = $(document, "#missing");
  missing.hidden = run.missing.length === 0;
  run.missing.forEach((line) => missing.append(element("p", line)));
  $$(document, ".class-select").forEach((select) => {
    run.class_names.forEach((name, i) => select.append(new Option(`${i}: ${name}`, String(i))));
    select.disabled = !run.class_conditional;
  });
  $$(document, "input.guidance").forEach((input) => {
    input.disabled = !run.guidable;
    input.placeholder = run.guidable ? `${run.guidance} (default)` : "not guidable";
  });
  if (run.grid_height) {
    $(document, "#completion [name=keep_rows]").value = Math.floor(run.grid_height / 2);
  }
  $$(document, ".draw-panel").forEach((panel) => {
    $(panel, "button.draw").disabled = !run.can_draw;
    if (!run.can_draw) showError(panel, "Drawing needs the whole run: " + run.missing.join("; "));
  });
  if (run.can_draw && !run.class_conditional) {
    showError($(document, "#classes"), "A row per class needs a class-conditional prior (train it with --class-conditional).");
    $(document, "#classes button.draw").disabled = true;
  }
  if (run.image_size) previewTestImage();
}

function showError(panel, message) {
  const box = $(panel, ".error");
  box.textContent = message;
  box.hidden = !message;
}

function levelName(level) {
  return summary.levels === 2 ? (level === 0 ? "top codes" : "bottom codes") : "codes";
}

function onEvent(panel, event) {
  const progress = $(panel, "progress");
  const text = $(panel, ".progress-text");
  if (event.event === "waiting") {
    text.textContent = "waiting for a free slot: other draws are running…";
  } else if (event.event === "start") {
    progress.max = event.total;
    progress.value = 0;
    progress.dataset.rows = "0";
    text.textContent = `0 of ${event.total} rows`;
  } else if (event.event === "row") {
    progress.value = event.done;
    progress.dataset.rows = String(event.done);
    text.textContent = `${event.done} of ${event.total} rows (row ${event.row + 1} of the ${levelName(event.level)})`;
    if (event.image) showImage(panel, event.image);
  } else if (event.event === "done") {
    progress.value = event.total;
    text.textContent = `done: ${event.total} rows in ${event.seconds} s`;
    showImage(panel, event.image);
    const name = panel.dataset.name;
    const links = $(panel, ".downloads");
    Object.assign($(links, "a.png"), { href: event.image, download: `${name}.png` });
    Object.assign($(links, "a.codes"), { href: event.codes, download: `${name}.npz` });
    links.hidden = false;
    panel.dataset.state = "done";
  } else if (event.event === "error") {
    showError(panel, event.message);
  }
}

// Small images are shown 2-4 times their size, pixels kept sharp (page.css).
function showImage(panel, url) {
  const img = $(panel, "img.result");
  img.onload = () => {
    img.style.width = `${Math.min(4, Math.max(1, Math.floor(560 / img.naturalWidth))) * img.naturalWidth}px`;
  };
  img.src = url;
  img.hidden = false;
}

function controls(panel) {
  const body = {};
  for (const [key, value] of new FormData($(panel, "form"))) {
    if (typeof value === "string" && value !== "" && key !== "source") body[key] = value;
  }
  if (panel.id === "completion" && $(panel, "[name=source]:checked").value === "upload") {
    if (!upload) throw new Error("choose a PNG or JPEG file to upload first");
    delete body.index;
    body.upload = upload;
  }
  return body;
}

async function draw(panel) {
  if (panel.controller) panel.controller.abort();
  const controller = new AbortController();
  panel.controller = controller;
  showError(panel, "");
  $(panel, ".downloads").hidden = true;
  panel.dataset.state = "drawing";
  $(panel, ".progress-text").textContent = "starting…";
  $(panel, "button.stop").disabled = false;
  try {
    const response = await fetch(panel.dataset.url, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(controls(panel)), signal: controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({ error: response.statusText }));
      throw new Error(body.error);
    }
    await readLines(response, (event) => onEvent(panel, event));
  } catch (err) {
    $(panel, ".progress-text").textContent = err.name === "AbortError" ? "stopped" : "";
    if (err.name !== "AbortError") showError(panel, err.message);
  } finally {
    if (panel.controller === controller) {
      $(panel, "button.stop").disabled = true;
      if (panel.dataset.state === "drawing") panel.dataset.state = "stopped";
    }
  }
}

async function readLines(response, handle) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n")) >= 0) {
      const line = buffer.slice(0, end);
      buffer = buffer.slice(end + 1);
      if (line) handle(JSON.parse(line));
    }
  }
}

async function previewTestImage() {
  const panel = $(document, "#completion");
  const index = $(panel, "[name=index]").value;
  try {
    const image = await getJson(`api/test-image?index=${encodeURIComponent(index)}`);
    $(panel, "img.original").src = image.image;
    $(panel, ".caption").textContent = `test image ${image.index} of ${image.count}: ${image.class_name}`;
  } catch (err) {
    $(panel, ".caption").textContent = err.message;
  }
}

function chooseUpload(input) {
  const panel = $(document, "#completion");
  const file = input.files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    upload = reader.result;
    $(panel, "[name=source][value=upload]").checked = true;
    $(panel, "img.original").src = upload;
    $(panel, ".caption").textContent = file.name;
  };
  reader.readAsDataURL(file);
}

document.addEventListener("DOMContentLoaded", async () => {
  $$(document, "nav button").forEach((b) => b.addEventListener("click", () => showTab(b.dataset.tab)));
  $$(document, ".draw-panel").forEach((panel) => {
    $(panel, "form").append($(document, "#drawing-controls").content.cloneNode(true));
    panel.append($(document, "#draw-result").content.cloneNode(true));
    $(panel, "form").addEventListener("submit", (event) => { event.preventDefault(); draw(panel); });
    $(panel, "button.stop").addEventListener("click", () => panel.controller && panel.controller.abort());
  });
  $(document, "#completion [name=index]").addEventListener("change", () => {
    $(document, "#completion [name=source][value=test]").checked = true;
    previewTestImage();
  });
  $(document, "#completion [name=file]").addEventListener("change", (event) => chooseUpload(event.target));
  try {
    setup(await getJson("api/run"));
  } catch (err) {
    $(document, "#run-name").textContent = "the server did not answer: " + err.message;
  }
});
