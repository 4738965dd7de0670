// A job's event stream (GET /v1/jobs/{id}/events as text/event-stream), read with fetch:
// EventSource cannot send the Authorization header. Reconnects like EventSource does, with
// Last-Event-ID, so no event is missed or seen twice; stops once the job is final.

import { ApiError } from "./api.js";

export const FINAL = new Set(["succeeded", "failed", "canceled"]);

// The Server-Sent Events wire format (the HTML standard's parsing rules): feed text as it
// arrives, in chunks of any size, and get back the complete messages.
export class SseParser {
  constructor(lastEventId = "") {
    this.buffer = "";
    this.data = "";
    this.type = "";
    this.idBuffer = lastEventId;
    this.lastEventId = lastEventId;
    this.retry = null;
  }

  push(text) {
    this.buffer += text;
    const messages = [];
    const terminator = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = terminator.exec(this.buffer)) !== null) {
      // a lone \r at the end may be the first half of \r\n: wait for the next chunk
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const message = this.line(this.buffer.slice(start, match.index));
      if (message) messages.push(message);
      start = terminator.lastIndex;
    }
    this.buffer = this.buffer.slice(start);
    return messages;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) return null; // a comment (keepalive)
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data += `${value}\n`;
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.idBuffer = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }

  dispatch() {
    this.lastEventId = this.idBuffer;
    const { data, type } = this;
    this.data = "";
    this.type = "";
    if (data === "") return null;
    return { id: this.lastEventId, event: type || "message", data: data.slice(0, -1) };
  }
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

// Follows one job: onEvent(event) for each job event (state changes, progress, checkpoints,
// segments), onJob(job) for each snapshot of the job, onState(state, error) as the connection
// goes "connecting", "open", "reconnecting", "ended" (the job is final) or "failed".
export class EventFollower {
  constructor(api, jobId, { onEvent = () => {}, onJob = () => {}, onState = () => {} } = {}, lastEventId = "") {
    this.api = api;
    this.jobId = jobId;
    this.handlers = { onEvent, onJob, onState };
    this.parser = new SseParser(lastEventId);
    this.stopper = new AbortController();
    this.final = false;
    this.state = "idle";
  }

  get lastEventId() {
    return this.parser.lastEventId;
  }

  start() {
    this.run();
    return this;
  }

  close() {
    this.stopper.abort();
  }

  get closed() {
    return this.stopper.signal.aborted;
  }

  setState(state, error = null) {
    if (state === this.state && !error) return;
    this.state = state;
    this.handlers.onState(state, error);
  }

  async run() {
    const url = this.api.url(`/v1/jobs/${encodeURIComponent(this.jobId)}/events`);
    let failures = 0;
    let opened = false;
    while (!this.closed) {
      this.setState(opened ? "reconnecting" : "connecting");
      try {
        const headers = this.api.headers({ Accept: "text/event-stream" });
        if (this.parser.lastEventId) headers["Last-Event-ID"] = this.parser.lastEventId;
        const response = await fetch(url, { headers, signal: this.stopper.signal, cache: "no-store" });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          const error = ApiError.from(response.status, body, response.statusText);
          if (response.status === 401 && this.api.onUnauthorized) this.api.onUnauthorized(error);
          // a missing job or a refused key does not get better by asking again
          if (response.status >= 400 && response.status < 500 && response.status !== 429) {
            this.setState("failed", error);
            return;
          }
          throw error;
        }
        opened = true;
        failures = 0;
        this.setState("open");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          for (const message of this.parser.push(value)) this.deliver(message);
        }
        if (this.final) {
          this.setState("ended");
          return;
        }
      } catch (e) {
        if (this.closed) return;
        failures += 1;
      }
      // the stream broke (or the server stopped): come back where it left off
      if (this.closed) return;
      this.setState(opened ? "reconnecting" : "connecting");
      const base = this.parser.retry ?? 2000;
      await sleep(Math.min(base * 2 ** Math.min(failures, 4), 30000), this.stopper.signal);
    }
  }

  deliver(message) {
    let payload;
    try {
      payload = JSON.parse(message.data);
    } catch {
      return;
    }
    if (message.event === "job") {
      this.final = FINAL.has(payload.status);
      this.handlers.onJob(payload);
    } else {
      this.handlers.onEvent(payload);
    }
  }
}
