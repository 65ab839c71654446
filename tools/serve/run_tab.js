// The tools.serve page's "run" tab: each stage's config, best epoch and training curves (drawn as SVG), the
// figure files, reconstructions. Loaded after page.js, whose helpers ($, element, getJson) it uses.
"use strict";

let runTabLoaded = false;
async function loadRunTab() {
  if (runTabLoaded) return;
  runTabLoaded = true;
  const panel = $(document, "#run");
  try {
    const info = await getJson("api/info");
    const stages = $(panel, ".stages");
    for (const stage of Object.values(info.stages)) stages.append(stageView(stage));
    const figures = $(panel, ".figures");
    if (Object.keys(info.figures).length) figures.replaceChildren();
    for (const [name, values] of Object.entries(info.figures)) {
      figures.append(element("h3", name), table(values));
    }
    $(panel, ".codes-meta").textContent = info.codes ? JSON.stringify(info.codes, null, 2) : "no codes yet";
  } catch (err) {
    $(panel, ".stages").append(element("p", err.message, "error"));
  }
  try {
    const recon = await getJson("api/recon");
    Object.assign($(panel, "img.recon"), { src: recon.image, hidden: false });
  } catch (err) {
    $(panel, ".recon-note").textContent = err.message;
  }
}

function table(values) {
  const node = element("table");
  for (const [key, value] of Object.entries(values || {})) {
    const row = node.insertRow();
    row.append(element("th", key));
    const shown = typeof value === "number" ? (Number.isInteger(value) ? String(value) : value.toPrecision(5))
      : typeof value === "string" ? value : JSON.stringify(value);
    row.append(element("td", shown, typeof value === "number" ? "number" : ""));
  }
  return node;
}

function stageView(stage) {
  const box = element("div", undefined, "stage");
  box.append(element("h2", stage.title));
  if (!stage.config) {
    box.append(element("p", "not trained yet"));
    return box;
  }
  const body = element("div", undefined, "stage-body");
  if (stage.best) {
    const best = element("div");
    best.append(element("p", `best epoch ${stage.best.epoch}:`), table(without(stage.best, "epoch")));
    body.append(best);
  }
  if (stage.curves.length) body.append(curveView(stage.curves));
  box.append(body);
  const details = element("details");
  details.append(element("summary", "config.json"), element("pre", JSON.stringify(stage.config, null, 2)));
  box.append(details);
  return box;
}

function without(values, key) {
  const copy = { ...values };
  delete copy[key];
  return copy;
}

// Metrics named train_X, val_X and test_X share a chart: one line each.
function curveGroups(records) {
  const groups = {};
  for (const key of new Set(records.flatMap(Object.keys))) {
    if (key === "epoch" || key === "step") continue;
    const match = key.match(/^(?:raw_)?(train|val|test)_(.+)$/);
    const group = match ? match[2] : key;
    (groups[group] = groups[group] || []).push(key);
  }
  return groups;
}

function curveView(records) {
  const groups = curveGroups(records);
  const names = Object.keys(groups).sort();
  const chosen = ["bits_per_code", "mse", "loss"].find((name) => groups[name]) || names[0];
  const box = element("div", undefined, "chart");
  const select = element("select");
  names.forEach((name) => select.append(new Option(name, name, false, name === chosen)));
  const holder = element("div");
  const redraw = () => holder.replaceChildren(chart(records, groups[select.value]));
  select.addEventListener("change", redraw);
  redraw();
  box.append(element("label", "curve"), holder);
  box.firstChild.append(select);
  return box;
}

function chart(records, keys) {
  const width = 460, height = 220, pad = 44, colours = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700"];
  const points = records.flatMap((r) => keys.filter((k) => k in r).map((k) => [r.epoch ?? 0, r[k]]));
  const [x0, x1] = [Math.min(...points.map((p) => p[0])), Math.max(...points.map((p) => p[0]))];
  const [y0, y1] = [Math.min(...points.map((p) => p[1])), Math.max(...points.map((p) => p[1]))];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const sy = (y) => height - pad + ((y0 - y) / (y1 - y0 || 1)) * (height - 2 * pad);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
  };
  add("rect", { x: pad, y: pad, width: width - 2 * pad, height: height - 2 * pad, fill: "none", stroke: "#ccc" });
  add("text", { x: 2, y: pad + 4 }, y1.toPrecision(4));
  add("text", { x: 2, y: height - pad }, y0.toPrecision(4));
  add("text", { x: pad, y: height - pad + 16 }, `epoch ${x0}`);
  add("text", { x: width - pad - 40, y: height - pad + 16 }, `epoch ${x1}`);
  keys.forEach((key, i) => {
    const line = records.filter((r) => key in r).map((r) => `${sx(r.epoch ?? 0)},${sy(r[key])}`).join(" ");
    add("polyline", { points: line, fill: "none", stroke: colours[i % colours.length], "stroke-width": 2 });
    add("text", { x: pad + 8 + 130 * i, y: pad - 8, style: `fill: ${colours[i % colours.length]}` }, key);
  });
  return svg;
}
