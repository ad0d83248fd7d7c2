// sslvpn portal: the dashboard's live traffic chart (bytes/s per gateway) and the live
// sessions table, both refreshed in place. No framework.
"use strict";

(function () {
  const table = document.querySelector("table[data-refresh]");
  if (!table) { return; }
  async function refresh() {
    try {
      const here = window.location.pathname + window.location.search;  // keeps a filter
      const response = await fetch(here, { credentials: "same-origin" });
      if (!response.ok) { return; }
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const replacement = fresh.getElementById(table.id);
      if (replacement) { table.innerHTML = replacement.innerHTML; }
    } catch (e) {
      // the next refresh tries again
    }
  }
  setInterval(refresh, Number(table.dataset.refresh) * 1000);
})();

(function () {
  const canvas = document.getElementById("traffic-chart");
  if (!canvas) { return; }
  const label = document.getElementById("traffic-now");
  const colours = { in: "#1e7b34", out: "#9a5b00" };

  function human(rate) {
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let i = 0;
    while (rate >= 1000 && i < units.length - 1) { rate /= 1000; i += 1; }
    return rate.toFixed(1) + " " + units[i];
  }

  function draw(points) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 24;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#d0d6e0";
    ctx.strokeRect(pad, 4, w - pad - 4, h - pad - 4);
    if (points.length < 2) {
      ctx.fillStyle = "#555";
      ctx.fillText("collecting samples…", pad + 8, h / 2);
      return;
    }
    const max = Math.max(1, ...points.map((p) => Math.max(p.in, p.out)));
    const t0 = points[0].at, t1 = points[points.length - 1].at;
    const x = (t) => pad + ((t - t0) / Math.max(1, t1 - t0)) * (w - pad - 8);
    const y = (v) => h - pad - (v / max) * (h - pad - 10);
    for (const key of ["in", "out"]) {
      ctx.beginPath();
      ctx.strokeStyle = colours[key];
      points.forEach((p, i) => (i ? ctx.lineTo(x(p.at), y(p[key])) : ctx.moveTo(x(p.at), y(p[key]))));
      ctx.stroke();
    }
    ctx.fillStyle = "#555";
    ctx.fillText("max " + human(max), pad + 4, 16);
    const last = points[points.length - 1];
    if (label) { label.textContent = "now: in " + human(last.in) + ", out " + human(last.out); }
  }

  async function refresh() {
    try {
      const response = await fetch(canvas.dataset.source, { credentials: "same-origin" });
      if (response.ok) { draw((await response.json()).points); }
    } catch (e) {
      // the next refresh tries again
    }
  }

  refresh();
  setInterval(refresh, Number(canvas.dataset.refresh || 5) * 1000);
})();
