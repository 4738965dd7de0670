// One job in full: live progress from its event stream, cancel and retry, the segments
// finished so far (playable while the job still renders), the finished video, the history.

import { $, el, setProgress, setText } from "./dom.js";
import { EventFollower } from "./sse.js";
import {
  bytes,
  canCancel,
  canRetry,
  clipsDone,
  count,
  eventDetails,
  fullTime,
  progressText,
  seconds,
  shortId,
  statusText,
  when,
} from "./format.js";

const HISTORY_ROWS = 1000; // the newest ones; an hour-long render records thousands
const STREAM_TEXT = { connecting: "connecting…", open: "live", reconnecting: "reconnecting…", failed: "not live" };

export class JobDetail {
  constructor(api, { fps, onJob, onClose }) {
    this.api = api;
    this.fps = fps;
    this.onJob = onJob;
    this.onClose = onClose;
    this.job = null;
    this.follower = null;
    this.segments = [];
    this.playing = null; // index of the segment in the player
    this.resultFor = null;
    this.eventCount = 0;
    this.segmentTimer = null;
  }

  init() {
    $("close-detail").addEventListener("click", () => this.onClose());
    $("cancel-job").addEventListener("click", () => this.act("cancel"));
    $("retry-job").addEventListener("click", () => this.act("retry"));
    const player = $("segment-video");
    // play the segments one after another, and the next one as soon as it exists
    player.addEventListener("ended", () => {
      this.waitingForNext = true;
      this.playNext();
    });
    player.addEventListener("error", () => {
      if (player.getAttribute("src")) this.loadSegments(); // an expired URL: sign new ones
    });
  }

  get jobId() {
    return this.job ? this.job.id : this.pendingId || null;
  }

  async show(jobId) {
    if (this.jobId === jobId && !$("detail").hidden) return;
    this.close();
    this.pendingId = jobId;
    const section = $("detail");
    section.hidden = false;
    section.dataset.jobId = jobId;
    setText("detail-title", `Job ${shortId(jobId)}`);
    setText("detail-action-error", "");
    try {
      this.render(await this.api.getJob(jobId));
    } catch (error) {
      if (this.pendingId !== jobId) return;
      setText("detail-action-error", `Could not load job ${shortId(jobId)}: ${error.message}`);
      return;
    }
    this.follow();
  }

  close() {
    if (this.follower) this.follower.close();
    this.follower = null;
    this.job = null;
    this.pendingId = null;
    this.segments = [];
    this.playing = null;
    this.waitingForNext = false;
    this.resultFor = null;
    this.eventCount = 0;
    clearTimeout(this.segmentTimer);
    for (const id of ["output-video", "segment-video"]) {
      const video = $(id);
      video.pause();
      video.removeAttribute("src");
      video.load();
    }
    $("event-rows").replaceChildren();
    $("segment-list").replaceChildren();
    $("output").hidden = true;
    $("segments").hidden = true;
    const section = $("detail");
    section.hidden = true;
    delete section.dataset.jobId;
    delete section.dataset.status;
    delete section.dataset.stream;
  }

  // Follow the job's events (replayed from the start, then live) until it is final.
  follow(lastEventId = "") {
    if (this.follower) this.follower.close();
    const jobId = this.job.id;
    this.follower = new EventFollower(
      this.api,
      jobId,
      {
        onEvent: (event) => this.addEvent(event),
        onJob: (job) => {
          if (this.job && this.job.id === job.id) {
            this.render(job);
            this.onJob(job);
          }
        },
        onState: (state) => {
          $("detail").dataset.stream = state;
          setText("detail-stream", STREAM_TEXT[state] || "");
        },
      },
      lastEventId,
    ).start();
  }

  render(job) {
    const first = !this.job || this.job.id !== job.id;
    this.job = job;
    this.pendingId = null;
    const section = $("detail");
    section.dataset.status = job.status;
    const badge = setText("detail-status", statusText(job.status));
    badge.className = `badge status-${job.status}`;
    setText("detail-prompt", job.params.prompt);

    const p = job.progress;
    const bar = $("detail-progress");
    setProgress(bar, job.status === "stitching" ? null : clipsDone(p), p.clips_total);
    let text = progressText(job);
    if (p.last_checkpoint_clip !== null && p.last_checkpoint_clip !== undefined) {
      text += ` · last checkpoint at clip ${p.last_checkpoint_clip}`;
    }
    if (job.attempt > 1 || job.status === "failed") text += ` · attempt ${job.attempt} of ${job.max_attempts}`;
    setText("detail-progress-text", text);

    $("cancel-job").hidden = !canCancel(job);
    $("retry-job").hidden = !canRetry(job);
    const error = $("detail-error");
    error.hidden = !job.error;
    error.textContent = job.error || "";

    this.renderFacts(job);
    if (job.status === "succeeded") {
      $("segments").hidden = true; // the video holds them (and they may be gone)
      $("segment-video").pause();
      if (this.resultFor !== job.id) this.loadResult();
    } else {
      $("output").hidden = true;
      $("download-job").hidden = true;
      if (first) this.loadSegments();
    }
  }

