// Building the page. Every text, and every name that comes from a model, a
// card, a layer, a dataset or a user, goes in as a text node; no property
// or call of this page parses HTML from a string.

// el("a", {href: "#/models", className: "x", onclick: f}, "text", child...)
export function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.appendChild(child instanceof Node ? child
                                           : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

// A PNG the API sent (base64 in JSON) as an <img>.
export function png(base64, props) {
  return el("img", Object.assign({src: "data:image/png;base64," + base64}, props));
}

export function bytesOf(base64) {
  const text = atob(base64 || "");
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes;
}

// A featviz.v1.Tensor (float32, little-endian) as {shape, data}.
export function tensor(t) {
  if (!t || !t.data) return null;
  const bytes = bytesOf(t.data);
  const view = new DataView(bytes.buffer);
  const data = new Float32Array(bytes.length / 4);
  for (let i = 0; i < data.length; i++) data[i] = view.getFloat32(4 * i, true);
  return {shape: (t.shape || []).map(Number), data};
}

export function errorBox(error) {
  const code = error && error.code ? error.code + ": " : "";
  return el("p", {className: "error", role: "alert"},
            code + (error && error.message ? error.message : String(error)));
}

export function bytesText(n) {
  n = Number(n || 0);
  if (n < 1024) return n + " B";
  if (n < 1 << 20) return (n / 1024).toFixed(1) + " KiB";
  if (n < 1 << 30) return (n / (1 << 20)).toFixed(1) + " MiB";
  return (n / (1 << 30)).toFixed(2) + " GiB";
}

// A download link for a Blob.
export function download(label, blob, filename) {
  const a = el("a", {href: URL.createObjectURL(blob), download: filename,
                     className: "button"}, label);
  return a;
}

// Route links: "#/unit/" + parts, each part URI-encoded.
export function href(...parts) {
  return "#/" + parts.map(p => encodeURIComponent(String(p))).join("/");
}
