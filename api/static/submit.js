// The "New job" form: the portrait and the speech (chosen or dropped), the prompt and the
// render parameters, sent as multipart/form-data to POST /v1/jobs. A job may name a presenter
// instead: then its portrait, prompt and size are the presenter's, and those fields hide. The
// speech is an audio file or a script, which the server speaks when the job is sent, in a
// language and voice of its default engine (GET /v1/voices).

import { $, el, randomKey, setText } from "./dom.js";
import { bytes, count, seconds, shortId } from "./format.js";

// Offered first where the engine speaks it; otherwise its first language.
const DEFAULT_LANGUAGES = ["en", "en-us", "en-gb"];

// "en-gb · British English" where the browser knows the language's name.
function languageLabel(code) {
  try {
    const name = new Intl.DisplayNames(["en"], { type: "language" }).of(code);
    if (name && name.toLowerCase() !== code.toLowerCase()) return `${code} · ${name}`;
  } catch {
    // not a tag the browser can name (espeak-ng has a few): the code alone
  }
  return code;
}

// API field name -> the control that sets it (the API's errors name the field)
const CONTROLS = {
  presenter: "presenter-select",
  image: "image-input",
  audio: "audio-input",
  script: "script",
  language: "language",
  voice: "voice",
  speech_engine: "language", // only ever the engine the languages came from
  prompt: "prompt",
  size: "size",
  num_clips: "num-clips",
  infer_frames: "infer-frames",
  sample_steps: "sample-steps",
  seed: "seed",
  checkpoint_every: "checkpoint-every",
  priority: "priority",
};

export class SubmitForm {
  constructor(api, options, { onSubmitted, announce }) {
    this.api = api;
    this.options = options;
    this.onSubmitted = onSubmitted;
    this.announce = announce;
    this.form = $("submit-form");
    this.audioSeconds = null;
    this.previews = {};
    // kept while the form is unchanged: sending the same job again after a lost answer
    // returns the first job instead of rendering it twice
    this.idempotencyKey = null;
    this.errorControl = null; // the control the message under the form is about, if any
    this.engine = null; // the speech engine scripts are spoken by: GET /v1/voices' default
    this.loadingVoices = false;
  }

  init() {
    const o = this.options;
    const size = $("size");
    for (const key of o.sizes) {
      const [w, h] = key.split("*");
      size.append(el("option", { value: key, selected: key === o.default_size }, `${w} × ${h}`));
    }
    const frames = $("infer-frames");
    for (const n of o.infer_frames) {
      const label = `${n} (${(n / o.fps).toFixed(2)} s)`;
      frames.append(el("option", { value: n, selected: n === o.default_infer_frames }, label));
    }
    const steps = $("sample-steps");
    steps.min = o.sample_steps.min;
    steps.max = o.sample_steps.max;
    steps.value = o.sample_steps.default;
    $("priority").min = o.priority.min;
    $("priority").max = o.priority.max;
    $("num-clips").max = o.num_clips_max;
    $("checkpoint-every").max = o.checkpoint_every_max;
    $("prompt").maxLength = o.prompt_max_chars;
    $("script").maxLength = o.script_max_chars;

    this.setUpFile("image-input", "image-drop", () => this.describeImage());
    this.setUpFile("audio-input", "audio-drop", () => this.describeAudio());
    $("prompt").addEventListener("input", () => this.countPrompt());
    $("script").addEventListener("input", () => this.countScript());
    $("language").addEventListener("change", () => this.fillVoices());
    for (const radio of this.form.elements.speech_source) {
      radio.addEventListener("change", () => this.showSpeechFields());
    }
    $("presenter-select").addEventListener("change", () => this.showOwnFields());
    frames.addEventListener("change", () => this.describeLength());
    // An edit makes the form a new request; and a message about what was just changed (or
    // about the whole form) no longer applies: a new file was chosen, the prompt rewritten.
    const edited = (e) => {
      this.idempotencyKey = null;
      if (this.errorControl === null || this.errorControl === e.target) this.clearErrors();
    };
    this.form.addEventListener("input", edited);
    this.form.addEventListener("change", edited);
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.countPrompt();
    this.countScript();
  }

  // The engine, languages and voices a script may be spoken in. Not the tenant's own: loaded
  // once, and again after a failure when a script is chosen.
  async loadVoices() {
    if (this.engine || this.loadingVoices) return;
    this.loadingVoices = true;
    try {
      const { engines } = await this.api.voices();
      const engine = engines.find((e) => e.default) || engines[0];
      if (!engine) throw new Error("the server has no speech engine");
      this.engine = engine;
      setText("voices-error", "");
    } catch (error) {
      setText("voices-error", `Could not load the languages and voices: ${error.message}`);
      return;
    } finally {
      this.loadingVoices = false;
    }
    const first = DEFAULT_LANGUAGES.find((code) => this.engine.languages.includes(code))
      || this.engine.languages[0];
    // `selected` marks the default, which form.reset() chooses again
    $("language").replaceChildren(...this.engine.languages.map(
      (code) => el("option", { value: code, selected: code === first }, languageLabel(code)),
    ));
    this.fillVoices();
  }

