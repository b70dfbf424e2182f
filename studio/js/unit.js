// One unit of a layer: its label, its pictures (a diverse batch) each with
// its path-similarity badge, one accentuated exemplar, the dataset images
// that excite it most with its activation map over each, its attribution to
// every class, and one click to the circuit of a class.
import {call} from "./api.js";
import {el, append, clear, png, errorBox, href} from "./dom.js";
import {runRender} from "./render.js";
import {jobResult} from "./model.js";
import {layerText} from "./editor.js";
import {unitLabel, trustFor, addBadges, pathSimilarityNote, accentuate} from "./trust.js";

export async function unitPage(view, route, signal) {
  const [, name, layerPath, unitText] = route.parts;
  const unit = Number(unitText);
  const model = await call("Visualizer/GetModel", {name}, signal);
  const layer = (model.layers || []).find(l => l.path === layerPath);
  if (!layer) throw new Error("model " + name + " has no layer " + layerPath);
  const classes = model.classNames || [];
  const kind = layer.layout === "flat" ? "neuron" : "channel";
  const term = `${kind}(${layerText(layerPath)}, ${unit})`;
  const objective = `${term} + 0.5 * diversity(${layerText(layerPath)})`;
  const label = el("section", {id: "label", dataset: {state: "loading"}});
  const pictures = el("section", {id: "pictures"}, el("h2", {}, "Pictures"));
  const accentuation = el("section", {id: "accentuation", dataset: {state: "loading"}},
                          el("h2", {}, "Accentuated top example"));
  const examples = el("section", {id: "examples", dataset: {state: "loading"}},
                      el("h2", {}, "Top dataset examples"));
  const attribution = el("section", {id: "attribution", dataset: {state: "loading"}},
                         el("h2", {}, "Attribution to each class"));
  append(view,
    el("h1", {}, el("a", {href: href("model", name)}, name), " · ",
       el("a", {href: href("model", name, "layer", layerPath)}, layerPath), " · unit " + unit),
    el("p", {className: "meta"}, el("code", {}, term), " · ",
       el("a", {href: "#/editor?model=" + encodeURIComponent(name) + "&objective=" +
                      encodeURIComponent(term)}, "edit objective"),
       unit > 0 ? [" · ", el("a", {href: href("unit", name, layerPath, unit - 1)}, "← unit " + (unit - 1))] : null,
       unit + 1 < Number(layer.channels)
           ? [" · ", el("a", {href: href("unit", name, layerPath, unit + 1)}, "unit " + (unit + 1) + " →")] : null),
    label,
    el("div", {className: "unit-page"}, pictures,
       el("div", {}, accentuation, examples, attribution)));
  const steps = route.params.get("steps") || "128";
  const top = call("Circuits/TopExamples",
                   {model: name, layer: layerPath, channels: [String(unit)], topN: 8, png: true},
                   signal);
  top.catch(() => {});  // Each section that uses it shows its error.
  // The page's jobs run at once; each shows its own error.
  await Promise.all([
    unitLabel(label, name, layerPath, unit, signal),
    pictureBatch(pictures, name, objective, steps, model, signal),
    topExamples(examples, top, name, layerPath, unit, classes, signal),
    accentuateTop(accentuation, top, name, term, signal),
    attribute(attribution, name, layerPath, unit, classes, signal),
  ]);
}

// The diverse batch, with the path-similarity check when a hosted dataset
// fits the model (else the pictures alone, and a note why).
async function pictureBatch(section, name, objective, steps, model, signal) {
  const request = {model: name, objectiveText: objective, seed: "0",
                   image: {batch: "4"}, optimizer: {steps},
                   output: {png: true, previewPng: true}};
  const {trust, why} = await trustFor(request, signal);
  if (trust) request.trust = trust;
  const result = await runRender(section, request, model, signal, {noFilmstrip: true});
  if (!result) return;
  const grid = section.querySelector("#grid");
  if (trust && grid) {
    addBadges(grid, result.pathSimilarity);
    grid.after(pathSimilarityNote());
  } else if (grid) {
    grid.after(el("p", {className: "meta trust-note"}, "No path-similarity check: " +
                      (why && why.message ? why.message : "no dataset fits this model")));
  }
}

async function accentuateTop(section, top, model, term, signal) {
  let reply;
  try {
    reply = await top;
  } catch (error) {
    if (error.name === "AbortError") return;
    section.appendChild(el("p", {className: "meta"}, "No top example to accentuate."));
    section.dataset.state = "none";
    return;
  }
  const u = (reply.units || [])[0] || {};
  const index = (u.indices || [])[0];
  if (index === undefined) {
    section.appendChild(el("p", {className: "meta"}, "No top example to accentuate."));
    section.dataset.state = "none";
    return;
  }
  section.appendChild(el("p", {className: "meta"},
      "The unit's objective from its top example, kept close to it: what the unit " +
      "wants more of in this image."));
  await accentuate(section, model, term, reply.dataset, index, (u.png || [])[0], signal);
}

