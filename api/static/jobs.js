// The job list: the tenant's jobs, newest first, refreshed every few seconds while any of them
// is queued or running (the open job's own event stream updates its row at once).

import { $, el, setProgress, setText } from "./dom.js";
import { canCancel, canRetry, clipsDone, fullTime, progressText, shortId, statusText, when } from "./format.js";

const PAGE = 25;
const MAX_PAGE = 200; // the API's largest page
const ACTIVE = ["queued", "running", "stitching"];

export class JobList {
  constructor(api, { onSelect, onJob, onCancel, onRetry }) {
    this.api = api;
    this.onSelect = onSelect;
    this.onJob = onJob; // every job seen, for status announcements
    this.onCancel = onCancel;
    this.onRetry = onRetry;
    this.limit = PAGE;
    this.rows = new Map(); // job id -> <tr>
    this.selected = null;
    this.timer = null;
    this.stopped = true;
  }

  init() {
    $("status-filter").addEventListener("change", () => {
      this.limit = PAGE;
      this.refresh();
    });
    $("refresh-jobs").addEventListener("click", () => this.refresh());
    $("more-jobs").addEventListener("click", () => {
      this.limit = Math.min(this.limit + PAGE, MAX_PAGE);
      this.refresh();
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && !this.stopped) this.refresh();
    });
  }

  start() {
    this.stopped = false;
    return this.refresh();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.rows.clear();
    $("job-rows").replaceChildren();
  }

  statuses() {
    const filter = $("status-filter").value;
    if (!filter) return [];
    return filter === "active" ? ACTIVE : [filter];
  }

  async refresh() {
    clearTimeout(this.timer);
    if (this.stopped) return;
    let active = false;
    try {
      const page = await this.api.listJobs({ status: this.statuses(), limit: this.limit });
      if (this.stopped) return;
      setText("jobs-error", "");
      this.render(page.jobs);
      $("more-jobs").hidden = !page.next_cursor || this.limit >= MAX_PAGE;
      active = page.jobs.some((job) => ACTIVE.includes(job.status));
      for (const job of page.jobs) this.onJob(job);
    } catch (error) {
      if (this.stopped) return;
      setText("jobs-error", `Could not load the jobs: ${error.message}`);
    }
    // quick while something moves; slow when idle or when nobody is looking
    const delay = document.hidden ? 30000 : active ? 2000 : 10000;
    this.timer = setTimeout(() => this.refresh(), delay);
  }

  render(jobs) {
    const body = $("job-rows");
    const rows = new Map();
    for (const job of jobs) {
      const row = this.rows.get(job.id) || this.makeRow(job);
      this.fill(row, job);
      rows.set(job.id, row);
    }
    // re-append in order; keeps focus on a button that stays
    body.append(...rows.values());
    for (const [id, row] of this.rows) if (!rows.has(id)) row.remove();
    this.rows = rows;
    $("jobs-empty").hidden = jobs.length > 0;
  }

  makeRow(job) {
    const id = shortId(job.id);
    const row = el("tr", { "data-job-id": job.id, role: "row" });
    const open = el("button", { type: "button", class: "link", "aria-label": `Show job ${id}`, onclick: () => this.onSelect(job.id) }, id);
    const cell = { role: "cell" };
    row.append(
      el("td", cell, open, el("div", { class: "prompt-excerpt" })),
      el("td", cell, el("span", { class: "badge" })),
      el("td", cell, el("progress", { "aria-label": `Progress of job ${id}` }), el("div", { class: "hint progress-text" })),
      el("td", cell, el("time")),
      el("td", { ...cell, class: "row-actions" }),
    );
    return row;
  }

  fill(row, job) {
    const id = shortId(job.id);
    const [jobCell, statusCell, progressCell, createdCell, actionsCell] = row.cells;
    const prompt = job.params.prompt || "";
    jobCell.querySelector(".prompt-excerpt").textContent = job.presenter ? `${job.presenter}: ${prompt}` : prompt;
    const badge = statusCell.querySelector(".badge");
    badge.textContent = statusText(job.status);
    badge.className = `badge status-${job.status}`;
    const p = job.progress;
    setProgress(progressCell.querySelector("progress"), job.status === "stitching" ? null : clipsDone(p), p.clips_total);
    progressCell.querySelector(".progress-text").textContent = progressText(job);
    const time = createdCell.querySelector("time");
    time.dateTime = job.created_at;
    time.textContent = when(job.created_at);
    time.title = fullTime(job.created_at);
    if (job.id === this.selected) row.setAttribute("aria-current", "true");
    else row.removeAttribute("aria-current");

    // rebuild the action only when it changes, so a focused button keeps its focus
    const action = canCancel(job) ? "cancel" : canRetry(job) ? "retry" : "";
    if (actionsCell.dataset.action !== action) {
      actionsCell.dataset.action = action;
      actionsCell.replaceChildren();
      if (action === "cancel") {
        actionsCell.append(el("button", { type: "button", "aria-label": `Cancel job ${id}`, onclick: () => this.onCancel(job.id) }, "Cancel"));
      } else if (action === "retry") {
        actionsCell.append(el("button", { type: "button", "aria-label": `Retry job ${id}`, onclick: () => this.onRetry(job.id) }, "Retry"));
      }
    }
  }

  // A fresher copy of one job (from its event stream, or an action's answer).
  update(job) {
    const row = this.rows.get(job.id);
    if (row) this.fill(row, job);
  }

  // A new job goes on top without waiting for the next refresh.
  add(job) {
    if (!this.rows.has(job.id)) {
      const row = this.makeRow(job);
      this.rows = new Map([[job.id, row], ...this.rows]);
      $("job-rows").prepend(row);
      $("jobs-empty").hidden = true;
    }
    this.update(job);
    this.refresh();
  }

  select(jobId) {
    this.selected = jobId;
    for (const [id, row] of this.rows) {
      if (id === jobId) row.setAttribute("aria-current", "true");
      else row.removeAttribute("aria-current");
    }
  }
}