  renderFacts(job) {
    const p = job.params;
    const facts = [
      ["Presenter", job.presenter],
      ["Size", p.width && p.height ? `${p.width} × ${p.height} (${p.size})` : p.size],
      ["Clips", `${job.progress.clips_total} of ${p.infer_frames} frames each`],
      ["Speech", speechText(p)],
      ["Script", p.script ? p.script.text : ""],
      ["Denoising steps", p.sample_steps],
      ["Seed", p.seed],
      ["Checkpoint every", p.checkpoint_every ? `${p.checkpoint_every} clip${p.checkpoint_every === 1 ? "" : "s"}` : ""],
      ["Priority", job.priority],
      ["Created", fullTime(job.created_at)],
      ["Started", fullTime(job.started_at)],
      ["Finished", fullTime(job.finished_at)],
      ["Job id", job.id],
    ];
    const list = $("detail-facts");
    list.replaceChildren();
    for (const [name, value] of facts) {
      if (value === null || value === undefined || value === "") continue;
      list.append(el("dt", {}, name), el("dd", name === "Script" ? { class: "script" } : {}, String(value)));
    }
  }

  addEvent(event) {
    const change = event.to_status ? `${event.from_status || "new"} → ${event.to_status}` : "";
    const row = el(
      "tr",
      { "data-event": event.event },
      el("td", {}, el("time", { datetime: event.at, title: fullTime(event.at) }, when(event.at))),
      el("td", {}, event.event),
      el("td", {}, change),
      el("td", {}, eventDetails(event)),
    );
    const body = $("event-rows");
    body.append(row);
    this.eventCount += 1;
    while (body.rows.length > HISTORY_ROWS) body.rows[0].remove();
    setText(
      "history-note",
      this.eventCount > HISTORY_ROWS ? `The newest ${HISTORY_ROWS} of ${this.eventCount} events.` : `${count(this.eventCount, "event")}.`,
    );
    if (event.event === "segment") {
      // a burst of events (a replay) asks once
      clearTimeout(this.segmentTimer);
      this.segmentTimer = setTimeout(() => this.loadSegments(), 200);
    }
  }

  async loadSegments() {
    const job = this.job;
    if (!job || job.status === "succeeded") return;
    let answer;
    try {
      answer = await this.api.segments(job.id);
    } catch (error) {
      return; // the next segment event asks again
    }
    if (!this.job || this.job.id !== job.id) return;
    this.segments = answer.segments;
    const list = $("segment-list");
    list.replaceChildren();
    for (const [i, segment] of this.segments.entries()) {
      const last = segment.first_clip + segment.clips;
      const clips = segment.clips === 1 ? `clip ${last}` : `clips ${segment.first_clip + 1}–${last}`;
      const label = `Segment ${segment.index + 1}: ${clips}, ${seconds(segment.frames / this.fps)}, ${bytes(segment.bytes)}`;
      list.append(
        el(
          "li",
          { "data-index": segment.index },
          el("button", { type: "button", class: "link", onclick: () => this.play(i, true) }, label),
          " ",
          el("a", { href: segment.url, download: `${shortId(job.id)}-segment-${segment.index + 1}.mp4` }, "download"),
        ),
      );
    }
    $("segments").hidden = this.segments.length === 0 || this.job.status === "succeeded";
    const player = $("segment-video");
    if (this.playing === null && this.segments.length) this.play(0, false);
    else if (this.playing !== null) {
      // keep the player on its segment, with a fresh URL (the list's may have been re-signed)
      if (this.waitingForNext) this.playNext();
      else if (player.error) this.play(this.playing, false);
    }
  }

  play(i, start) {
    const segment = this.segments[i];
    if (!segment) return;
    const player = $("segment-video");
    this.playing = i;
    this.waitingForNext = false;
    player.src = segment.url;
    player.dataset.index = segment.index;
    for (const item of $("segment-list").children) {
      if (Number(item.dataset.index) === segment.index) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    }
    if (start) player.play().catch(() => {});
  }

  playNext() {
    if (this.playing !== null && this.playing + 1 < this.segments.length) this.play(this.playing + 1, true);
  }

  async loadResult() {
    const job = this.job;
    this.resultFor = job.id;
    let result;
    try {
      result = await this.api.result(job.id);
    } catch (error) {
      this.resultFor = null;
      setText("detail-action-error", `Could not get the video: ${error.message}`);
      return;
    }
    if (!this.job || this.job.id !== job.id) return;
    const video = $("output-video");
    video.src = result.url;
    const link = $("download-job");
    link.href = result.url;
    link.download = `longtake-${shortId(job.id)}.mp4`;
    link.hidden = false;
    const o = result.output;
    const parts = [];
    if (o.duration_s) parts.push(seconds(o.duration_s));
    if (o.frames) parts.push(count(o.frames, "frame"));
    parts.push(bytes(o.bytes));
    parts.push(`link valid for ${seconds(result.expires_in_s)}`);
    setText("output-meta", parts.join(" · "));
    $("output").hidden = false;
  }

  async act(action) {
    const job = this.job;
    if (!job) return;
    setText("detail-action-error", "");
    const button = $(`${action}-job`);
    button.disabled = true;
    try {
      const updated = action === "cancel" ? await this.api.cancel(job.id) : await this.api.retry(job.id);
      if (!this.job || this.job.id !== job.id) return;
      this.render(updated);
      this.onJob(updated);
      // a retried job lives again: follow it on from the last event seen
      if (action === "retry" && (!this.follower || ["ended", "failed"].includes(this.follower.state))) {
        this.follow(this.follower ? this.follower.lastEventId : "");
      }
    } catch (error) {
      setText("detail-action-error", `Could not ${action} the job: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }
}

// How long the speech is, and, for a job sent as a script, who spoke it.
function speechText(p) {
  if (!p.audio_duration_s) return "";
  const length = seconds(p.audio_duration_s);
  if (!p.script) return length;
  return `${length}, spoken from the script (${p.script.language}, voice ${p.script.voice}, ${p.script.engine})`;
}
