// The arena view: variant picker, one column per variant filling live, diff highlights, metric badges.

import { postSSE } from "./api.js";
import { renderDiff } from "./diff.js";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

export class ArenaView {
  constructor() {
    this.domains = [];
    this.extra = []; // explicit variants added by the user
    this.columns = new Map(); // name -> {root, out, badges, text, result, kind}
    this.unsteered = null; // name of the reference column
    this.pending = false;
    this.controller = null;
    $("gen-form").addEventListener("submit", (e) => { e.preventDefault(); this.generate(); });
    $("ex-add").addEventListener("click", () => this.addExplicit());
  }

  setDomains(domains, numLayers) {
    this.domains = domains;
    const list = $("variant-list");
    list.replaceChildren();
    list.append(this.pickerRow({ type: "unsteered" }, "unsteered", true));
    domains.forEach((d, i) => {
      const row = this.pickerRow({ type: "domain", domain: d.domain }, d.domain, i === 0,
        `layer ${d.layer} · ${d.mode} · α ${d.alpha}${d.alpha_units === "relative" ? " (rel.)" : ""}`);
      const scale = el("input", { type: "number", step: "0.25", value: "1", class: "scale", title: "alpha scale", "aria-label": `${d.domain} scale` });
      row.append(el("span", { class: "x", text: "×" }), scale);
      list.append(row);
    });
    const select = $("ex-domain");
    select.replaceChildren(...domains.map((d) => el("option", { value: d.domain, text: d.domain })));
    $("ex-layer").max = String(Math.max(0, (numLayers || 1) - 1));
    if (domains.length) $("ex-layer").value = String(domains[0].layer);
    $("ex-add").disabled = !domains.length;
  }

  pickerRow(spec, label, checked, hint = "") {
    const box = el("input", { type: "checkbox", "data-variant": label });
    box.checked = checked;
    box._spec = spec;
    const row = el("label", { class: "variant-row" }, box, el("span", { class: "vname", text: label }));
    if (hint) row.append(el("span", { class: "hint", text: hint }));
    return row;
  }

  addExplicit() {
    const spec = {
      type: "explicit",
      domain: $("ex-domain").value,
      layer: Number($("ex-layer").value),
      alpha: Number($("ex-alpha").value),
      mode: $("ex-mode").value,
      positions: $("ex-positions").value,
      alpha_units: $("ex-units").value,
    };
    const label = `${spec.domain} L${spec.layer} ${spec.mode} ${spec.alpha}${spec.alpha_units === "relative" && spec.mode !== "rotate" ? "r" : ""}${spec.positions === "all" ? "" : " " + spec.positions}`;
    spec.name = label.slice(0, 60);
    const row = this.pickerRow(spec, spec.name, true);
    const remove = el("button", { type: "button", class: "secondary small", text: "remove" });
    remove.addEventListener("click", () => row.remove());
    row.append(remove);
    $("variant-list").append(row);
  }

  selectedVariants() {
    const out = [];
    for (const box of $("variant-list").querySelectorAll("input[type=checkbox]")) {
      if (!box.checked) continue;
      const spec = { ...box._spec };
      if (spec.type === "domain") {
        const scale = Number(box.parentElement.querySelector(".scale").value);
        if (Number.isFinite(scale) && scale !== 1) spec.scale = scale;
      }
      out.push(spec);
    }
    return out;
  }

  settings() {
    const s = { max_new_tokens: Number($("max-new").value) || 48 };
    const rp = Number($("rep-pen").value);
    if (rp && rp !== 1) s.repetition_penalty = rp;
    if ($("chat").checked) s.chat = true;
    if ($("sample").checked) {
      s.do_sample = true;
      s.temperature = Number($("temperature").value) || 1;
      s.seed = Number($("seed").value) || 0;
    }
    return s;
  }

  status(text, isError = false) {
    const s = $("gen-status");
    s.textContent = text;
    s.classList.toggle("error", isError);
  }

