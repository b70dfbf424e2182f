// A render request in the URL (the permalink) and as the API's
// featviz.v1.RenderRequest JSON. The URL keeps only what the user chose.

export const OPTION_NAMES = ["model", "objective", "steps", "param", "transforms",
                             "batch", "seed", "lr", "size", "every"];

export function paramsToRequest(params) {
  const number = name => Number(params.get(name) || 0);
  const request = {
    model: params.get("model") || "",
    objectiveText: params.get("objective") || "",
    image: {batch: String(number("batch") || 1)},
    optimizer: {steps: String(number("steps") || 128)},
    transforms: {preset: params.get("transforms") === "none" ? "PRESET_NONE"
                                                             : "PRESET_DEFAULT"},
    output: {png: true, tensor: true, previewPng: true,
             progressEvery: String(number("every") || 0)},
  };
  const param = params.get("param");
  if (param) request.image.parameterization = "PARAMETERIZATION_" + param.toUpperCase();
  if (number("size")) request.image.size = String(number("size"));
  if (number("lr")) request.optimizer.lr = number("lr");
  if (params.get("seed")) request.seed = params.get("seed");
  return request;
}

export function query(params) {
  const out = new URLSearchParams();
  for (const name of OPTION_NAMES) {
    const v = params.get ? params.get(name) : params[name];
    if (v !== null && v !== undefined && v !== "") out.set(name, v);
  }
  return out.toString();
}

// A .npy file (float32, C order) of a tensor {shape, data}.
export function npy(t) {
  const shape = "(" + t.shape.join(", ") + (t.shape.length === 1 ? ",)" : ")");
  let header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }";
  const total = 10 + header.length + 1;
  header += " ".repeat((64 - total % 64) % 64) + "\n";
  const bytes = new Uint8Array(10 + header.length + t.data.length * 4);
  bytes.set([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0]);
  new DataView(bytes.buffer).setUint16(8, header.length, true);
  for (let i = 0; i < header.length; i++) bytes[10 + i] = header.charCodeAt(i);
  const view = new DataView(bytes.buffer, 10 + header.length);
  t.data.forEach((v, i) => view.setFloat32(4 * i, v, true));
  return new Blob([bytes], {type: "application/octet-stream"});
}
