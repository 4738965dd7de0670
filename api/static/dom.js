// Small DOM helpers. Text from the server (prompts, errors, reasons) is only ever set as
// text, never parsed as HTML.

export const $ = (id) => document.getElementById(id);

// el("button", {type: "button", class: "quiet", onclick: f}, "Cancel")
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function setText(id, text) {
  const node = $(id);
  node.textContent = text || "";
  return node;
}

// A <progress> showing `done` of `total`; indeterminate (no value) when `done` is null.
export function setProgress(node, done, total) {
  node.max = Math.max(1, total || 1);
  if (done === null) node.removeAttribute("value");
  else node.value = Math.min(done, node.max);
}

// A key for Idempotency-Key headers; crypto.randomUUID exists only on secure origins.
export function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
