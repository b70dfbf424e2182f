// One loss curve per objective term on a <canvas>: the term values of the
// progress events against the step.

const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
                 "#8c564b", "#e377c2", "#17becf"];

export function colour(i) { return COLOURS[i % COLOURS.length]; }

// series: [{step, values: [v0, v1, ...]}], totalSteps: the x axis' end.
export function drawCurves(canvas, series, totalSteps) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 34;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, 4, w - pad - 4, h - pad);
  if (series.length === 0) return;
  const terms = series[0].values.length;
  let lo = Infinity, hi = -Infinity;
  for (const point of series) {
    for (const v of point.values) {
      if (Number.isFinite(v)) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    }
  }
  if (!(hi > lo)) { hi = lo + 1; lo = lo - 1; }
  const x = step => pad + (w - pad - 4) * step / Math.max(1, totalSteps);
  const y = v => 4 + (h - pad) * (1 - (v - lo) / (hi - lo));
  ctx.fillStyle = "#444";
  ctx.font = "11px sans-serif";
  ctx.fillText(hi.toPrecision(3), 2, 14);
  ctx.fillText(lo.toPrecision(3), 2, h - pad);
  ctx.fillText("step " + totalSteps, w - 60, h - 8);
  for (let t = 0; t < terms; t++) {
    ctx.strokeStyle = colour(t);
    ctx.lineWidth = 2;
    ctx.beginPath();
    series.forEach((point, i) => {
      const v = point.values[t];
      if (i === 0) ctx.moveTo(x(point.step), y(v));
      else ctx.lineTo(x(point.step), y(v));
    });
    ctx.stroke();
    if (series.length === 1) {
      ctx.fillStyle = colour(t);
      ctx.fillRect(x(series[0].step) - 2, y(series[0].values[t]) - 2, 4, 4);
    }
  }
}
