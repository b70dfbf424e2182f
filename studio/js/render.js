// A render as it optimises: live preview frames, one loss curve per term,
// cancel, then the grid of final images with their statistics and class
// probabilities, and downloads. The URL carries the request with its seed,
// so a colleague who opens it gets the same picture (from the server's
// result cache when it is still there).
import {call, stream} from "./api.js";
import {el, append, clear, png, tensor, download, errorBox, href} from "./dom.js";
import {drawCurves, colour} from "./chart.js";
import {paramsToRequest, query, npy} from "./request.js";

export async function renderPage(view, route, signal) {
  const params = route.params;
  if (!params.get("seed")) {
    // A permalink names its seed: the same address, the same picture.
    params.set("seed", String(Math.floor(Math.random() * 1e9)));
    history.replaceState(null, "", "#/render?" + query(params));
  }
  const request = paramsToRequest(params);
  append(view, el("h1", {}, "Render"),
         el("p", {className: "meta"}, "model ",
            el("a", {href: href("model", request.model)}, request.model),
            " · objective ", el("code", {}, request.objectiveText),
            " · ", el("a", {href: "#/editor?" + query(params)}, "edit")));
  const model = await call("Visualizer/GetModel", {name: request.model}, signal);
  await runRender(view, request, model, signal);
}

// Streams `request` (a featviz.v1.RenderRequest) into `container`; returns
// the result, or null when it was cancelled or failed.
export async function runRender(container, request, model, signal, opts = {}) {
  const status = el("p", {id: "render-status", dataset: {state: "starting"}},
                    "starting…");
  const cancel = el("button", {id: "cancel", disabled: true}, "Cancel");
  const jobLink = el("span", {id: "render-job"});
  const preview = el("img", {id: "preview", alt: "current images",
                             className: "preview pixelated"});
  const frames = el("div", {id: "frames", className: "frames",
                            dataset: {count: "0"}});
  const canvas = el("canvas", {id: "loss", width: 520, height: 220,
                               dataset: {points: "0"}});
  const legend = el("ul", {className: "legend", id: "legend"});
  const result = el("section", {id: "result"});
  append(container,
         el("div", {className: "toolbar"}, status, jobLink, cancel),
         el("div", {className: "live"},
            el("figure", {}, preview, el("figcaption", {}, "preview")),
            el("figure", {}, canvas, legend,
               el("figcaption", {}, "objective terms per step"))),
         opts.noFilmstrip ? null : el("details", {open: true},
            el("summary", {}, "preview frames"), frames),
         result);
  const abort = new AbortController();
  signal.addEventListener("abort", () => abort.abort());
  let jobId = "";
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    status.textContent = "cancelling…";
    try {
      if (jobId) await call("Visualizer/CancelJob", {id: jobId});
    } catch (error) {
      container.appendChild(errorBox(error));
    }
    abort.abort();
    status.textContent = "cancelled";
    status.dataset.state = "cancelled";
  });
  const series = [];
  let total = Number(request.optimizer && request.optimizer.steps) || 1;
  let final = null;
  let received = 0;
  // The terms' names for the legend while it runs: the server's canonical
  // text of the objective (the check a submission makes), cut into terms.
  let names = [];
  call("Visualizer/SubmitJob", {request, validateOnly: true}, abort.signal)
      .then(job => { names = splitTerms(job.objective); })
      .catch(() => {});
  try {
    await stream("Visualizer/Render", request, (kind, data) => {
      if (kind === "metadata" && data["featviz-job-id"]) {
        jobId = data["featviz-job-id"];
        clear(jobLink).appendChild(el("a", {href: href("job", jobId)}, "job " + jobId));
        jobLink.dataset.job = jobId;
        cancel.disabled = false;
        status.textContent = "queued";
        status.dataset.state = "queued";
      } else if (kind === "message" && data.progress) {
        const p = data.progress;
        total = Number(p.totalSteps) || total;
        series.push({step: Number(p.step), values: p.termValues.map(Number)});
        // The x axis grows with the steps done, up to the total.
        drawCurves(canvas, series, Math.min(total, Math.ceil(Number(p.step) * 1.25)));
        canvas.dataset.points = String(series.length);
        if (legend.dataset.named !== String(names.length)) {
          clear(legend);
          legend.dataset.named = String(names.length);
          p.termValues.forEach((_, i) => legend.appendChild(
              el("li", {className: "term-" + (i % 8)},
                 names.length === p.termValues.length ? names[i] : "term " + (i + 1))));
        }
        status.textContent = "step " + p.step + " / " + p.totalSteps;
        status.dataset.state = "running";
        if (p.previewPng) {
          preview.src = "data:image/png;base64," + p.previewPng;
          frames.appendChild(png(p.previewPng, {className: "frame pixelated",
                                                title: "step " + p.step}));
          // The latest frames only: a long render sends hundreds.
          while (frames.childElementCount > MAX_FRAMES) frames.removeChild(frames.firstChild);
          frames.dataset.count = String(++received);
        }
      } else if (kind === "message" && data.result) {
        final = data.result;
      }
    }, abort.signal);
  } catch (error) {
    if (error.name === "AbortError") return null;
    status.textContent = "failed";
    status.dataset.state = "failed";
    container.appendChild(errorBox(error));
    return null;
  }
  cancel.disabled = true;
  if (!final) return null;
  showResult(result, final, model, series.length === 0);
  if (series.length === 0 && final.terms && final.terms.length) {
    // From the cache: the curves come from the result's traces.
    const steps = final.terms[0].trace.length;
    for (let s = 0; s < steps; s++) {
      series.push({step: s + 1, values: final.terms.map(t => Number(t.trace[s]))});
    }
    drawCurves(canvas, series, steps);
    canvas.dataset.points = String(series.length);
  }
  clear(legend);
  (final.terms || []).forEach((t, i) => legend.appendChild(
      el("li", {className: "term-" + (i % 8)}, t.term + " (weight " + t.weight + ")")));
  if (final.png && final.png.length) preview.src = "data:image/png;base64," + final.png[0];
  status.textContent = "done";
  status.dataset.state = "done";
  return final;
}

