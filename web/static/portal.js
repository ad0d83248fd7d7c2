// sslvpn portal: a confirmation before destructive forms, tables as cards on phones, times
// in the reader's own zone, the live traffic charts (bytes/s with axes: the dashboard's gateway, and
// the Traffic page's node, tunnel or user history) and the live sessions table, both
// refreshed in place. No framework.
"use strict";

// Forms that delete, revoke or kick carry data-confirm: nothing is sent unless the person
// says yes. (Listening on the document also covers tables refreshed in place.)
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-confirm]");
  if (form && !window.confirm(form.dataset.confirm)) { event.preventDefault(); }
});

// Tables whose first row is all headers become cards on a phone (portal.css): each cell gets
// its column's name as a label, and a cell under an empty header holds the row's actions.
function sslvpnCards(root) {
  const tables = root.matches && root.matches("table") ? [root] : root.querySelectorAll("table");
  for (const table of tables) {
    const head = table.rows[0];
    if (!head || [...head.cells].some((cell) => cell.tagName !== "TH")) { continue; }
    table.classList.add("cards");
    head.classList.add("head");
    const labels = [...head.cells].map((cell) => cell.textContent.replace(/[▲▼]/g, "").trim());
    for (const row of [...table.rows].slice(1)) {
      let column = 0;
      for (const cell of row.cells) {
        if (cell.tagName === "TD" && cell.colSpan === 1) {
          if (labels[column]) { cell.dataset.label = labels[column]; } else { cell.classList.add("actions"); }
        }
        column += cell.colSpan;
      }
    }
  }
}
sslvpnCards(document);

(function () {
  // <time datetime="...Z" data-precision="second|minute|day"> from the server says UTC;
  // the reader sees the same form in their own zone, named, with the UTC text as a tooltip.
  const pad = (n) => String(n).padStart(2, "0");
  function zoneOf(d) {
    const part = new Intl.DateTimeFormat([], { timeZoneName: "short" })
      .formatToParts(d).find((p) => p.type === "timeZoneName");
    return part ? part.value : "";
  }
  function localise(root) {
    for (const el of root.querySelectorAll("time[datetime][data-precision]")) {
      const d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) { continue; }
      const precision = el.dataset.precision;
      let text = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
      if (precision !== "day") {
        text += " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
        if (precision === "second") { text += ":" + pad(d.getSeconds()); }
        text += " " + zoneOf(d);
      }
      if (!el.title) { el.title = el.textContent; }
      el.textContent = text;
    }
  }
  localise(document);
  window.sslvpnLocalise = localise;  // for tables refreshed in place
})();

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
      if (replacement) {
        table.innerHTML = replacement.innerHTML;
        window.sslvpnLocalise(table);
        sslvpnCards(table);
      }
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

  function timeLabel(t, range) {
    const d = new Date(t * 1000);
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    return range > 86400 ? d.toLocaleDateString([], { weekday: "short" }) + " " + hm : hm;
  }

  function draw(points) {
    // Draw at the size the canvas is shown (a phone shows it 360 px wide): a fixed 800 px
    // buffer scaled down made the axis labels unreadably small there.
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(w * ratio) || canvas.height !== Math.round(h * ratio)) {
      canvas.width = Math.round(w * ratio);
      canvas.height = Math.round(h * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const left = 72, bottom = 22, top = 8, right = 8;
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#d0d6e0";
    ctx.strokeRect(left, top, w - left - right, h - top - bottom);
    ctx.fillStyle = "#555";
    if (points.length < 2) {
      ctx.fillText("collecting samples…", left + 8, h / 2);
      return;
    }
    const max = Math.max(1, ...points.map((p) => Math.max(p.in, p.out)));
    const t0 = points[0].at, t1 = points[points.length - 1].at, range = Math.max(1, t1 - t0);
    const x = (t) => left + ((t - t0) / range) * (w - left - right);
    const y = (v) => h - bottom - (v / max) * (h - top - bottom);
    ctx.textAlign = "right";  // the y axis: rates with their unit
    for (const share of [0, 0.5, 1]) {
      ctx.fillText(human(max * share), left - 6, y(max * share) + 4);
    }
    ctx.textAlign = "center";  // the x axis: local times
    const ticks = w < 500 ? 2 : 4;  // fewer time labels on a narrow chart
    for (let i = 0; i <= ticks; i += 1) {
      const t = t0 + (range * i) / ticks;
      ctx.fillText(timeLabel(t, range), Math.min(Math.max(x(t), left + 20), w - 30), h - 6);
    }
    ctx.textAlign = "left";
    for (const key of ["in", "out"]) {
      ctx.beginPath();
      ctx.strokeStyle = colours[key];
      points.forEach((p, i) => (i ? ctx.lineTo(x(p.at), y(p[key])) : ctx.moveTo(x(p.at), y(p[key]))));
      ctx.stroke();
    }
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
