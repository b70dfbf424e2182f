// One unit of a layer: its pictures (a diverse batch), the dataset images
// that excite it most with its activation map over each, its attribution to
// every class, and one click to the circuit of a class.
import {call} from "./api.js";
import {el, append, clear, png, errorBox, href} from "./dom.js";
import {runRender} from "./render.js";
import {jobResult} from "./model.js";
import {layerText} from "./editor.js";

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
  const pictures = el("section", {id: "pictures"}, el("h2", {}, "Pictures"));
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
    el("div", {className: "unit-page"}, pictures, el("div", {}, examples, attribution)));
  const steps = route.params.get("steps") || "128";
  // Three jobs of the page run at once; each shows its own error.
  await Promise.all([
    runRender(pictures, {model: name, objectiveText: objective, seed: "0",
                         image: {batch: "4"}, optimizer: {steps},
                         output: {png: true, previewPng: true}},
              model, signal, {noFilmstrip: true}),
    topExamples(examples, name, layerPath, unit, classes, signal),
    attribute(attribution, name, layerPath, unit, classes, signal),
  ]);
}

async function topExamples(section, model, layer, unit, classes, signal) {
  try {
    const top = await call("Circuits/TopExamples",
                           {model, layer, channels: [String(unit)], topN: 8, png: true}, signal);
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
