// featviz studio: a single page app; the hash is the route and carries the
// request, so that an address is a permalink to the same view.
import {setToken, token} from "./api.js";
import {clear, el, errorBox} from "./dom.js";
import {modelsPage} from "./models.js";
import {modelPage, layerSheetPage} from "./model.js";
import {editorPage} from "./editor.js";
import {renderPage} from "./render.js";
import {unitPage, circuitPage} from "./unit.js";
import {jobsPage, jobPage} from "./jobs.js";

const view = document.getElementById("view");
let leaving = null;  // The current page's AbortController.

// "#/unit/m/conv2/3?x=1" -> {parts: ["unit", "m", "conv2", "3"], params}
export function parseRoute(hash) {
  const text = (hash || "").replace(/^#\/?/, "");
  const [path, query] = text.split("?", 2);
  const parts = path.split("/").filter(p => p !== "").map(decodeURIComponent);
  return {parts, params: new URLSearchParams(query || "")};
}

const routes = {
  models: () => modelsPage,
  model: parts => (parts.length >= 4 && parts[2] === "layer") ? layerSheetPage
                                                               : modelPage,
  editor: () => editorPage,
  render: () => renderPage,
  unit: () => unitPage,
  circuit: () => circuitPage,
  jobs: () => jobsPage,
  job: () => jobPage,
};

async function show() {
  if (leaving) leaving.abort();
  leaving = new AbortController();
  const route = parseRoute(location.hash);
  if (route.parts.length === 0) route.parts = ["models"];
  const pick = routes[route.parts[0]];
  for (const a of document.querySelectorAll("[data-nav]")) {
    a.classList.toggle("current", a.dataset.nav === route.parts[0]);
  }
  clear(view);
  view.dataset.state = "loading";
  view.dataset.page = route.parts[0];
  try {
    if (!pick) throw new Error("no page " + route.parts[0]);
    await pick(route.parts)(view, route, leaving.signal);
    if (view.dataset.state === "loading") view.dataset.state = "ready";
  } catch (error) {
    if (error.name === "AbortError") return;
    view.appendChild(errorBox(error));
    if (error.status === 401 || error.status === 403) {
      view.appendChild(el("p", {className: "meta"}, error.status === 401
          ? "Paste your token in the Token box above: it is kept for this tab only."
          : "Your token's role does not allow this; ask the server's operator."));
    }
    view.dataset.state = "error";
    if (error.status) view.dataset.httpStatus = String(error.status);
  }
}

function setUpToken() {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  const state = document.getElementById("token-state");
  const say = () => { state.textContent = token() ? "token set" : "no token"; };
  form.addEventListener("submit", event => {
    event.preventDefault();
    setToken(input.value.trim());
    input.value = "";
    say();
    show();
  });
  say();
}

setUpToken();
window.addEventListener("hashchange", show);
show();
