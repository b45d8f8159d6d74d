// KV Cache Lab: the "Reading the numbers" card — lessons.json's `numbers`, a term and its
// explanation each. Each explanation is also the title (hover text) of the number it
// explains, where the element has none of its own, and the key chart's stands under that
// chart too.

import { $, el } from "./dom.js";
import { showKeysLesson } from "./keychart.js";
import { state } from "./state.js";

/** The card from state.lessons (empty when lessons.json could not be read). */
export function renderNumbers() {
  const list = $("#lessons");
  list.replaceChildren();
  for (const n of state.lessons?.numbers || []) {
    list.append(el("div", {}, el("dt", { text: n.term }), el("dd", { text: n.text })));
    const target = document.getElementById(n.id);
    if (target && !target.title) target.title = n.text;
  }
  // the key chart's lesson also stands under the chart: the picture needs its story
  showKeysLesson(state.lessons?.numbers);
}
