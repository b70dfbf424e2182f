// The JSON gateway of featviz-server (docs/studio.md): POST /api/SERVICE/METHOD
// with a JSON body. The bearer token lives in sessionStorage and travels
// only in the Authorization header, never in a URL.

const TOKEN_KEY = "featviz.token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// An error the server answered: HTTP status, gRPC code name and message.
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function headers(extra) {
  const h = Object.assign({}, extra);
  const t = token();
  if (t) h["Authorization"] = "Bearer " + t;
  return h;
}

function path(method) {
  return "/api/" + (method.includes(".") ? method : "featviz.v1." + method);
}

async function errorOf(response) {
  let body = {};
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  return new ApiError(response.status, body.code || "HTTP_" + response.status,
                      body.message || response.statusText);
}

// A unary call: "Visualizer/ListModels", {} -> the response message.
export async function call(method, request, signal) {
  const response = await fetch(path(method), {
    method: "POST", signal,
    headers: headers({"Content-Type": "application/json"}),
    body: JSON.stringify(request || {}),
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// A server-streaming call: onEvent(kind, data) for every Server-Sent Event
// ("metadata", "message", "end", "error"). Resolves when the stream ends;
// aborting `signal` closes it (the server then cancels the call: a Render's
// job with it).
export async function stream(method, request, onEvent, signal) {
  const response = await fetch(path(method), {
    method: "POST", signal,
    headers: headers({"Content-Type": "application/json",
                      "Accept": "text/event-stream"}),
    body: JSON.stringify(request || {}),
  });
  if (!response.ok) throw await errorOf(response);
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data.push(line.slice(6));
      }
      if (data.length === 0) continue;  // a keep-alive comment
      const parsed = JSON.parse(data.join("\n"));
      onEvent(kind, parsed);
      if (kind === "error") {
        throw new ApiError(0, parsed.code, parsed.message);
      }
    }
  }
}

// A client-streaming upload: the first request message as JSON and a file.
export async function upload(method, request, file) {
  const form = new FormData();
  form.append("request", new Blob([JSON.stringify(request)],
                                  {type: "application/json"}), "request.json");
  form.append("file", file, file.name || "file");
  const response = await fetch(path(method), {
    method: "POST", headers: headers({}), body: form,
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

// SHA-256 of a Blob, lowercase hex (uploads declare it).
export async function sha256Hex(blob) {
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest),
                    b => b.toString(16).padStart(2, "0")).join("");
}
