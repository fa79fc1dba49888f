// Soma console: a run page, live. Subscribes to the run's event stream
// (/ui/runs/ID/events, after the last event the page was rendered with),
// sets each node's status in the graph in place, fetches the graph again
// when nodes are added (a planner's plan, a for_each fan-out, a gate's
// rework), and when the run ends swaps in the page's status, timeline,
// verdicts, logs and costs. Without it the page is still right when loaded.
"use strict";
(() => {
  const graph = document.getElementById("graph");
  if (!graph || graph.dataset.live !== "1" || !window.EventSource) {
    return;
  }
  let fetching = false;
  let again = false;

  // Fetch the graph alone and swap it in (the box keeps its size).
  const refetchGraph = async () => {
    if (fetching) {
      again = true;
      return;
    }
    fetching = true;
    try {
      const response = await fetch(graph.dataset.graph, { credentials: "same-origin" });
      if (response.ok) {
        const doc = new DOMParser().parseFromString(await response.text(), "text/html");
        const svg = doc.querySelector("svg");
        if (svg) {
          graph.replaceChildren(document.importNode(svg, true));
        }
      }
    } finally {
      fetching = false;
      if (again) {
        again = false;
        refetchGraph();
      }
    }
  };

  const setNode = (name, status) => {
    const node = Array.from(graph.querySelectorAll("g.node")).find(
      (g) => g.dataset.node === name,
    );
    if (!node) {
      refetchGraph();
      return;
    }
    node.dataset.status = status;
    node.setAttribute("class", "node status-" + status);
    const text = node.querySelector(".node-status");
    if (text) {
      text.textContent = status;
    }
  };

  // When the run ends: the page as the server now renders it.
  const refreshPage = async () => {
    const response = await fetch(window.location.pathname, { credentials: "same-origin" });
    if (!response.ok) {
      return;
    }
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of ["run-status", "failure-class", "run-nodes", "run-cost", "timeline", "gates", "retries", "logs", "node-costs", "output"]) {
      const fresh = doc.getElementById(id);
      const old = document.getElementById(id);
      if (fresh && old) {
        old.replaceWith(document.importNode(fresh, true));
      } else if (fresh && id === "output") {
        document.getElementById("node-costs")?.after(document.importNode(fresh, true));
      }
    }
    for (const id of ["cancel-form", "resume-form"]) {
      if (!doc.getElementById(id)) {
        document.getElementById(id)?.remove();
      }
    }
    const freshGraph = doc.getElementById("graph")?.querySelector("svg");
    if (freshGraph) {
      graph.replaceChildren(document.importNode(freshGraph, true));
    }
    graph.dataset.live = "0";
  };

  const setRunStatus = (phase) => {
    const badge = document.getElementById("run-status");
    if (badge) {
      badge.dataset.status = phase;
      badge.className = "badge status-" + phase;
      badge.textContent = phase;
    }
  };

  const source = new EventSource(graph.dataset.events);
  const on = (kind, handle) =>
    source.addEventListener(kind, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      handle(data);
    });
  on("started", (e) => {
    setNode(e.node, "running");
    setRunStatus("running");
  });
  on("restarted", (e) => setNode(e.node, "running"));
  on("withdrawn", (e) => setNode(e.node, "waiting"));
  on("succeeded", (e) => setNode(e.node, "succeeded"));
  on("failed", (e) => setNode(e.node, e.retry_at_ms ? "retrying" : "failed"));
  on("expanded", (e) => {
    setNode(e.node, "expanded");
    refetchGraph();
  });
  on("fanned-out", (e) => {
    setNode(e.node, "fanned-out");
    refetchGraph();
  });
  on("verdict", () => refetchGraph());
  on("reworked", () => refetchGraph());
  on("finished", (e) => {
    source.close();
    setRunStatus(e.status);
    refreshPage();
  });
  // The stream ends after `finished`; a stream that fails otherwise is
  // retried by the browser with Last-Event-ID.
})();