  async generate() {
    if (this.controller) this.controller.abort();
    const variants = this.selectedVariants();
    if (!variants.length) { this.status("pick at least one variant", true); return; }
    const body = { prompt: $("prompt").value, variants, settings: this.settings() };
    this.columns.clear();
    this.unsteered = null;
    $("columns").replaceChildren();
    this.status("queued…");
    $("generate").disabled = true;
    const controller = new AbortController();
    this.controller = controller;
    try {
      await postSSE("/api/generate", body, (name, data) => this.onEvent(name, data), controller.signal);
    } catch (err) {
      if (err.name !== "AbortError") this.status(err.detail || String(err), true);
    } finally {
      if (this.controller === controller) this.controller = null;
      $("generate").disabled = false;
    }
  }

  onEvent(name, data) {
    if (name === "queued") {
      this.status(data.jobs_ahead ? `queued behind ${data.jobs_ahead} job(s)…` : "starting…");
    } else if (name === "start") {
      this.status(`generating ${data.variants.length} variants in one batch (prompt ${data.prompt_tokens} tokens)…`);
      for (const v of data.variants) this.addColumn(v);
    } else if (name === "token") {
      const col = this.columns.get(data.variant);
      if (!col) return;
      col.text += data.text;
      col.tokens = data.index + 1;
      col.count.textContent = `${col.tokens} tokens`;
      this.schedule(data.variant === this.unsteered ? null : col);
    } else if (name === "result") {
      const col = this.columns.get(data.variant);
      if (!col) return;
      col.text = data.text;
      col.result = data;
      this.renderBadges(col);
      this.schedule(data.variant === this.unsteered ? null : col);
    } else if (name === "done") {
      this.status(`done in ${fmt(data.seconds)} s`);
    } else if (name === "error") {
      this.status(data.message, true);
    }
  }

  addColumn(v) {
    const desc = v.type === "unsteered" ? "no steering (reference)"
      : `layer ${v.layer} · ${v.mode} · α ${fmt(v.alpha, 3)}${v.alpha_units === "relative" ? " rel." : ""}${v.positions !== "all" ? " · " + v.positions : ""}`;
    const out = el("pre", { class: "out" });
    const count = el("span", { class: "count", text: "0 tokens" });
    const badges = el("div", { class: "badges" });
    const root = el("article", { class: `column ${v.type}`, "data-variant": v.name },
      el("header", {}, el("h3", { text: v.name }), el("p", { class: "desc", text: desc }), count),
      out, badges);
    $("columns").append(root);
    if (v.type === "unsteered" && this.unsteered === null) this.unsteered = v.name;
    this.columns.set(v.name, { root, out, badges, count, text: "", result: null, kind: v.type, tokens: 0 });
  }

  // Re-render on the next frame: one column, or all of them when the reference text changed.
  schedule(col) {
    if (!this.dirty) this.dirty = new Set();
    if (col === null) for (const c of this.columns.values()) this.dirty.add(c);
    else this.dirty.add(col);
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = null;
      const base = this.unsteered !== null ? this.columns.get(this.unsteered).text : null;
      for (const c of this.dirty) {
        const changed = renderDiff(c.out, c.text, c.kind === "unsteered" ? null : base);
        c.changed = changed;
      }
      this.dirty.clear();
    });
  }

  renderBadges(col) {
    const r = col.result;
    const items = [
      ["tokens", `${r.tokens}`],
      ["tok/s", r.tokens_per_second === null ? "–" : fmt(r.tokens_per_second, 0)],
      ["rep3", fmt(r.rep3)],
    ];
    if (col.kind !== "unsteered") {
      items.push(["KL bits", fmt(r.kl_mean, 3)], ["KL first", fmt(r.kl_first, 3)]);
      if (r.first_divergence !== null && r.first_divergence !== undefined) items.push(["diverges at token", String(r.first_divergence)]);
    }
    for (const [domain, v] of Object.entries(r.semantic || {})) items.push([`${domain} semantic`, fmt(v, 3)]);
    for (const [domain, n] of Object.entries(r.keyword_hits || {})) items.push([`${domain} keywords`, String(n)]);
    col.badges.replaceChildren(...items.map(([k, v]) => el("span", { class: "badge", title: k }, `${k} `, el("b", { text: v }))));
    col.root.classList.add("finished");
  }
}
