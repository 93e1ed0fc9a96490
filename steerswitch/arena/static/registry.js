// The registry view: cosine heatmap between domains, norms per layer, the domain table.

import { getJSON } from "./api.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#c0392b", "#2471a3", "#1e8449", "#b9770e", "#7d3c98", "#148f77", "#a04000", "#2e4053"];

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  return node;
}

// Diverging colour: red for +1, blue for -1, white at 0.
function cosColor(v) {
  const t = Math.max(-1, Math.min(1, v));
  const a = Math.abs(t);
  const [r, g, b] = t >= 0 ? [192, 57, 43] : [36, 113, 163];
  const mix = (c) => Math.round(255 + (c - 255) * a);
  return `rgb(${mix(r)}, ${mix(g)}, ${mix(b)})`;
}

export class RegistryView {
  constructor() {
    $("geo-layer").addEventListener("change", () => this.load(Number($("geo-layer").value)));
  }

  setDomains(domains) {
    const body = $("domains-table").tBodies[0];
    body.replaceChildren(...domains.map((d) => {
      const tr = document.createElement("tr");
      for (const v of [d.domain, d.layer, d.alpha, d.alpha_units, d.mode, d.norm.toFixed(3), d.keywords.slice(0, 8).join(", ")]) {
        const td = document.createElement("td");
        td.textContent = String(v);
        tr.append(td);
      }
      return tr;
    }));
  }

  async load(layer) {
    const url = layer === undefined ? "/api/vectors/geometry" : `/api/vectors/geometry?layer=${layer}`;
    let geo;
    try {
      geo = await getJSON(url);
    } catch (err) {
      $("heatmap").textContent = err.detail || String(err);
      return;
    }
    const select = $("geo-layer");
    select.replaceChildren(...geo.layers.map((l) => {
      const o = document.createElement("option");
      o.value = String(l);
      o.textContent = String(l);
      if (l === geo.layer) o.selected = true;
      return o;
    }));
    this.heatmap(geo);
    this.norms(geo);
  }

  heatmap(geo) {
    const box = $("heatmap");
    box.replaceChildren();
    if (!geo.domains.length) { box.textContent = "no registry loaded"; return; }
    const n = geo.domains.length;
    box.style.gridTemplateColumns = `minmax(7rem, max-content) repeat(${n}, minmax(3.2rem, 1fr))`;
    const div = (cls, text) => { const d = document.createElement("div"); d.className = cls; d.textContent = text; return d; };
    box.append(div("hm-corner", ""));
    for (const d of geo.domains) box.append(div("hm-col", d));
    geo.cosine.forEach((row, i) => {
      box.append(div("hm-row", geo.domains[i]));
      row.forEach((v, j) => {
        const c = div("hm-cell", v.toFixed(2));
        c.style.background = cosColor(v);
        c.style.color = Math.abs(v) > 0.6 ? "#fff" : "#222";
        c.title = `cos(${geo.domains[i]}, ${geo.domains[j]}) = ${v.toFixed(4)} at layer ${geo.layer}`;
        box.append(c);
      });
    });
  }

  // Two small charts: each domain's vector norm per layer, and the model's mean residual norm.
  norms(geo) {
    const box = $("norms");
    box.replaceChildren();
    const chart = (title, series, layers) => {
      const W = 420, H = 170, L = 44, R = 10, T = 22, B = 26;
      const all = series.flatMap((s) => s.values);
      const max = Math.max(1e-9, ...all);
      const x = (l) => L + (layers.length < 2 ? 0 : ((l - layers[0]) / (layers[layers.length - 1] - layers[0])) * (W - L - R));
      const y = (v) => T + (1 - v / max) * (H - T - B);
      const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
      const t = svg("text", { x: L, y: 14, class: "chart-title" });
      t.textContent = title;
      g.append(t, svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }), svg("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }));
      for (const frac of [0, 0.5, 1]) {
        const lab = svg("text", { x: L - 4, y: y(max * frac) + 4, class: "tick", "text-anchor": "end" });
        lab.textContent = (max * frac).toPrecision(2);
        g.append(lab);
      }
      for (const l of layers) {
        const lab = svg("text", { x: x(l), y: H - B + 14, class: "tick", "text-anchor": "middle" });
        lab.textContent = String(l);
        g.append(lab);
      }
      series.forEach((s, k) => {
        const color = s.color || COLORS[k % COLORS.length];
        const pts = s.layers.map((l, i) => `${x(l)},${y(s.values[i])}`).join(" ");
        if (s.layers.length > 1) g.append(svg("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2 }));
        s.layers.forEach((l, i) => {
          const dot = svg("circle", { cx: x(l), cy: y(s.values[i]), r: l === s.mark ? 5 : 3, fill: color });
          const tip = svg("title");
          tip.textContent = `${s.name} layer ${l}: ${s.values[i].toFixed(4)}`;
          dot.append(tip);
          g.append(dot);
        });
      });
      return g;
    };
    if (geo.norms.length) {
      const layers = geo.layers;
      box.append(chart("|v| per layer (large dot: registry layer)", geo.norms.map((d) => ({ name: d.domain, layers: d.layers, values: d.norms, mark: d.registry_layer })), layers));
      const legend = document.createElement("div");
      legend.className = "legend";
      geo.norms.forEach((d, k) => {
        const s = document.createElement("span");
        s.style.setProperty("--c", COLORS[k % COLORS.length]);
        s.textContent = d.domain;
        legend.append(s);
      });
      box.append(legend);
    }
    if (geo.model_layer_norms.length) {
      const layers = geo.model_layer_norms.map((_, i) => i);
      box.append(chart("model: mean residual norm per layer", [{ name: "residual", layers, values: geo.model_layer_norms, color: "#555" }], layers));
    }
  }
}
