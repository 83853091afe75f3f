// Building the page without ever parsing data as HTML: every string becomes a
// text node, so a customer's "<script>" or "<img onerror>" is shown, never run.

/**
 * h("div", {class: "x", dir: "auto", onclick: fn}, "text", childNode, [more])
 * Attributes are set with setAttribute (functions as listeners); children that
 * are strings or numbers become text nodes; null / false children are skipped.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "hidden" || key === "disabled" || key === "checked" || key === "selected") node[key] = Boolean(value);
    else if (key === "value") node.value = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else if (child instanceof Node) node.appendChild(child);
    else node.appendChild(document.createTextNode(String(child)));
  }
}

/** Replace every child of ``node``. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

/** An option list for a <select>: [[value, label], ...]. */
export function options(pairs, selected) {
  return pairs.map(([value, label]) => h("option", { value, selected: String(value) === String(selected ?? "") }, label));
}

/** URLs we let the browser load or open: our own attachment store, or plain
 * http(s) links (opened, never embedded). Anything else (javascript:, data:)
 * is shown as text only. */
export function safeUrl(url) {
  try {
    const parsed = new URL(url, location.href);
    if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return null;
    return { href: parsed.href, local: parsed.origin === location.origin };
  } catch {
    return null;
  }
}

// Bidi embeddings, overrides and isolates (U+202A-U+202E, U+2066-U+2069): in
// a name or a subject a customer chose, they only make it read as another
// ("Eve \u202eevil" shows as "Eve live"). The hub drops them from names it
// stores; older rows, and subjects, are cleaned here.
const BIDI_CONTROLS = /[\u202A-\u202E\u2066-\u2069]/g;

export function withoutBidiControls(text) {
  return text == null ? text : String(text).replace(BIDI_CONTROLS, "");
}

export function humanSize(bytes) {
  if (bytes == null) return "";
  const units = ["B", "KB", "MB", "GB"];
  let n = bytes, i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