  // The voices that speak the chosen language; the engine's default voice first chosen.
  fillVoices() {
    if (!this.engine) return;
    const language = $("language").value;
    const select = $("voice");
    const speaking = this.engine.voices.filter((v) => !v.languages.length || v.languages.includes(language));
    // the voice chosen before, where it speaks this language too
    const wanted = select.value || this.engine.default_voice;
    const chosen = speaking.some((v) => v.id === wanted) ? wanted : this.engine.default_voice;
    select.replaceChildren(...speaking.map((v) => {
      const name = v.name && v.name !== v.id ? `${v.id} · ${v.name}` : v.id;
      const label = v.gender ? `${name} (${v.gender})` : name;
      return el("option", { value: v.id, selected: v.id === chosen }, label);
    }));
  }

  scripted() {
    return this.form.elements.speech_source.value === "script";
  }

  // Either the audio file's field or the script's, never both.
  showSpeechFields() {
    const scripted = this.scripted();
    $("audio-drop").hidden = scripted;
    $("script-block").hidden = !scripted;
    if (scripted) this.loadVoices();
  }

  countScript() {
    const n = $("script").value.length;
    setText("script-count", `${n} of ${this.options.script_max_chars} characters`);
  }

  // The presenters the tenant has (Presenters keeps it up to date); a chosen one that is gone
  // is chosen no longer.
  setPresenters(presenters) {
    const select = $("presenter-select");
    const chosen = select.value;
    select.replaceChildren(select.options[0]);
    for (const p of presenters) {
      select.append(el("option", { value: p.name, selected: p.name === chosen }, `${p.name} (${p.width} × ${p.height})`));
    }
    this.showOwnFields();
  }

  presenter() {
    return $("presenter-select").value || null;
  }

  // The portrait, prompt and size are this job's own only without a presenter.
  showOwnFields() {
    const own = !this.presenter();
    for (const node of this.form.querySelectorAll(".own")) node.hidden = !own;
  }

