// The runs view: start an orchestrated run, watch its step timeline fill, browse earlier runs.

import { getJSON, postSSE } from "./api.js";

const $ = (id) => document.getElementById(id);
const fmt = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function alphaText(base, effective) {
  if (base === null || base === undefined) return effective ? `→ ${fmt(effective, 3)}` : "–";
  return `${fmt(base, 3)} → ${fmt(effective, 3)}`;
}

export class RunsView {
  constructor() {
    this.rows = new Map(); // step index -> {tr, out}
    $("run-form").addEventListener("submit", (e) => { e.preventDefault(); this.start(); });
    $("runs-refresh").addEventListener("click", () => this.refresh());
  }

  async init() {
    try {
      const scenarios = await getJSON("/api/scenarios");
      const select = $("run-scenario");
      select.replaceChildren(...scenarios.map((s) => {
        const o = document.createElement("option");
        o.value = s.name;
        o.textContent = `${s.name} (${s.agents.join(" → ")})`;
        return o;
      }));
    } catch (err) {
      this.status(String(err), true);
    }
    this.refresh();
  }

  status(text, isError = false) {
    $("run-status").textContent = text;
    $("run-status").classList.toggle("error", isError);
  }

  clear(title) {
    this.rows.clear();
    $("timeline").tBodies[0].replaceChildren();
    $("run-final").replaceChildren();
    $("run-title").textContent = title;
  }

  stepRow(ev) {
    const tr = document.createElement("tr");
    tr.className = "running";
    tr.append(
      cell(String(ev.index)), cell(ev.agent), cell(ev.domain ?? "none", "domain"), cell(ev.layer ?? "–"),
      cell(alphaText(ev.alpha_base, ev.alpha_effective)), cell("…", "num"), cell("…", "num"),
    );
    const outRow = document.createElement("tr");
    outRow.className = "step-output";
    const td = document.createElement("td");
    td.colSpan = 7;
    const pre = document.createElement("pre");
    td.append(pre);
    outRow.append(td);
    $("timeline").tBodies[0].append(tr, outRow);
    const row = { tr, out: pre };
    this.rows.set(ev.index, row);
    return row;
  }

  finishRow(rec) {
    const row = this.rows.get(rec.index) || this.stepRow(rec);
    const cells = row.tr.children;
    cells[2].textContent = rec.domain ?? "none";
    cells[3].textContent = rec.layer ?? "–";
    cells[4].textContent = alphaText(rec.alpha_base, rec.alpha_effective);
    cells[5].textContent = String(rec.new_tokens);
    cells[6].textContent = fmt(rec.tokens_per_second, 0);
    row.out.textContent = rec.output;
    row.tr.className = "done";
  }

  async start() {
    const body = {
      task: $("run-task").value,
      scenario: $("run-scenario").value || "simple_bug_fix",
      variant: $("run-variant").value,
      router: $("run-router").value,
      max_new_tokens: Number($("run-max-new").value) || 32,
    };
    this.clear(`Run: ${body.scenario} · ${body.variant}`);
    this.status("starting…");
    $("run-start").disabled = true;
    try {
      await postSSE("/api/runs", body, (name, data) => this.onEvent(name, data));
    } catch (err) {
      this.status(err.detail || String(err), true);
    } finally {
      $("run-start").disabled = false;
      this.refresh();
    }
  }

  onEvent(name, ev) {
    if (name === "run_start") {
      $("run-title").textContent = `Run ${ev.run_id}: ${ev.scenario} · ${ev.variant}`;
      this.status(`running ${ev.plan.join(" → ")}`);
    } else if (name === "step_start") {
      this.stepRow(ev);
    } else if (name === "token") {
      const row = this.rows.get(ev.index);
      if (row) row.out.textContent += ev.text;
    } else if (name === "step_end") {
      this.finishRow(ev.record);
    } else if (name === "run_end") {
      this.status(`finished: ${ev.steps} steps in ${fmt(ev.seconds)} s`);
    } else if (name === "record") {
      const t = ev.totals || {};
      $("run-final").textContent = `${t.new_tokens ?? "?"} new tokens, ${fmt(t.tokens_per_second, 0)} tok/s over ${ev.steps} steps`;
    } else if (name === "error") {
      this.status(ev.message, true);
    }
  }

  async show(runId) {
    try {
      const info = await getJSON(`/api/runs/${encodeURIComponent(runId)}`);
      this.clear(`Run ${info.run_id}: ${info.scenario} · ${info.variant} (${info.status})`);
      if (info.record) {
        for (const step of info.record.steps) this.finishRow(step);
        const t = info.record.totals || {};
        $("run-final").textContent = `${t.new_tokens ?? "?"} new tokens, ${fmt(t.tokens_per_second, 0)} tok/s over ${info.record.steps.length} steps`;
      } else if (info.error) {
        $("run-final").textContent = info.error;
      }
    } catch (err) {
      this.status(err.detail || String(err), true);
    }
  }

  async refresh() {
    try {
      const runs = await getJSON("/api/runs");
      $("runs").replaceChildren(...runs.map((r) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button";
        b.className = `run-link ${r.status}`;
        b.textContent = `${r.run_id} · ${r.scenario} · ${r.variant} · ${r.status}`;
        b.title = r.task;
        b.addEventListener("click", () => this.show(r.run_id));
        li.append(b);
        return li;
      }));
    } catch (err) {
      this.status(String(err), true);
    }
  }
}
