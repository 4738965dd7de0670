// How numbers, sizes, times and jobs read on the page.

export const shortId = (id) => String(id).slice(0, 8);

// "1 clip", "2 clips", "0 clips"
export const count = (n, noun) => `${n} ${n === 1 ? noun : `${noun}s`}`;

export function seconds(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "";
  if (s < 1) return `${s.toFixed(2)} s`;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const total = Math.round(s);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const sec = total % 60;
  if (h) return `${h} h ${String(m).padStart(2, "0")} min`;
  return `${m} min ${String(sec).padStart(2, "0")} s`;
}

export function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["bytes", "kB", "MB", "GB", "TB"];
  let value = n;
  let unit = 0;
  while (value >= 1000 && unit < units.length - 1) {
    value /= 1000;
    unit += 1;
  }
  return unit === 0 ? `${n} bytes` : `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const clock = { hour: "2-digit", minute: "2-digit", second: "2-digit" };
const thisYear = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", ...clock });
const anyYear = new Intl.DateTimeFormat(undefined, { day: "numeric", month: "short", year: "numeric", ...clock });

// Always with its day ("2 Dec, 14:03:22"): a page left open overnight, or a job queued
// yesterday, is never read as today's. The year only when it is not this one.
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return (date.getFullYear() === new Date().getFullYear() ? thisYear : anyYear).format(date);
}

export function fullTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}

export const STATUS_TEXT = {
  queued: "Queued",
  running: "Running",
  stitching: "Stitching",
  succeeded: "Succeeded",
  failed: "Failed",
  canceled: "Canceled",
};

export const statusText = (status) => STATUS_TEXT[status] || status;

// "clip 3 of 17 · 2.1 fps · about 12 s left"
// Clips finished: a checkpoint is recorded at once, the clip count at most every second or so.
export const clipsDone = (p) => Math.max(p.clips_done, p.last_checkpoint_clip || 0);

export function progressText(job) {
  const p = { ...job.progress, clips_done: clipsDone(job.progress) };
  const parts = [];
  if (job.status === "queued") {
    parts.push(p.clips_done ? `waiting to resume at clip ${p.clips_done + 1} of ${p.clips_total}` : `${count(p.clips_total, "clip")}, waiting`);
  } else if (job.status === "stitching") {
    parts.push(p.clips_total === 1 ? "the clip is rendered, stitching" : `all ${p.clips_total} clips rendered, stitching`);
  } else {
    parts.push(`clip ${p.clips_done} of ${p.clips_total}`);
  }
  if (job.status === "running") {
    if (p.fps) parts.push(`${p.fps.toFixed(1)} fps`);
    if (p.eta_s !== null && p.eta_s !== undefined) parts.push(`about ${seconds(p.eta_s)} left`);
  }
  if (job.cancel_requested && !["canceled", "succeeded", "failed"].includes(job.status)) {
    parts.push("cancel requested");
  }
  return parts.join(" · ");
}

export function canCancel(job) {
  return ["queued", "running", "stitching"].includes(job.status) && !job.cancel_requested;
}

// The server says whether a retry can help: not for a job that cannot render as submitted.
export function canRetry(job) {
  return Boolean(job.can_retry);
}

// What an event's data says, in a few words.
export function eventDetails(event) {
  const d = event.data || {};
  switch (event.event) {
    case "progress": {
      const parts = [`clip ${d.clips_done} of ${d.clips_total}`];
      if (d.fps) parts.push(`${Number(d.fps).toFixed(1)} fps`);
      if (d.clip_s !== undefined && d.clip_s !== null) parts.push(`${seconds(d.clip_s)} per clip`);
      return parts.join(" · ");
    }
    case "checkpoint": {
      const parts = [`at clip ${d.clip}`];
      if (d.duration_s !== undefined && d.duration_s !== null) parts.push(seconds(d.duration_s));
      if (d.bytes) parts.push(bytes(d.bytes));
      return parts.join(" · ");
    }
    case "segment":
      return `segment ${Number(d.index) + 1}: ${count(d.frames, "frame")}, ${bytes(d.bytes)}`;
    default:
      return event.reason || "";
  }
}