// Frames kept in the strip.
const MAX_FRAMES = 48;

// "channel(conv2, 3) - 0.05 * tv()" -> ["channel(conv2, 3)", "-0.05 * tv()"]:
// canonical text cut at the " + " and " - " outside brackets and quotes.
export function splitTerms(text) {
  const terms = [];
  let depth = 0, quote = "", start = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quote) {
      if (c === "\\") i++;
      else if (c === quote) quote = "";
    } else if (c === "'" || c === '"') {
      quote = c;
    } else if (c === "(" || c === "[") {
      depth++;
    } else if (c === ")" || c === "]") {
      depth--;
    } else if (depth === 0 && (text.startsWith(" + ", i) || text.startsWith(" - ", i))) {
      terms.push(text.slice(start, i).trim());
      start = i + (c === " " && text[i + 1] === "+" ? 3 : 1);
      i += 2;
    }
  }
  terms.push(text.slice(start).trim());
  return terms.map(t => t.replace(/^- /, "-"));
}

export function showResult(section, r, model, cached) {
  const classes = model.classNames || [];
  const probs = tensor(r.probs);
  const images = tensor(r.images);
  const grid = el("div", {className: "grid", id: "grid"});
  (r.png || []).forEach((b64, i) => {
    const top = [];
    if (probs) {
      const n = probs.shape[1];
      const row = Array.from(probs.data.slice(i * n, (i + 1) * n));
      row.map((p, k) => [p, k]).sort((a, b) => b[0] - a[0]).slice(0, 3)
         .forEach(([p, k]) => top.push(el("li", {className: "prob"},
            el("span", {className: "class-name"}, classes[k] !== undefined ? classes[k] : String(k)),
            " " + (100 * p).toFixed(1) + "%")));
    }
    grid.appendChild(el("figure", {className: "cell"},
        png(b64, {className: "result-image pixelated", alt: "image " + i}),
        el("figcaption", {}, "image " + i, el("ol", {className: "probs"}, top),
           el("div", {}, download("PNG", new Blob([pngBytes(b64)], {type: "image/png"}),
                                  "featviz-" + i + ".png")))));
  });
  const terms = el("table", {className: "terms"},
      el("tr", {}, el("th", {}, "term"), el("th", {}, "weight"), el("th", {}, "final value")),
      (r.terms || []).map((t, i) => el("tr", {},
          el("td", {}, el("span", {className: "swatch term-" + (i % 8)}), t.term),
          el("td", {}, String(t.weight)), el("td", {}, Number(t.finalValue).toPrecision(4)))));
  const light = JSON.parse(JSON.stringify(r));
  for (const key of ["png", "images", "transparency", "transparencyPng", "bandPng"]) {
    delete light[key];
  }
  const downloads = el("p", {className: "downloads"},
      images ? download("images .npy", npy(images), "featviz-images.npy") : null, " ",
      download("result .json", new Blob([JSON.stringify(light, null, 1)],
                                        {type: "application/json"}), "featviz-result.json"));
  append(section, el("h2", {}, "Result"),
         el("p", {className: "meta"}, "seed " + r.seed + " · " + r.steps + " steps · ",
            "total " + Number(r.finalTotal).toPrecision(4) + " · ",
            String(r.parameterization || "").replace("PARAMETERIZATION_", "").toLowerCase(),
            cached ? " · from the result cache" : "",
            r.timings ? " · " + Number(r.timings.computeSeconds).toFixed(2) + " s compute" : ""),
         (r.warnings || []).map(w => el("p", {className: "warning"}, w)),
         grid, terms, downloads);
  section.dataset.images = String((r.png || []).length);
}

function pngBytes(b64) {
  const text = atob(b64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

export {colour};