  setUpFile(inputId, zoneId, describe) {
    const input = $(inputId);
    const zone = $(zoneId);
    input.addEventListener("change", describe);
    zone.addEventListener("dragover", (e) => {
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      e.preventDefault();
      zone.classList.remove("dragging");
      const file = e.dataTransfer.files[0];
      if (!file) return;
      const files = new DataTransfer();
      files.items.add(file);
      input.files = files.files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }

  preview(kind, file) {
    if (this.previews[kind]) URL.revokeObjectURL(this.previews[kind]);
    this.previews[kind] = file ? URL.createObjectURL(file) : null;
    return this.previews[kind];
  }

  describeImage() {
    const file = $("image-input").files[0];
    const info = $("image-info");
    info.replaceChildren();
    const url = this.preview("image", file);
    if (!file) return;
    const img = el("img", { src: url, alt: `Preview of ${file.name}`, class: "thumb" });
    const text = el("span", {}, `${file.name} · ${bytes(file.size)}`);
    info.append(img, text);
    img.addEventListener("load", () => {
      const small = Math.min(img.naturalWidth, img.naturalHeight) < 64;
      text.textContent = `${file.name} · ${img.naturalWidth} × ${img.naturalHeight} px · ${bytes(file.size)}`;
      if (small) text.append(el("strong", { class: "warn" }, " · smaller than 64 pixels a side"));
    });
    img.addEventListener("error", () => {
      img.remove();
      text.append(el("strong", { class: "warn" }, " · this browser cannot show it; the server will check it"));
    });
  }

  describeAudio() {
    const file = $("audio-input").files[0];
    const info = $("audio-info");
    info.replaceChildren();
    this.audioSeconds = null;
    const url = this.preview("audio", file);
    this.describeLength();
    if (!file) return;
    const text = el("span", {}, `${file.name} · ${bytes(file.size)}`);
    const player = el("audio", { src: url, controls: true, preload: "metadata", "aria-label": `Listen to ${file.name}` });
    info.append(text, player);
    player.addEventListener("loadedmetadata", () => {
      if (!Number.isFinite(player.duration)) return;
      this.audioSeconds = player.duration;
      text.textContent = `${file.name} · ${seconds(player.duration)} · ${bytes(file.size)}`;
      this.describeLength();
    });
  }

  // How many clips the whole speech makes (as the API counts them: pipeline/params.py).
  describeLength() {
    const frames = Number($("infer-frames").value);
    if (!this.audioSeconds) {
      setText("length-hint", "Empty: as long as the speech.");
      return;
    }
    const total = Math.ceil(this.audioSeconds * this.options.fps - 1e-6);
    const clips = Math.max(1, Math.ceil(total / frames));
    setText("length-hint", `Empty: as long as the speech, ${count(clips, "clip")} of ${frames} frames (${seconds(this.audioSeconds)}).`);
  }

  reset() {
    this.form.reset();
    this.clearErrors();
    for (const kind of ["image", "audio"]) this.preview(kind, null);
    $("image-info").replaceChildren();
    $("audio-info").replaceChildren();
    this.audioSeconds = null;
    this.idempotencyKey = null;
    $("sample-steps").value = this.options.sample_steps.default;
    this.describeLength();
    this.countPrompt();
    this.countScript();
    this.showOwnFields();
    this.showSpeechFields();
    if (!this.engine) setText("voices-error", "");
    // the default language is chosen again: its voices, the default one chosen
    $("voice").value = "";
    this.fillVoices();
  }

  countPrompt() {
    const n = $("prompt").value.length;
    setText("prompt-count", `${n} of ${this.options.prompt_max_chars} characters`);
  }

  // What the browser can tell before uploading anything; the server checks everything again.
  problem() {
    const own = !this.presenter();
    if (own && !$("image-input").files.length) return { field: "image", message: "Choose a portrait image (or a presenter)." };
    if (this.scripted()) {
      if (!$("script").value.trim()) return { field: "script", message: "Write the script: the words to speak." };
      if (!this.engine) return { field: "language", message: "The languages and voices are not loaded yet; try again in a moment." };
    } else if (!$("audio-input").files.length) {
      return { field: "audio", message: "Choose a speech file." };
    }
    if (own && !$("prompt").value.trim()) return { field: "prompt", message: "Write a prompt: what the video shows." };
    const seed = $("seed").value.trim();
    if (seed && !/^\d+$/.test(seed)) return { field: "seed", message: "The seed is a whole number (or empty for a random one)." };
    for (const field of ["num_clips", "sample_steps", "checkpoint_every", "priority"]) {
      const input = $(CONTROLS[field]);
      if (!input.checkValidity()) {
        const label = document.querySelector(`label[for="${input.id}"]`).textContent;
        return { field, message: `${label}: ${input.validationMessage}` };
      }
    }
    return null;
  }

  formData() {
    const data = new FormData();
    const presenter = this.presenter();
    if (presenter) {
      data.append("presenter", presenter); // its portrait, prompt and size
    } else {
      data.append("image", $("image-input").files[0]);
      data.append("prompt", $("prompt").value.trim());
      data.append("size", $("size").value);
    }
    if (this.scripted()) {
      data.append("script", $("script").value); // the server trims it and checks each character
      data.append("language", $("language").value);
      data.append("voice", $("voice").value);
      data.append("speech_engine", this.engine.name);
    } else {
      data.append("audio", $("audio-input").files[0]);
    }
    data.append("infer_frames", $("infer-frames").value);
    data.append("sample_steps", $("sample-steps").value);
    for (const field of ["num_clips", "seed", "checkpoint_every"]) {
      const value = $(CONTROLS[field]).value.trim();
      if (value) data.append(field, value);
    }
    const priority = $("priority").value.trim();
    if (priority && priority !== "0") data.append("priority", priority);
    return data;
  }

  clearErrors() {
    setText("submit-error", "");
    this.errorControl = null;
    for (const id of Object.values(CONTROLS)) $(id).removeAttribute("aria-invalid");
  }

  showError(message, field = null) {
    setText("submit-error", message);
    const control = (field && $(CONTROLS[field.split(".")[0]])) || null;
    this.errorControl = control;
    if (control) {
      control.setAttribute("aria-invalid", "true");
      if (control.closest("details")) control.closest("details").open = true;
      control.focus();
    }
  }

  async submit() {
    this.clearErrors();
    const problem = this.problem();
    if (problem) {
      this.showError(problem.message, problem.field);
      return;
    }
    const button = $("submit-button");
    const upload = $("upload");
    const bar = $("upload-progress");
    this.idempotencyKey = this.idempotencyKey || randomKey();
    button.disabled = true;
    button.textContent = "Sending…";
    bar.value = 0;
    upload.hidden = false;
    try {
      const job = await this.api.submit(this.formData(), {
        idempotencyKey: this.idempotencyKey,
        onProgress: (fraction) => {
          bar.value = fraction;
        },
      });
      this.idempotencyKey = null;
      const p = job.params;
      this.announce(`Job ${shortId(job.id)} queued: ${count(job.progress.clips_total, "clip")} at ${p.width} × ${p.height}.`);
      this.onSubmitted(job);
    } catch (error) {
      const retry = error.retryAfter ? ` (retry in ${error.retryAfter} s)` : "";
      this.showError(`Not submitted: ${error.message}${retry}`, error.field);
    } finally {
      button.disabled = false;
      button.textContent = "Render";
      upload.hidden = true;
    }
  }
}
