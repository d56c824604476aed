// Jobs: the list (state, waiting reason, attempts) and a job's page (attempts, events, outputs,
// live logs, cancel).
import { useEffect, useRef, useState } from "preact/hooks";
import { api, q, enc } from "./api.js";
import {
  html, usePoll, Link, Badge, ErrorPage, Problem, Loading, Action, TERMINAL, when, duration, bytes,
} from "./ui.js";

const STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];

export function JobsPage({ me }) {
  const [state, setState] = useState("");
  const admin = me.role === "admin";
  const { data: jobs, error } = usePoll(() => api(`/jobs${q({ limit: 200, state: state || undefined })}`), 2000, [
    state,
  ]);
  if (!jobs && error) return html`<${ErrorPage} error=${error} />`;
  return html`<h1>${admin ? "Jobs" : "My jobs"}</h1>
    <p class="hint">
      Submit with <code>coop submit job.yaml</code>; this list follows every 2 s.
      ${admin ? " As an admin you see every member's jobs." : ""}
    </p>
    <label class="filter"
      >State
      <select value=${state} onChange=${(e) => setState(e.target.value)} name="state">
        <option value="">all</option>
        ${STATES.map((s) => html`<option value=${s}>${s}</option>`)}
      </select></label
    >
    <${Problem} error=${error} />
    ${!jobs
      ? html`<${Loading} />`
      : jobs.length === 0
        ? html`<p class="empty">No jobs${state ? ` ${state}` : ""} yet.</p>`
        : html`<table class="jobs">
            <thead>
              <tr>
                <th>Job</th><th>Name</th>${admin && html`<th>Member</th>`}<th>State</th><th>Waiting reason / why</th>
                <th>Attempts</th><th>GPUs</th><th>Submitted</th><th>Ran</th>
              </tr>
            </thead>
            <tbody>
              ${jobs.map(
                (j) => html`<tr data-job-id=${j.id} data-state=${j.state}>
                  <td><${Link} to=${`/jobs/${j.id}`}>#${j.id}</${Link}></td>
                  <td>${j.name}${j.array_id !== null && j.array_id !== undefined
                    ? html` <span class="small">[${j.array_index}] of #${j.array_id}</span>`
                    : ""}</td>
                  ${admin && html`<td>${j.member}</td>`}
                  <td><${Badge} state=${j.state} /></td>
                  <td class="reason">${j.reason || ""}</td>
                  <td>${j.attempts}</td>
                  <td>${j.gpus}${j.nodes > 1 ? ` × ${j.nodes} nodes` : ""}</td>
                  <td>${when(j.submitted_at)}</td>
                  <td>${duration(j.started_at, j.finished_at)}</td>
                </tr>`,
              )}
            </tbody>
          </table>`}`;
}

export function JobPage({ me, id }) {
  const valid = /^[1-9][0-9]{0,17}$/.test(id);
  const { data: job, error, reload } = usePoll(
    () => (valid ? api(`/jobs/${enc(id)}`) : Promise.reject({ status: 404, message: `"${id}" is not a job id`, fix: "job ids are whole numbers, as coop status shows them" })),
    (j) => (j ? (TERMINAL.has(j.state) ? 5000 : 1000) : 0),
    [id],
  );
  const nodes = usePoll(() => api("/nodes"), 0, []);
  if (!job && error) return html`<${ErrorPage} error=${error} what=${`Job ${id}`} />`;
  if (!job) return html`<${Loading} />`;
  const nodeName = (nid) => (nodes.data || []).find((n) => n.id === nid)?.name ?? (nid ? `node ${nid}` : "");
  const cancel = async () => {
    await api(`/jobs/${job.id}/cancel`, { method: "POST" });
    await reload();
  };
  return html`<article class="job" data-job-id=${job.id} data-state=${job.state}>
    <h1>#${job.id} ${job.name} <${Badge} state=${job.state} /></h1>
    <${Problem} error=${error} />
    ${job.reason && html`<p class="reason" id="job-reason">${job.reason}</p>`}
    ${!TERMINAL.has(job.state) &&
    html`<p><${Action} run=${cancel} confirm=${`Cancel job ${job.id}?`} danger id="cancel">Cancel job</${Action}></p>`}
    <dl class="facts">
      <dt>Member</dt><dd>${job.member}</dd>
      <dt>Kind</dt><dd>${job.kind}</dd>
      <dt>GPUs</dt><dd>${job.gpus} per node${job.nodes > 1 ? `, ${job.nodes} nodes` : ""}</dd>
      <dt>Priority</dt><dd>${job.priority}${job.preemptible ? ", preemptible" : ""}</dd>
      <dt>Attempts</dt><dd id="job-attempts">${job.attempts} (retries allowed: ${job.retries})</dd>
      <dt>Exit code</dt><dd>${job.exit_code ?? "–"}</dd>
      <dt>Submitted</dt><dd>${when(job.submitted_at)}</dd>
      <dt>Started</dt><dd>${when(job.started_at)}</dd>
      <dt>Finished</dt><dd>${when(job.finished_at)}</dd>
    </dl>
    <h2>Logs</h2>
    <${Logs} job=${job} />
    <h2>Outputs</h2>
    <${Outputs} job=${job} />
    <h2>Attempts</h2>
    ${job.attempts_detail.length === 0
      ? html`<p class="empty">Not started yet.</p>`
      : html`<table class="attempts">
          <thead><tr><th>#</th><th>State</th><th>Where</th><th>Started</th><th>Finished</th><th>Exit</th><th>Reason</th></tr></thead>
          <tbody>
            ${job.attempts_detail.map(
              (a) => html`<tr data-attempt=${a.number}>
                <td>${a.number}</td><td><${Badge} state=${a.state} /></td>
                <td>${a.backend === "ray" ? nodeName(a.node_id) : `${a.backend}${a.pool_id ? ` pool ${a.pool_id}` : ""}`}</td>
                <td>${when(a.started_at)}</td><td>${when(a.finished_at)}</td><td>${a.exit_code ?? ""}</td><td>${a.reason || ""}</td>
              </tr>`,
            )}
          </tbody>
        </table>`}
    <h2>Events</h2>
    <table class="events">
      <thead><tr><th>When</th><th>Attempt</th><th>From</th><th>To</th><th>Why</th></tr></thead>
      <tbody>
        ${job.events.map(
          (e) => html`<tr>
            <td>${when(e.at)}</td><td>${e.attempt ?? ""}</td><td>${e.from_state || ""}</td><td>${e.to_state}</td><td>${e.reason}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </article>`;
}

const MAX_SHOWN = 2_000_000; // characters of log kept on the page; older text is dropped

/** Follows the log as `coop logs -f` does: reads from where it stopped, every second, and moves on to
 * the next attempt after a retry; stops once the API says nothing more will come. */
function Logs({ job }) {
  const [text, setText] = useState("");
  const [status, setStatus] = useState("waiting for the job to start");
  const [rank, setRank] = useState(0);
  const pre = useRef(null);
  const jobRef = useRef(job);
  jobRef.current = job;
  useEffect(() => {
    let alive = true;
    let timer;
    let attempt = 0;
    let offset = 0;
    setText("");
    const append = (data) => {
      if (!data) return;
      const el = pre.current;
      const atBottom = !el || el.scrollHeight - el.scrollTop - el.clientHeight < 40;
      setText((t) => {
        const next = t + data;
        return next.length > MAX_SHOWN ? next.slice(next.length - MAX_SHOWN) : next;
      });
      if (atBottom) requestAnimationFrame(() => el && (el.scrollTop = el.scrollHeight));
    };
    const tick = async () => {
      const current = jobRef.current;
      try {
        if (attempt === 0) {
          attempt = Math.min(current.attempts, 1);
          if (attempt === 0) {
            setStatus(TERMINAL.has(current.state) ? "the job never ran" : "waiting for the job to start");
            if (TERMINAL.has(current.state)) return;
            timer = setTimeout(tick, 1000);
            return;
          }
        }
        for (;;) {
          const chunk = await api(`/jobs/${current.id}/logs${q({ offset, attempt, rank })}`);
          if (!alive) return;
          append(chunk.data);
          offset = chunk.next_offset;
          if (!chunk.eof) {
            if (chunk.data) continue;
            setStatus(`following attempt ${attempt}`);
            timer = setTimeout(tick, 1000);
            return;
          }
          const fresh = await api(`/jobs/${current.id}`);
          if (fresh.attempts > attempt) {
            attempt += 1;
            offset = 0;
            append(`--- attempt ${attempt} ---\n`);
            continue;
          }
          setStatus("complete: the job has ended");
          return;
        }
      } catch (err) {
        if (!alive) return;
        setStatus(`could not read the log: ${err.message}; trying again`);
        timer = setTimeout(tick, 3000);
      }
    };
    tick();
    return () => {
      alive = false;
      clearTimeout(timer);
    };
  }, [job.id, rank]);
  return html`<div class="logs">
    ${job.nodes > 1 &&
    html`<label
      >Rank
      <select value=${rank} onChange=${(e) => setRank(Number(e.target.value))}>
        ${Array.from({ length: job.nodes }, (_, r) => html`<option value=${r}>${r}</option>`)}
      </select></label
    >`}
    <p class="small" id="log-status">${status}</p>
    <pre id="log" ref=${pre} tabindex="0">${text}</pre>
  </div>`;
}

function Outputs({ job }) {
  const sets = job.outputs || [];
  if (!sets.length)
    return html`<p class="empty" id="outputs">
      ${TERMINAL.has(job.state) ? "No outputs: nothing was written to $COOP_OUTPUT_DIR, or it is still uploading." : "Outputs appear here once the job has sent them (files written to $COOP_OUTPUT_DIR)."}
    </p>`;
  return html`<div id="outputs">
    ${sets.map(
      (s) => html`<section class="output-set">
        <h3>Attempt ${s.attempt}: ${s.files} file${s.files === 1 ? "" : "s"}, ${bytes(s.bytes)}</h3>
        <ul>
          ${s.items.map(
            (f) => html`<li>
              <${Action} run=${() => download(job.id, f)} data-file=${f.path}>Download</${Action}>
              <code>${f.path}</code> <span class="small">${bytes(f.size)} · sha256 ${f.sha256?.slice(0, 12) ?? ""}</span>
            </li>`,
          )}
        </ul>
      </section>`,
    )}
  </div>`;
}

/** The file comes with the token in a header (never in a link), then is saved from memory. */
async function download(jobId, file) {
  const response = await api(`/jobs/${jobId}/files/${file.id}`, { raw: true });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = file.path.split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
