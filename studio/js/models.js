// The hosted models: name, version, card (input geometry, classes), size,
// hash, state; and an upload form (the server lets uploaders and admins in).
import {call, upload, sha256Hex} from "./api.js";
import {el, append, bytesText, errorBox, href} from "./dom.js";

export async function modelsPage(view, route, signal) {
  const {models = []} = await call("Visualizer/ListModels", {}, signal);
  const rows = models.map(m => {
    const input = m.input || {};
    const classes = m.classNames || [];
    return el("tr", {className: "model-row", dataset: {model: m.name}},
      el("td", {}, el("a", {href: href("model", m.name), className: "model-name"}, m.name)),
      el("td", {}, m.version),
      el("td", {}, input.channels + " × " + input.height + " × " + input.width),
      el("td", {className: "classes"}, classes.length + " classes",
         classes.length ? el("span", {className: "class-list"},
             ": ", classes.slice(0, 12).map((c, i) => [i ? ", " : "",
                 el("span", {className: "class-name"}, c)]),
             classes.length > 12 ? ", …" : "") : null),
      el("td", {}, bytesText(m.memoryBytes)),
      el("td", {}, el("code", {title: m.contentHash}, (m.contentHash || "").slice(0, 12))),
      el("td", {}, String(m.state || "").replace("MODEL_STATE_", "").toLowerCase()),
      el("td", {}, el("a", {href: "#/editor?model=" + encodeURIComponent(m.name)}, "objective…")));
  });
  append(view,
    el("h1", {}, "Models"),
    el("table", {id: "models", className: "list"},
       el("thead", {}, el("tr", {}, ["name", "version", "input C × H × W", "classes",
                                     "size", "hash", "state", ""].map(h => el("th", {}, h)))),
       el("tbody", {}, rows)),
    models.length === 0 ? el("p", {}, "The server hosts no model.") : null,
    uploadForm());
  view.dataset.models = String(models.length);
}

function uploadForm() {
  const name = el("input", {id: "upload-name", placeholder: "name (default: the card's)",
                            pattern: "[A-Za-z0-9_-]{1,64}"});
  const file = el("input", {id: "upload-file", type: "file", accept: ".pt"});
  const card = el("input", {id: "upload-card", type: "file", accept: ".json"});
  const out = el("div", {id: "upload-result"});
  const form = el("form", {className: "upload"},
    el("h2", {}, "Upload a model"),
    el("p", {className: "meta"}, "A TorchScript file and its model card; the server " +
       "checks it and serves it as the next version of its name (uploader or admin role)."),
    el("label", {}, "model.pt ", file), el("label", {}, "card.json ", card),
    el("label", {}, "name ", name), el("button", {type: "submit"}, "Upload"), out);
  form.addEventListener("submit", async event => {
    event.preventDefault();
    out.textContent = "";
    const f = file.files[0];
    if (!f) { out.appendChild(errorBox("choose a model file")); return; }
    try {
      const header = {name: name.value.trim(), sizeBytes: String(f.size),
                      sha256: await sha256Hex(f),
                      cardJson: card.files[0] ? await card.files[0].text() : ""};
      out.textContent = "uploading…";
      const reply = await upload("Visualizer/UploadModel", {header}, f);
      out.textContent = "";
      append(out, el("p", {}, reply.alreadyPresent ? "already served as " : "now serving ",
          el("a", {href: href("model", reply.model.name)}, reply.model.name),
          " version " + reply.model.version));
    } catch (error) {
      out.textContent = "";
      out.appendChild(errorBox(error));
    }
  });
  return form;
}
