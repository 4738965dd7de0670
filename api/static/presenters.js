// The "Presenters" panel: the tenant's presenters (a portrait, a prompt and a size kept under
// a name), a form that makes one (POST /v1/presenters), and delete buttons. The job form's
// presenter choice is refilled from here whenever the list changes.

import { $, el, setText } from "./dom.js";

const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
// API field name -> the control that sets it (the API's errors name the field)
const CONTROLS = {
  name: "presenter-name",
  image: "presenter-image",
  prompt: "presenter-prompt",
  size: "presenter-size",
};

export class Presenters {
  constructor(api, options, { announce, onChange }) {
    this.api = api;
    this.options = options;
    this.announce = announce;
    this.onChange = onChange; // called with the list whenever it is loaded
    this.form = $("presenter-form");
    this.presenters = [];
  }

  init() {
    const size = $("presenter-size");
    for (const key of this.options.sizes) {
      const [w, h] = key.split("*");
      size.append(el("option", { value: key, selected: key === this.options.default_size }, `${w} × ${h}`));
    }
    $("presenter-prompt").maxLength = this.options.prompt_max_chars;
    this.form.addEventListener("input", () => this.clearErrors());
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
  }

  async load() {
    try {
      const page = await this.api.listPresenters();
      this.presenters = page.presenters;
      setText("presenters-error", "");
    } catch (error) {
      setText("presenters-error", `Could not load the presenters: ${error.message}`);
      return;
    }
    this.render();
    this.onChange(this.presenters);
  }

  render() {
    const list = $("presenter-list");
    list.replaceChildren();
    for (const p of this.presenters) {
      list.append(el(
        "li",
        { "data-presenter": p.name },
        el("strong", {}, p.name),
        el("button", { type: "button", class: "quiet", "aria-label": `Delete presenter ${p.name}`, onclick: () => this.remove(p.name) }, "Delete"),
        el("span", { class: "hint" }, `${p.width} × ${p.height} · ${p.prompt}`),
      ));
    }
    $("presenters-empty").hidden = this.presenters.length > 0;
  }

  // What the browser can tell before uploading anything; the server checks everything again.
  problem() {
    const name = $("presenter-name").value.trim();
    if (!NAME.test(name)) return { field: "name", message: "Name it with letters, digits, '.', '_' or '-' (at most 64)." };
    if (!$("presenter-image").files.length) return { field: "image", message: "Choose a portrait image." };
    if (!$("presenter-prompt").value.trim()) return { field: "prompt", message: "Write a prompt: what the videos show." };
    return null;
  }

  async create() {
    this.clearErrors();
    const problem = this.problem();
    if (problem) {
      this.showError(problem.message, problem.field);
      return;
    }
    const data = new FormData();
    data.append("name", $("presenter-name").value.trim());
    data.append("image", $("presenter-image").files[0]);
    data.append("prompt", $("presenter-prompt").value.trim());
    data.append("size", $("presenter-size").value);
    const button = $("presenter-save");
    button.disabled = true;
    try {
      const created = await this.api.createPresenter(data);
      this.resetForm();
      this.announce(`Presenter ${created.name} saved.`);
      await this.load();
    } catch (error) {
      this.showError(`Not saved: ${error.message}`, error.field);
    } finally {
      button.disabled = false;
    }
  }

  async remove(name) {
    try {
      await this.api.deletePresenter(name);
      setText("presenters-error", "");
      this.announce(`Presenter ${name} deleted; jobs that used it render as they were submitted.`);
    } catch (error) {
      setText("presenters-error", `Could not delete presenter ${name}: ${error.message}`);
    }
    await this.load();
  }

  clearErrors() {
    setText("presenter-error", "");
    for (const id of Object.values(CONTROLS)) $(id).removeAttribute("aria-invalid");
  }

  showError(message, field = null) {
    setText("presenter-error", message);
    const control = (field && $(CONTROLS[field])) || null;
    if (control) {
      control.setAttribute("aria-invalid", "true");
      control.focus();
    }
  }

  resetForm() {
    this.form.reset();
    this.clearErrors();
    $("presenter-size").value = this.options.default_size;
  }

  // Signed out: nothing of the tenant stays on the page.
  reset() {
    this.resetForm();
    this.presenters = [];
    $("presenter-list").replaceChildren();
    setText("presenters-error", "");
    this.onChange([]);
  }
}
