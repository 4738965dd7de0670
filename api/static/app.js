// The dashboard: sign in with an API key, then the submit form, the job list and one job in
// full. The key lives in this tab's sessionStorage and goes out only as a Bearer header.

import { Api } from "./api.js";
import { $, setText } from "./dom.js";
import { JobDetail } from "./detail.js";
import { shortId } from "./format.js";
import { JobList } from "./jobs.js";
import { Presenters } from "./presenters.js";
import { SubmitForm } from "./submit.js";

const KEY_STORAGE = "longtake.apiKey";

const api = new Api(sessionStorage.getItem(KEY_STORAGE));
const statuses = new Map(); // job id -> last status seen, to announce changes once
let options = null;
let list = null;
let detail = null;
let form = null;
let presenters = null;
let authOff = false;

// Read out to screen readers (and shown nowhere else): one message at a time.
function announce(message) {
  const region = $("announcer");
  region.textContent = "";
  // a new text node after a tick, so the same words twice are read twice
  setTimeout(() => {
    region.textContent = message;
  }, 50);
}

function statusMessage(job) {
  const id = shortId(job.id);
  switch (job.status) {
    case "queued":
      return `Job ${id} is queued.`;
    case "running":
      return `Job ${id} is running.`;
    case "stitching":
      return `Job ${id} is rendered and being stitched.`;
    case "succeeded":
      return `Job ${id} succeeded; its video is ready.`;
    case "failed":
      return `Job ${id} failed: ${(job.error || "").split("\n")[0]}`;
    case "canceled":
      return `Job ${id} was canceled.`;
    default:
      return `Job ${id} is ${job.status}.`;
  }
}

// Every copy of a job passes here (list refreshes, event streams, actions).
function noteJob(job) {
  const before = statuses.get(job.id);
  statuses.set(job.id, job.status);
  if (before !== undefined && before !== job.status) announce(statusMessage(job));
}

// `focus`: the user asked for this job; take them (and screen readers) to it.
async function showJob(jobId, focus = false) {
  list.select(jobId);
  history.replaceState(null, "", `#job=${jobId}`);
  const shown = detail.show(jobId);
  if (focus) {
    $("detail-title").focus();
    // again once the job is on the page: before, the page may end too soon to scroll it up
    await shown;
    if (detail.jobId === jobId) $("detail").scrollIntoView({ block: "start" });
  }
}

function closeJob() {
  detail.close();
  list.select(null);
  history.replaceState(null, "", window.location.pathname);
}

async function act(action, jobId) {
  if (detail.jobId === jobId) {
    await detail.act(action);
    return;
  }
  try {
    const job = action === "cancel" ? await api.cancel(jobId) : await api.retry(jobId);
    list.update(job);
    noteJob(job);
    if (action === "cancel" && job.cancel_requested && job.status !== "canceled") {
      announce(`Job ${shortId(jobId)} stops after its current clip.`);
    }
  } catch (error) {
    setText("jobs-error", `Could not ${action} job ${shortId(jobId)}: ${error.message}`);
  }
}

function showSignIn(message = "") {
  api.onUnauthorized = null; // a refused key at the sign-in form is answered there
  $("loading").hidden = true;
  $("workspace").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
  setText("sign-in-error", message);
  setText("server-note", "");
  $("api-key").value = "";
  $("api-key").focus();
}

// Nothing of the session stays on the page for whoever signs in next.
function signOut(message = "") {
  sessionStorage.removeItem(KEY_STORAGE);
  api.key = null;
  if (list) list.stop();
  if (detail) detail.close();
  if (form) form.reset();
  if (presenters) presenters.reset();
  statuses.clear();
  history.replaceState(null, "", window.location.pathname);
  showSignIn(message);
}

// Into the workspace; a job named in the address (a link, a reload) is opened and shown.
// Returns whether it was.
function enter() {
  $("loading").hidden = true;
  $("sign-in").hidden = true;
  $("workspace").hidden = false;
  $("sign-out").hidden = authOff;
  // the key's id (`lt_<id>_<secret>`) says which key this is, as `longtake keys list` shows it
  const id = /^lt_([A-Za-z0-9]+)_/.exec(api.key || "");
  setText("server-note", authOff ? "API keys are off on this server." : `Signed in${id ? ` with key_${id[1]}` : ""}.`);
  api.onUnauthorized = (error) => signOut(`Signed out: ${error.message}.`);
  if (!form) {
    form = new SubmitForm(api, options, { announce, onSubmitted: (job) => {
      noteJob(job);
      list.add(job);
      showJob(job.id);
    } });
    form.init();
    presenters = new Presenters(api, options, { announce, onChange: (found) => form.setPresenters(found) });
    presenters.init();
  }
  list.start();
  presenters.load();
  const wanted = /^#job=([0-9a-f-]{36})$/.exec(window.location.hash);
  // on a narrow screen the job sits below the form: take the user to it
  if (wanted) showJob(wanted[1], true);
  return Boolean(wanted);
}

// Whether a key works: a request that needs one.
async function check(key) {
  api.key = key;
  await api.listJobs({ limit: 1 });
}

async function boot() {
  list = new JobList(api, {
    onSelect: (id) => showJob(id, true),
    onJob: noteJob,
    onCancel: (id) => act("cancel", id),
    onRetry: (id) => act("retry", id),
  });
  list.init();
  detail = new JobDetail(api, {
    fps: 25,
    onJob: (job) => {
      noteJob(job);
      list.update(job);
    },
    onClose: closeJob,
  });
  detail.init();
  $("sign-out").addEventListener("click", () => signOut("Signed out."));
  $("sign-in-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      setText("sign-in-error", "Paste an API key.");
      return;
    }
    try {
      await check(key);
    } catch (error) {
      api.key = null;
      setText("sign-in-error", error.status === 401 ? "That key is unknown or was revoked." : error.message);
      $("api-key").focus();
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    if (!enter()) $("new-job-title").focus();
  });

  try {
    options = await api.options();
  } catch (error) {
    $("loading").textContent = `The server cannot be reached: ${error.message}`;
    return;
  }
  detail.fps = options.fps;
  authOff = !options.auth_required;
  const saved = authOff ? null : api.key;
  if (!authOff && !saved) {
    showSignIn();
    return;
  }
  try {
    await check(saved);
    enter();
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(KEY_STORAGE);
      showSignIn("The saved key no longer works; sign in again.");
    } else {
      showSignIn(`The server answered: ${error.message}`);
    }
  }
}

boot();
