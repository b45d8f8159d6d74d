// KV Cache Lab: the DOM helpers the pages share (ui.js, profile.js, compare.js, …).

/** The first element matching a selector (in root, default the document). */
export const $ = (sel, root = document) => root.querySelector(sel);

/** Every element matching a selector, as an array. */
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

/** A CSS custom property of the page (a colour, a font), as a canvas needs it. */
export const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

/** A new element: attrs "class" and "text" set className / textContent; "style", data-*,
 *  aria-*, "for" and "role" are attributes (true: present, empty); any other name the
 *  element has as a property (checked, value, selected, type, …) is set as that property,
 *  else as an attribute. null, undefined and false leave it out; so do null kids. */
export const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style" || k === "for" || k === "role" || k.startsWith("data-") || k.startsWith("aria-") || !(k in e))
      e.setAttribute(k, v === true ? "" : v);
    else e[k] = v;
  }
  e.append(...kids.filter((kid) => kid !== null && kid !== undefined));
  return e;
};

/** Save `text` as a file named `name` (a run's JSON, a table's CSV): what the page shows,
 *  as the CLI would print it. */
export function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);   // some browsers read the blob after click()
}