async function topExamples(section, topReply, model, layer, unit, classes, signal) {
  try {
    const top = await topReply;
    const u = (top.units || [])[0] || {};
    const indices = u.indices || [];
    let overlays = [];
    try {
      const maps = await call("Circuits/ComputeActivations", {model,
          input: {dataset: {dataset: top.dataset, indices}},
          layers: [{layer, channels: [String(unit)]}], overlayPng: true}, signal);
      overlays = ((maps.layers || [])[0] || {}).overlayPng || [];
    } catch (error) {
      if (error.name === "AbortError") throw error;
      // A flat layer has no map to lay over the image: the images alone.
    }
    const grid = el("div", {className: "grid examples"});
    indices.forEach((index, i) => {
      const label = (u.labels || [])[i];
      const labelName = label !== undefined && Number(label) >= 0
          ? (classes[Number(label)] !== undefined ? classes[Number(label)] : String(label)) : "";
      grid.appendChild(el("figure", {className: "example"},
          u.png && u.png[i] ? png(u.png[i], {className: "pixelated", alt: "image " + index}) : null,
          overlays[i] ? png(overlays[i], {className: "pixelated overlay", alt: "activation map"}) : null,
          el("figcaption", {}, "#" + index + " ", el("span", {className: "class-name"}, labelName),
             " · " + Number((u.values || [])[i]).toFixed(3))));
    });
    append(section, el("p", {className: "meta"}, "dataset " + top.dataset +
                       (top.cached ? " (cached)" : "") + "; image, then the unit's map over it"),
           grid);
    section.dataset.state = "done";
    section.dataset.count = String(indices.length);
  } catch (error) {
    if (error.name === "AbortError") return;
    section.appendChild(errorBox(error));
    section.dataset.state = "error";
  }
}

async function attribute(section, model, layer, unit, classes, signal) {
  try {
    const rows = await Promise.all(classes.map(async (c, k) => {
      const r = await call("Circuits/Attribute", {model, layer, target: "logit(" + k + ")",
          input: {dataset: {count: "32"}}}, signal);
      const score = (r.scores || []).find(s => Number(s.channel) === unit) || {};
      return {k, c, score: Number(score.score || 0)};
    }));
    const max = Math.max(1e-12, ...rows.map(r => Math.abs(r.score)));
    const table = el("table", {className: "list"},
      el("tr", {}, el("th", {}, "class"), el("th", {}, "score"), el("th", {}, ""), el("th", {}, "")),
      rows.sort((a, b) => b.score - a.score).map(r => el("tr", {},
        el("td", {}, el("span", {className: "class-name"}, r.c)),
        el("td", {}, r.score.toPrecision(3)),
        el("td", {}, el("meter", {min: 0, max: 1, value: Math.max(0, r.score / max)})),
        el("td", {}, el("a", {href: href("circuit", model, layer, r.k)}, "circuit of this class")))));
    append(section, el("p", {className: "meta"}, "gradient × activation of the unit for " +
                       "each class's logit, over 32 dataset images"), table);
    section.dataset.state = "done";
  } catch (error) {
    if (error.name === "AbortError") return;
    section.appendChild(errorBox(error));
    section.dataset.state = "error";
  }
}

// The circuit of a class at a layer (the figure of `featviz circuits`): the
// class's own picture, an example image of the class, and its top detector
// units, each with its picture and its map over the example. The renders
// are the server's jobs (seed 0, so a second visit comes from its cache).
export async function circuitPage(view, route, signal) {
  const [, name, layer, cls] = route.parts;
  const steps = route.params.get("steps") || "128";
  const model = await call("Visualizer/GetModel", {name}, signal);
  const classes = model.classNames || [];
  const r = await call("Circuits/FindCircuit", {model: name, layer, classes: [cls], topK: 6,
      render: {seed: "0", optimizer: {steps}}}, signal);
  const c = (r.classes || [])[0] || {};
  const picture = (jobId, alt) => {
    const slot = el("span", {className: "job-picture", dataset: {state: "queued"}});
    if (jobId) {
      jobResult({id: jobId, state: "JOB_STATE_QUEUED"}, signal).then(job => {
        if (job.result && job.result.png && job.result.png.length) {
          slot.appendChild(png(job.result.png[0], {className: "pixelated", alt}));
          slot.dataset.state = "done";
        } else {
          slot.dataset.state = "failed";
          slot.title = job.errorMessage || job.state;
        }
      }).catch(error => { if (error.name !== "AbortError") slot.dataset.state = "failed"; });
    }
    return slot;
  };
  const className = classes[Number(cls)] !== undefined ? classes[Number(cls)] : cls;
  append(view,
    el("h1", {}, el("a", {href: href("model", name)}, name), " · circuit of class ",
       el("span", {className: "class-name"}, className), " at " + layer),
    el("p", {className: "meta"}, "dataset " + r.dataset + " · scored on " + c.imagesScored +
       " images of the class · ", el("a", {href: "#/render?model=" + encodeURIComponent(name) +
           "&objective=" + encodeURIComponent("logit(" + cls + ")") + "&seed=0&steps=" + steps},
           "render the class")),
    el("div", {className: "circuit"},
      el("figure", {className: "cell"}, picture(c.classJobId, "logit " + cls),
         el("figcaption", {}, "logit(" + cls + ")")),
      c.examplePng ? el("figure", {className: "cell"}, png(c.examplePng, {className: "pixelated"}),
                        el("figcaption", {}, "example #" + c.exampleIndex)) : null),
    el("h2", {}, "Top detector units"),
    el("div", {className: "grid", id: "detectors"}, (c.detectors || []).map(d =>
      el("figure", {className: "cell detector"},
         picture(d.jobId, "unit " + d.channel),
         d.activationPng ? png(d.activationPng, {className: "pixelated"}) : null,
         el("figcaption", {}, el("a", {href: href("unit", name, layer, d.channel)}, "unit " + d.channel),
            " · score " + Number(d.score).toPrecision(3))))));
}
