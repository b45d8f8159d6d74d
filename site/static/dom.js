// KV Cache Lab: the two DOM helpers the pages share (ui.js, profile.js).

/** The first element matching a selector (in root, default the document). */
export const $ = (sel, root = document) => root.querySelector(sel);

/** Every element matching a selector, as an array. */
export const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

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
