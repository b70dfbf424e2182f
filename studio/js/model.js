// One model: its layer tree with shapes and unit counts, and for a layer the
// sheet of every unit, each rendered on demand when it scrolls into view.
// The renders go through the server's queue (which batches them) with a
// fixed seed, so the server's result cache makes the second visit instant.
import {call} from "./api.js";
import {layerText} from "./editor.js";
import {el, append, png, bytesText, href} from "./dom.js";

export async function modelPage(view, route, signal) {
  const name = route.parts[1];
  const m = await call("Visualizer/GetModel", {name}, signal);
  const input = m.input || {};
  const classes = m.classNames || [];
  // The layer tree: a path's parent is its prefix before the last '.'.
  const byPath = new Map();
  const root = el("ul", {className: "tree", id: "layers"});
  for (const layer of m.layers || []) {
    const parent = layer.path.includes(".")
        ? byPath.get(layer.path.slice(0, layer.path.lastIndexOf("."))) : null;
    const shape = (layer.outputShape || []).map(Number);
    const item = el("li", {className: "layer", dataset: {layer: layer.path}},
      layer.tappable
          ? el("a", {href: href("model", name, "layer", layer.path)}, layer.path)
          : el("span", {className: "untappable", title: layer.untappableReason}, layer.path),
      " ", el("span", {className: "kind"}, layer.kind),
      shape.length ? " [" + shape.join(", ") + "]" : "",
      layer.tappable ? " · " + layer.channels + " units" : "");
    let list = root;
    if (parent) {
      list = parent.querySelector(":scope > ul") || parent.appendChild(el("ul", {}));
    }
    list.appendChild(item);
    byPath.set(layer.path, item);
  }
  append(view,
    el("h1", {}, m.name, " ", el("span", {className: "meta"}, "version " + m.version)),
    el("p", {className: "description"}, m.description),
    el("dl", {className: "card"},
       el("dt", {}, "input"), el("dd", {}, input.channels + " × " + input.height + " × " + input.width +
          " in [" + input.rangeMin + ", " + input.rangeMax + "]"),
       el("dt", {}, "classes"), el("dd", {id: "classes"},
          classes.map((c, i) => el("span", {className: "class-chip"},
              el("span", {className: "class-name"}, c), " ",
              el("a", {href: "#/editor?model=" + encodeURIComponent(name) +
                             "&objective=" + encodeURIComponent("logit(" + i + ")")}, "render")))),
       el("dt", {}, "size"), el("dd", {}, bytesText(m.memoryBytes)),
       el("dt", {}, "hash"), el("dd", {}, el("code", {}, m.contentHash)),
       el("dt", {}, "outputs"), el("dd", {}, (m.outputs || []).map(o =>
          el("span", {className: "chip"}, o.name + " [" + (o.shape || []).join(", ") + "]")))),
    el("h2", {}, "Layers"), root,
    el("p", {}, el("a", {href: "#/editor?model=" + encodeURIComponent(name)}, "Write an objective…")));
}

export async function layerSheetPage(view, route, signal) {
  const [, name, , layerPath] = route.parts;
  const m = await call("Visualizer/GetModel", {name}, signal);
  const layer = (m.layers || []).find(l => l.path === layerPath);
  if (!layer) throw new Error("model " + name + " has no layer " + layerPath);
  const steps = Number(route.params.get("steps") || 128);
  const units = Number(layer.channels);
  const kind = layer.layout === "flat" ? "neuron" : "channel";
  const sheet = el("div", {className: "sheet", id: "sheet"});
  append(view,
    el("h1", {}, el("a", {href: href("model", name)}, name), " · ", layerPath),
    el("p", {className: "meta"}, units + " units, each " + kind + "(" + layerPath +
       ", k) rendered for " + steps + " steps with seed 0 when it comes into view"),
    sheet);
  // Units are rendered as they come into view, at most IN_FLIGHT jobs at
  // a time (the queue batches them); their ends are polled with GetJob, so
  // the sheet holds no connection open (a browser has six per server).
  const waiting = [];
  let inFlight = 0;
  const next = () => {
    while (inFlight < IN_FLIGHT && waiting.length) {
      const cell = waiting.shift();
      inFlight++;
      fillUnit(cell, name, kind, layerPath, Number(cell.dataset.unit), steps, signal)
          .finally(() => { inFlight--; next(); });
    }
  };
  const observer = new IntersectionObserver(entries => {
    for (const entry of entries) {
      if (!entry.isIntersecting) continue;
      observer.unobserve(entry.target);
      waiting.push(entry.target);
    }
    next();
  });
  signal.addEventListener("abort", () => observer.disconnect());
  for (let k = 0; k < units; k++) {
    const cell = el("a", {className: "unit", href: href("unit", name, layerPath, k),
                          dataset: {unit: String(k), state: "waiting"}},
                    el("span", {className: "unit-label"}, String(k)));
    sheet.appendChild(cell);
    observer.observe(cell);
  }
}

// Jobs of a sheet queued at once, and how often their state is asked for.
const IN_FLIGHT = 16;
const POLL_MS = 400;

async function fillUnit(cell, model, kind, layer, unit, steps, signal) {
  const request = {model, objectiveText: kind + "(" + layerText(layer) + ", " + unit + ")",
                   seed: "0", optimizer: {steps: String(steps)}, output: {png: true}};
  try {
    cell.dataset.state = "queued";
    const job = await call("Visualizer/SubmitJob", {request}, signal);
    const done = await jobResult(job, signal);
    if (!done.result) {
      cell.dataset.state = "failed";
      cell.title = done.errorMessage || done.state;
      return;
    }
    cell.insertBefore(png(done.result.png[0], {className: "pixelated", alt: "unit " + unit}),
                      cell.firstChild);
    cell.dataset.state = job.cached ? "cached" : "done";
  } catch (error) {
    if (error.name !== "AbortError") {
      cell.dataset.state = "failed";
      cell.title = error.message;
    }
  }
}

// A job once it has ended, with its result when it succeeded: its state is
// asked for every POLL_MS (no connection is held open meanwhile).
export async function jobResult(job, signal) {
  while (job.state === "JOB_STATE_QUEUED" || job.state === "JOB_STATE_RUNNING") {
    await new Promise(resolve => setTimeout(resolve, POLL_MS));
    job = await call("Visualizer/GetJob", {id: job.id}, signal);
  }
  if (job.state !== "JOB_STATE_SUCCEEDED") return job;
  return call("Visualizer/GetJob", {id: job.id, includeResult: true}, signal);
}
