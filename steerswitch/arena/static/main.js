// Entry point: tabs, model facts, and the three views.

import { getJSON } from "./api.js";
import { ArenaView } from "./arena.js";
import { RegistryView } from "./registry.js";
import { RunsView } from "./runs.js";

const $ = (id) => document.getElementById(id);

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
}

async function main() {
  const arena = new ArenaView();
  const runs = new RunsView();
  const registry = new RegistryView();
  let registryLoaded = false;
  for (const tab of document.querySelectorAll(".tab")) {
    tab.addEventListener("click", () => {
      showView(tab.dataset.view);
      if (tab.dataset.view === "registry" && !registryLoaded) { registryLoaded = true; registry.load(); }
      if (tab.dataset.view === "runs") runs.refresh();
    });
  }
  try {
    const [model, domains] = await Promise.all([getJSON("/api/model"), getJSON("/api/domains")]);
    const shortName = model.name.length > 32 && model.name.includes("/") ? "…/" + model.name.split("/").filter(Boolean).pop() : model.name;
    $("model-badge").textContent = `${shortName} · ${model.architecture} · ${model.num_layers} layers · hidden ${model.hidden_size}`;
    $("model-badge").title = model.name;
    $("registry-badge").textContent = domains.registry ? `${domains.domains.length} domains` : "no registry";
    $("chat-label").hidden = !model.chat_template;
    arena.setDomains(domains.domains, model.num_layers);
    registry.setDomains(domains.domains);
    document.body.dataset.ready = "true";
  } catch (err) {
    $("model-badge").textContent = `error: ${err.detail || err}`;
  }
  runs.init();
}

main();
