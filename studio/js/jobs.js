// The queue and the server: jobs (newest first) with cancel, and the
// server's statistics; refreshed every two seconds while shown.
import {call, stream} from "./api.js";
import {el, append, clear, errorBox, bytesText, href} from "./dom.js";
import {showResult} from "./render.js";

const LIVE = new Set(["JOB_STATE_QUEUED", "JOB_STATE_RUNNING"]);

const stateName = s => String(s || "").replace("JOB_STATE_", "").toLowerCase();

export async function jobsPage(view, route, signal) {
  const stats = el("section", {id: "stats"});
  const jobs = el("section", {id: "jobs"});
  const mine = el("input", {type: "checkbox", id: "only-live"});
  append(view, el("h1", {}, "Jobs & server"),
         el("h2", {}, "Jobs"), el("label", {}, mine, " only queued and running"), jobs,
         el("h2", {}, "Server"), stats);
  const refresh = async () => {
    const [list, s] = await Promise.all([
      call("Visualizer/ListJobs", {pageSize: 100}, signal),
      call("Visualizer/GetServerStats", {}, signal)]);
    clear(jobs).appendChild(jobTable((list.jobs || []).filter(
        j => !mine.checked || LIVE.has(j.state)), refresh));
    clear(stats).appendChild(statsTable(s));
    view.dataset.jobs = String((list.jobs || []).length);
  };
  mine.addEventListener("change", refresh);
  await refresh();
  const loop = async () => {
    while (!signal.aborted) {
      await new Promise(resolve => setTimeout(resolve, 2000));
      if (signal.aborted) return;
      try { await refresh(); } catch (error) { if (error.name === "AbortError") return; }
    }
  };
  loop();
}

function jobTable(jobs, refresh) {
  return el("table", {className: "list", id: "job-table"},
    el("tr", {}, ["job", "owner", "state", "model", "objective", "steps", "created", ""]
        .map(h => el("th", {}, h))),
    jobs.map(j => el("tr", {className: "job-row", dataset: {job: j.id, state: stateName(j.state)}},
      el("td", {}, el("a", {href: href("job", j.id)}, j.id)),
      el("td", {}, j.owner),
      el("td", {className: "state"}, stateName(j.state), j.cached ? " (cached)" : ""),
      el("td", {}, j.model),
      el("td", {}, el("code", {}, j.objective)),
      el("td", {}, j.stepsDone + " / " + j.totalSteps),
      el("td", {}, j.createTime ? new Date(j.createTime).toLocaleTimeString() : ""),
      el("td", {}, LIVE.has(j.state) ? el("button", {className: "cancel-job",
          onclick: async event => {
            event.target.disabled = true;
            try {
              await call("Visualizer/CancelJob", {id: j.id});
            } catch (error) {
              event.target.parentNode.appendChild(errorBox(error));
            }
            await refresh();
          }}, "Cancel") : null))));
}

function statsTable(s) {
  const row = (k, v) => el("tr", {}, el("th", {}, k), el("td", {}, String(v)));
  return el("table", {className: "stats"},
    row("queued jobs", s.queuedJobs),
    row("queue by priority", (s.queueDepth || []).map(q => q.priority + ": " + q.jobs).join(", ") || "empty"),
    row("running jobs", s.runningJobs),
    row("submitted", s.jobsSubmitted), row("succeeded", s.jobsSucceeded),
    row("failed", s.jobsFailed), row("cancelled", s.jobsCancelled),
    row("expired", s.jobsExpired),
    row("cache hits / misses", s.cacheHits + " / " + s.cacheMisses),
    row("results kept", s.resultsStored + " (" + bytesText(s.resultBytes) + ")"),
    row("datasets", s.datasets + " (" + bytesText(s.datasetBytes) + ")"),
    row("heap in use", bytesText(s.heapInUseBytes)),
    row("default precision", s.defaultPrecision),
    (s.devices || []).map(d => row("device " + d.device,
        d.runningJobs + " running · " + Number(d.imageStepsPerSecond).toFixed(1) +
        " image-steps/s · " + d.modelsLoaded + " models loaded")));
}

// One job: its state, cancel while it is live, its progress, its result.
export async function jobPage(view, route, signal) {
  const id = route.parts[1];
  let job = await call("Visualizer/GetJob", {id, includeResult: true}, signal);
  const state = el("p", {id: "job-state", dataset: {state: stateName(job.state)}});
  const cancel = el("button", {id: "cancel", disabled: !LIVE.has(job.state)}, "Cancel");
  const result = el("section", {id: "result"});
  append(view, el("h1", {}, "Job " + id),
         el("p", {className: "meta"}, "model ", el("a", {href: href("model", job.model)}, job.model),
            " · ", el("code", {}, job.objective), " · owner " + job.owner),
         el("div", {className: "toolbar"}, state, cancel), result);
  const say = j => {
    state.textContent = stateName(j.state) + " · " + j.stepsDone + " / " + j.totalSteps +
                        " steps" + (j.errorMessage ? " · " + j.errorMessage : "");
    state.dataset.state = stateName(j.state);
  };
  say(job);
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try { say(await call("Visualizer/CancelJob", {id})); }
    catch (error) { view.appendChild(errorBox(error)); }
  });
  if (LIVE.has(job.state)) {
    try {
      await stream("Visualizer/WatchJob", {id}, (kind, data) => {
        if (kind === "message" && data.progress) {
          state.textContent = "running · " + data.progress.step + " / " +
                              data.progress.totalSteps + " steps";
        }
      }, signal);
    } catch (error) {
      if (error.name === "AbortError") return;
    }
    job = await call("Visualizer/GetJob", {id, includeResult: true}, signal);
    say(job);
    cancel.disabled = true;
  }
  if (job.result) {
    const model = await call("Visualizer/GetModel", {name: job.model}, signal);
    showResult(result, job.result, model, job.cached);
  }
}
