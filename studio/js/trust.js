// How far to believe a unit's pictures (docs/trust.md): its label from its
// top dataset examples, a path-similarity badge under each picture, and one
// accentuated exemplar. Every name (class, layer, dataset) goes in as text.
import {call, stream} from "./api.js";
import {el, append, png, errorBox} from "./dom.js";

// A score rounded down to two decimals ("0.829" -> "0.82"); the epsilon
// keeps 0.29 (28.999… × 100 in floating point) at 0.29.
export function scoreText(score) {
  const s = Math.max(0, Math.min(1, Number(score) || 0));
  return (Math.floor(s * 100 + 1e-9) / 100).toFixed(2);
}

// The unit's label (Circuits.LabelUnits) into `section`: the label text,
// its class selectivity and the classes it feeds most. Without a labelled
// dataset that fits the model (FAILED_PRECONDITION) a short note.
export async function unitLabel(section, model, layer, unit, signal) {
  try {
    const r = await call("Circuits/LabelUnits", {model, layer, channels: [String(unit)]}, signal);
    const u = (r.units || [])[0];
    if (!u) throw new Error("LabelUnits answered no unit");
    const feeds = (u.attribution || []).map((a, i) => [i ? ", " : "",
        el("span", {className: "class-name"}, a.className || String(a.classIndex)),
        " (" + Number(a.score).toPrecision(3) + ")"]);
    append(section,
      el("p", {className: "label-text", id: "label-text"}, u.label),
      el("p", {className: "meta"},
         "class selectivity " + Number(u.selectivity).toFixed(2) + " (0: its top " + r.topN +
         " spread over the classes as the dataset does, 1: all of one class) · ",
         feeds.length ? ["feeds most, by attribution: ", feeds]
                      : "feeds no class (no positive attribution)",
         " · dataset ", el("span", {className: "dataset-name"}, r.dataset)));
    section.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error.code === "FAILED_PRECONDITION") {
      section.appendChild(el("p", {className: "meta"},
          "No label: the server hosts no labelled dataset that fits this model."));
      section.dataset.state = "none";
    } else {
      section.appendChild(errorBox(error));
      section.dataset.state = "error";
    }
  }
}

// A RenderRequest.trust to ask for, or null when the server could not
// honour it (no dataset fits the model, or several do): the server's check
// of the request without queueing it says so.
export async function trustFor(request, signal) {
  const trust = {pathSimilarity: true};
  try {
    await call("Visualizer/SubmitJob",
               {request: Object.assign({}, request, {trust}), validateOnly: true}, signal);
    return {trust};
  } catch (error) {
    if (error.name === "AbortError") throw error;
    return {trust: null, why: error};
  }
}

// One badge per picture of `grid` (the result grid of runRender), with the
// per-layer scores in a small table and the badge's tooltip.
export function addBadges(grid, similarities) {
  const cells = grid.querySelectorAll("figure.cell");
  (similarities || []).forEach((ps, i) => {
    if (!cells[i]) return;
    const reliable = Boolean(ps.reliable);
    const layers = ps.layers || [];
    const counted = l => Number(l.naturalSimilarity) - Number(l.randomSimilarity) >= 0.05;
    const tip = layers.map(l => l.layer + " " + scoreText(l.score) +
                           (counted(l) ? "" : " (not counted)")).join(" · ") +
                " · threshold " + Number(ps.threshold);
    cells[i].appendChild(el("div", {className: "trust"},
      el("span", {className: "trust-badge " + (reliable ? "reliable" : "flagged"), title: tip},
         scoreText(ps.score) + " " + (reliable ? "reliable" : "flagged")),
      el("table", {className: "ps-layers"}, layers.map(l =>
        el("tr", {className: counted(l) ? "" : "not-counted",
                  title: counted(l) ? "" : "not counted: the top examples are no more alike here than random images"},
           el("td", {className: "layer-name"}, l.layer),
           el("td", {}, scoreText(l.score)))))));
  });
}

export function pathSimilarityNote() {
  return el("p", {className: "meta trust-note"},
    "Path similarity: how closely each picture drives the unit along the path its natural " +
    "top examples take (per layer, 0 = like random digits, 1 = like the exemplars; flagged " +
    "under 0.5). Reliable means only that the picture is made of the same parts; flagged " +
    "means look at the exemplars before believing the picture.");
}

// One accentuated exemplar: the unit's objective rendered from its top
// dataset example (RenderRequest.accentuate), seed beside picture, with the
// unit's value on both and the pixel distance.
export async function accentuate(section, model, objective, dataset, index, seedPng, signal) {
  try {
    let result = null;
    await stream("Visualizer/Render", {model, objectiveText: objective, seed: "0",
        output: {png: true},
        accentuate: {image: {datasetImage: {dataset, index: String(index)}}}},
        (kind, data) => { if (kind === "message" && data.result) result = data.result; }, signal);
    if (!result || !(result.png || []).length) throw new Error("the render returned no picture");
    const o = (result.accentuation || [])[0] || {};
    const seedValue = Number(o.seedValue), value = Number(o.value);
    const outcome = objective + ": " + seedValue.toFixed(3) + " on the seed → " +
        value.toFixed(3) + " on the picture" +
        (seedValue > 0 ? " (×" + (value / seedValue).toFixed(2) + ")" : "") +
        " · pixel distance " + Number(o.pixelDistance).toFixed(3);
    append(section,
      el("div", {className: "accentuation"},
        el("figure", {}, seedPng ? png(seedPng, {className: "pixelated", alt: "seed image " + index}) : null,
           el("figcaption", {}, "seed: ", el("span", {className: "dataset-name"}, dataset),
              " #" + index)),
        el("figure", {}, png(result.png[0], {className: "pixelated", id: "accentuated",
                                              alt: "accentuated image " + index}),
           el("figcaption", {}, "accentuated"))),
      el("p", {className: "outcome", id: "accentuation-outcome"}, outcome),
      el("p", {className: "meta"}, "Rendered as ", el("code", {}, result.objective), ", " +
         result.steps + " steps. The values are the term's (a channel's mean over positions, " +
         "not the maximum the top examples are ranked by). What appeared is what drives the " +
         "unit in this image; what faded held it back."));
    section.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") return;
    section.appendChild(errorBox(error));
    section.dataset.state = "error";
  }
}
