// The objective editor: the text syntax with layer-name completion, presets,
// the render options, and the server's own check of the request
// (SubmitJob with validate_only) as one types: a syntax error is shown at
// its column before anything is submitted.
import {call} from "./api.js";
import {el, append, clear, errorBox} from "./dom.js";
import {query} from "./request.js";
import {paramsToRequest} from "./request.js";

// A layer path as the syntax writes it: bare when it looks like
// `name.0.part`, else quoted.
export function layerText(path) {
  return /^[A-Za-z_0-9][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*$/.test(path)
      ? path : "'" + path.replace(/[\\']/g, "\\$&") + "'";
}

const PRESETS = {
  neuron: s => `neuron(${s.layer}, ${s.unit})`,
  channel: s => `channel(${s.layer}, ${s.unit})`,
  layer: s => `layer(${s.layer})`,
  logit: s => `logit(${s.cls})`,
  prob: s => `prob(${s.cls})`,
  joint: s => `channel(${s.layer}, ${s.unit}) + logit(${s.cls})`,
  diversity: s => `channel(${s.layer}, ${s.unit}) + 0.5 * diversity(${s.layer})`,
};

export async function editorPage(view, route, signal) {
  const params = route.params;
  const {models = []} = await call("Visualizer/ListModels", {}, signal);
  if (models.length === 0) throw new Error("the server hosts no model");
  const modelName = params.get("model") || models[0].name;
  const model = models.find(m => m.name === modelName) || models[0];
  const layers = (model.layers || []).filter(l => l.tappable);
  const classes = model.classNames || [];

  const pickModel = el("select", {id: "model"},
      models.map(m => el("option", {value: m.name, selected: m.name === model.name}, m.name)));
  const text = el("textarea", {id: "objective", rows: 3, spellcheck: "false",
                               autocomplete: "off"});
  text.value = params.get("objective") ||
      (layers.length ? `channel(${layerText(layers[layers.length > 1 ? 1 : 0].path)}, 0)`
                     : "logit(0)");
  const completions = el("ul", {id: "completions", className: "completions"});
  const check = el("div", {id: "check", dataset: {state: "idle"}});
  const layerPick = el("select", {id: "preset-layer"},
      layers.map(l => el("option", {value: l.path}, l.path + " (" + l.channels + ")")));
  const unitPick = el("input", {id: "preset-unit", type: "number", min: 0, value: "0"});
  const classPick = el("select", {id: "preset-class"},
      classes.map((c, i) => el("option", {value: String(i)}, i + ": ", c)));
  const option = (name, props, label) => {
    const input = props.tag === "select"
        ? el("select", {id: "opt-" + name}, props.options.map(o =>
              el("option", {value: o, selected: (params.get(name) || props.value) === o}, o || "default")))
        : el("input", Object.assign({id: "opt-" + name, name},
              props, {value: params.get(name) || props.value || ""}));
    return [el("label", {}, label, " ", input), input];
  };
  const [stepsL, steps] = option("steps", {type: "number", min: 1, value: "128"}, "steps");
  const [paramL, param] = option("param", {tag: "select", options: ["", "fft", "pixel", "maco"]},
                                 "parameterisation");
  const [trL, transforms] = option("transforms", {tag: "select", options: ["", "none"]},
                                   "transforms");
  const [batchL, batch] = option("batch", {type: "number", min: 1, value: "1"}, "batch");
  const [seedL, seed] = option("seed", {type: "number", min: 0, placeholder: "random"}, "seed");
  const [lrL, lr] = option("lr", {type: "number", step: "any", min: 0, placeholder: "default"},
                           "lr");
  const [sizeL, size] = option("size", {type: "number", min: 0, placeholder: "model's"}, "size");
  const submit = el("a", {id: "render", className: "button primary", href: "#"}, "Render");

  const state = () => ({model: pickModel.value, objective: text.value.trim(),
                        steps: steps.value, param: param.value, transforms: transforms.value,
                        batch: batch.value === "1" ? "" : batch.value, seed: seed.value,
                        lr: lr.value, size: size.value});
  const sync = () => {
    const q = query(state());
    submit.href = "#/render?" + q;
    history.replaceState(null, "", "#/editor?" + q);
  };

  append(view, el("h1", {}, "Objective editor"),
    el("div", {className: "editor"},
      el("label", {}, "model ", pickModel),
      el("div", {className: "objective-box"}, text, completions, check),
      el("fieldset", {className: "presets"}, el("legend", {}, "presets"),
         el("label", {}, "layer ", layerPick), el("label", {}, "unit ", unitPick),
         el("label", {}, "class ", classPick),
         Object.keys(PRESETS).map(name => el("button", {type: "button",
             className: "preset", dataset: {preset: name},
             onclick: () => {
               const s = {layer: layerText(layerPick.value || ""), unit: unitPick.value || 0,
                          cls: classPick.value || 0};
               text.value = PRESETS[name](s);
               if (name === "diversity" && Number(batch.value) < 2) batch.value = "4";
               changed();
             }}, name))),
      el("fieldset", {className: "options"}, el("legend", {}, "options"),
         stepsL, paramL, trL, batchL, seedL, lrL, sizeL),
      el("p", {}, submit)),
    el("details", {className: "help"}, el("summary", {}, "syntax"),
       el("pre", {}, "channel(conv2, 5) + 0.5 * prob(7) - 0.01 * tv()\n" +
          "neuron(layer, c[, x, y])  channel(layer, c)  layer(layer)\n" +
          "logit(c)  prob(c)  diversity(layer)  tv()  l1()  l2()\n" +
          "term(..., batch=i) targets image i of the batch")));

  pickModel.addEventListener("change", () => {
    location.hash = "#/editor?" + query(Object.assign(state(), {objective: ""}));
  });

  let timer = null;
  let seq = 0;
  const validate = async () => {
    const mine = ++seq;
    check.dataset.state = "checking";
    const request = paramsToRequest(new URLSearchParams(query(state())));
    try {
      const job = await call("Visualizer/SubmitJob", {request, validateOnly: true}, signal);
      if (mine !== seq) return;
      clear(check).appendChild(el("p", {className: "ok"}, "✓ ", el("code", {}, job.objective),
          " · " + job.totalSteps + " steps"));
      check.dataset.state = "ok";
      delete check.dataset.column;
    } catch (error) {
      if (mine !== seq || error.name === "AbortError") return;
      showError(check, text.value, error);
    }
  };
  const changed = () => {
    sync();
    complete(text, layers, completions, changed);
    clearTimeout(timer);
    timer = setTimeout(validate, 250);
  };
  for (const input of [text, steps, param, transforms, batch, seed, lr, size]) {
    input.addEventListener("input", changed);
  }
  text.addEventListener("click", () => complete(text, layers, completions, changed));
  text.addEventListener("keydown", event => {
    if (event.key === "Tab" && completions.firstChild) {
      event.preventDefault();
      completions.firstChild.click();
    } else if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      location.hash = submit.getAttribute("href");
    }
  });
  signal.addEventListener("abort", () => clearTimeout(timer));
  sync();
  await validate();
}

// The error under the objective, with a caret at the column the server
// names ("column 12: expected ..."), when it names one.
function showError(check, source, error) {
  clear(check);
  check.dataset.state = "error";
  const match = /column (\d+)/.exec(error.message || "");
  check.appendChild(errorBox(error));
  if (match) {
    const column = Number(match[1]);
    check.dataset.column = String(column);
    const marker = el("pre", {className: "caret", id: "error-caret"},
                      source.split("\n")[0] + "\n" + " ".repeat(Math.max(0, column - 1)) + "^");
    check.appendChild(marker);
  } else {
    delete check.dataset.column;
  }
}

// Layer names that complete the word before the caret.
function complete(text, layers, list, changed) {
  clear(list);
  const before = text.value.slice(0, text.selectionStart);
  // The layer path being typed as the first argument: anything up to a
  // separator (a path needing quotes, "block-1", is completed quoted).
  const word = /[^\s(),'"]*$/.exec(before)[0];
  if (!word || !/\(\s*[^\s(),'"]*$/.test(before)) return;
  const hits = layers.filter(l => l.path.startsWith(word) && l.path !== word).slice(0, 8);
  for (const layer of hits) {
    list.appendChild(el("li", {}, el("button", {type: "button", className: "completion",
        onclick: () => {
          const start = text.selectionStart - word.length;
          text.value = text.value.slice(0, start) + layerText(layer.path) +
                       text.value.slice(text.selectionStart);
          text.focus();
          text.selectionStart = text.selectionEnd = start + layerText(layer.path).length;
          changed();
        }}, layer.path, " ", el("span", {className: "kind"}, layer.kind + " · " + layer.channels))));
  }
}
