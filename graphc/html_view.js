// graphc graph view: a canvas that draws only what is in view; layout comes from Python.
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("graph-data").textContent);
  const W = 130, H = 38;
  const COLOURS = {input: "#bde0fe", param: "#ffe08a", const: "#e6e6e6", state: "#ffd6a5",
                   forward: "#ffffff", backward: "#ffd6d6"};
  const byId = new Map(data.nodes.map(n => [n.id, n]));
  const gradients = new Map();            // forward id -> its gradient nodes
  for (const n of data.nodes) {
    if (n.grad_of !== undefined) {
      if (!gradients.has(n.grad_of)) gradients.set(n.grad_of, []);
      gradients.get(n.grad_of).push(n.id);
    }
  }
  const kernelBoxes = data.kernels.map((k, i) => {
    const members = k.nodes.map(id => byId.get(id)).filter(n => n);
    if (members.length < 2) return null;
    const xs = members.map(n => n.x), ys = members.map(n => n.y);
    return {i, x0: Math.min(...xs) - 6, y0: Math.min(...ys) - 6,
            x1: Math.max(...xs) + W + 6, y1: Math.max(...ys) + H + 6};
  }).filter(b => b);

  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const view = {x: -20, y: -20, k: 1};
  let selected = null, highlighted = new Set(), kernelShown = -1;
  let collapsed = [];                      // [{prefix, ids:Set, x, y}]
  const hiddenBy = new Map();              // node id -> collapsed box

  function resize() {
    canvas.width = canvas.clientWidth * devicePixelRatio;
    canvas.height = canvas.clientHeight * devicePixelRatio;
    draw();
  }
  function pos(id) {
    const box = hiddenBy.get(id);
    return box ? box : byId.get(id);
  }
  function draw() {
    const r = devicePixelRatio;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#fafafa";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(r * view.k, 0, 0, r * view.k, -view.x * r * view.k, -view.y * r * view.k);
    const x0 = view.x - W, y0 = view.y - H;
    const x1 = view.x + canvas.width / r / view.k, y1 = view.y + canvas.height / r / view.k;
    const inView = (ax, ay, bx, by) => bx >= x0 && ax <= x1 && by >= y0 && ay <= y1;
    for (const b of kernelBoxes) {
      if (!inView(b.x0, b.y0, b.x1, b.y1)) continue;
      ctx.fillStyle = b.i === kernelShown ? "rgba(80,140,255,0.25)" : "rgba(120,120,200,0.08)";
      ctx.fillRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
    }
    ctx.lineWidth = 1 / Math.max(view.k, 0.2);
    ctx.strokeStyle = "rgba(90,90,90,0.45)";
    ctx.beginPath();
    for (const [s, d] of data.edges) {
      const a = pos(s), b = pos(d);
      if (a === b) continue;
      const ax = a.x + W / 2, ay = a.y + H, bx = b.x + W / 2, by = b.y;
      if (!inView(Math.min(ax, bx), Math.min(ay, by), Math.max(ax, bx), Math.max(ay, by)))
        continue;
      ctx.moveTo(ax, ay); ctx.lineTo(bx, by);
    }
    ctx.stroke();
    const text = view.k > 0.35;
    ctx.font = "11px sans-serif";
    for (const n of data.nodes) {
      if (hiddenBy.has(n.id) || !inView(n.x, n.y, n.x, n.y)) continue;
      ctx.fillStyle = COLOURS[n.role] || "#fff";
      ctx.fillRect(n.x, n.y, W, H);
      const hot = n.id === selected ? "#d00" : highlighted.has(n.id) ? "#06f" : "#777";
      ctx.strokeStyle = hot;
      ctx.lineWidth = hot === "#777" ? 1 : 3;
      ctx.strokeRect(n.x, n.y, W, H);
      if (text) {
        ctx.fillStyle = "#000";
        ctx.fillText((n.label + " " + n.op).slice(0, 22), n.x + 4, n.y + 14);
        ctx.fillStyle = "#555";
        ctx.fillText((n.shape + " " + n.where).slice(0, 24), n.x + 4, n.y + 29);
      }
    }
    for (const box of collapsed) {
      ctx.fillStyle = "#dfe7ff";
      ctx.fillRect(box.x, box.y, W, H);
      ctx.strokeStyle = "#335";
      ctx.lineWidth = 2;
      ctx.strokeRect(box.x, box.y, W, H);
      ctx.fillStyle = "#000";
      ctx.fillText((box.prefix + "* (" + box.ids.size + ")").slice(0, 22), box.x + 4,
                   box.y + 22);
    }
  }

  function esc(s) {
    return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;",
                                               '"': "&quot;"}[c]));
  }
  function link(id) {
    const n = byId.get(id);
    return `<span class="link" data-node="${id}">${esc(n.label)} ${esc(n.op)}</span>`;
  }
  function showKernel(k) {
    kernelShown = k;
    document.getElementById("source").textContent =
      k >= 0 ? `# ${data.kernels[k].name}: ${data.kernels[k].what}\n${data.kernels[k].source}`
             : "";
    draw();
  }
  function select(id, center) {
    const n = byId.get(id);
    if (!n) return false;
    selected = id;
    const related = n.grad_of !== undefined ? [n.grad_of] : (gradients.get(id) || []);
    highlighted = new Set(related);
    let rows = [["op", esc(n.op)], ["shape", esc(n.shape)], ["dtype", esc(n.dtype)],
                ["role", esc(n.role)], ["line", esc(n.where)], ["layer", esc(n.scope)]];
    if (n.grad_of !== undefined)
      rows.push(["rule", esc(n.rule)], ["gradient of", link(n.grad_of)]);
    if (related.length && n.grad_of === undefined)
      rows.push(["gradient nodes", related.map(link).join(", ")]);
    if (n.kernel >= 0)
      rows.push(["kernel", `<span class="link" data-kernel="${n.kernel}">` +
                 `${esc(data.kernels[n.kernel].name)}</span> ${esc(data.kernels[n.kernel].what)}`]);
    document.getElementById("details").innerHTML =
      `<b>${esc(n.label)}</b><table>` +
      rows.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("") + "</table>";
    showKernel(n.kernel);
    if (center) {
      view.x = n.x + W / 2 - canvas.clientWidth / 2 / view.k;
      view.y = n.y + H / 2 - canvas.clientHeight / 2 / view.k;
    }
    draw();
    return true;
  }
  function search(query) {
    const q = query.trim().toLowerCase();
    const hits = q ? data.nodes.filter(n => n.label.toLowerCase().includes(q) ||
      n.op.toLowerCase() === q || n.where.toLowerCase().includes(q) ||
      n.scope.toLowerCase().startsWith(q)) : [];
    document.getElementById("results").innerHTML = hits.slice(0, 300).map(n =>
      `<div data-node="${n.id}">${esc(n.label)} ${esc(n.op)} ${esc(n.shape)} ` +
      `${esc(n.where)}</div>`).join("") + (hits.length > 300 ? `<i>+${hits.length - 300}</i>` : "");
    return hits.map(n => n.id);
  }
  function collapse(prefix) {
    if (!prefix) return 0;
    const ids = new Set(data.nodes.filter(n => n.scope.startsWith(prefix) &&
                                         !hiddenBy.has(n.id)).map(n => n.id));
    if (!ids.size) return 0;
    let x = 0, y = 0;
    for (const id of ids) { x += byId.get(id).x; y += byId.get(id).y; }
    const box = {prefix, ids, x: x / ids.size, y: y / ids.size};
    collapsed.push(box);
    for (const id of ids) hiddenBy.set(id, box);
    draw();
    return ids.size;
  }
  function expandAll() { collapsed = []; hiddenBy.clear(); draw(); }

  function profileTable() {
    const p = data.profile;
    if (!p) return;
    const cols = [["index", "#"], ["kernel", "kernel"], ["kind", "kind"], ["share", "share %"],
                  ["seconds", "s"], ["gflops", "GFLOP/s"], ["gbytes", "GB/s"], ["what", "what"]];
    let key = "share", down = true;
    const el = document.getElementById("profile");
    function render() {
      const rows = p.rows.slice().sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0) *
                                                 (down ? -1 : 1));
      const cell = (r, c) => typeof r[c] === "number" ?
        (c === "share" ? (100 * r[c]).toFixed(1) : c === "index" ? r[c] : r[c].toPrecision(3))
        : esc(String(r[c]).slice(0, 40));
      el.innerHTML = `<h3>profile (${p.steps} steps)</h3><table><tr>` +
        cols.map(([c, t]) => `<th data-col="${c}">${t}</th>`).join("") + "</tr>" +
        rows.map(r => `<tr data-kernel="${r.index}">` +
                 cols.map(([c]) => `<td>${cell(r, c)}</td>`).join("") + "</tr>").join("") +
        "</table>";
    }
    el.addEventListener("click", e => {
      const th = e.target.closest("th");
      if (th) { const c = th.dataset.col; down = c === key ? !down : true; key = c; render(); return; }
      const tr = e.target.closest("tr[data-kernel]");
      if (tr) {
        const k = Number(tr.dataset.kernel);
        highlighted = new Set(data.kernels[k].nodes);
        const first = data.kernels[k].nodes[0];
        if (first !== undefined) select(first, true);
        highlighted = new Set(data.kernels[k].nodes);
        showKernel(k);
      }
    });
    render();
  }

  // -- events --------------------------------------------------------------------------
  let drag = null;
  canvas.addEventListener("mousedown", e => { drag = {x: e.clientX, y: e.clientY, moved: false}; });
  window.addEventListener("mousemove", e => {
    if (!drag) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 2) drag.moved = true;
    view.x -= dx / view.k; view.y -= dy / view.k;
    drag.x = e.clientX; drag.y = e.clientY;
    if (drag.moved) draw();
  });
  window.addEventListener("mouseup", e => {
    const d = drag;
    drag = null;
    if (!d || d.moved || e.target !== canvas) return;
    const rect = canvas.getBoundingClientRect();
    const wx = view.x + (e.clientX - rect.left) / view.k, wy = view.y + (e.clientY - rect.top) / view.k;
    for (const box of collapsed) {
      if (wx >= box.x && wx <= box.x + W && wy >= box.y && wy <= box.y + H) {
        collapsed = collapsed.filter(b => b !== box);
        for (const id of box.ids) hiddenBy.delete(id);
        draw();
        return;
      }
    }
    for (const n of data.nodes) {
      if (!hiddenBy.has(n.id) && wx >= n.x && wx <= n.x + W && wy >= n.y && wy <= n.y + H) {
        select(n.id, false);
        return;
      }
    }
  });
  canvas.addEventListener("wheel", e => {
    e.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const mx = e.clientX - rect.left, my = e.clientY - rect.top;
    const wx = view.x + mx / view.k, wy = view.y + my / view.k;
    view.k = Math.min(4, Math.max(0.02, view.k * Math.exp(-e.deltaY / 500)));
    view.x = wx - mx / view.k; view.y = wy - my / view.k;
    draw();
  }, {passive: false});
  document.getElementById("search").addEventListener("input", e => search(e.target.value));
  document.getElementById("side").addEventListener("click", e => {
    const t = e.target.closest("[data-node]");
    if (t) select(Number(t.dataset.node), true);
    const k = e.target.closest(".link[data-kernel]");
    if (k) showKernel(Number(k.dataset.kernel));
  });
  document.getElementById("collapse").addEventListener("click", () =>
    collapse(document.getElementById("prefix").value.trim()));
  document.getElementById("expand").addEventListener("click", expandAll);
  document.getElementById("legend").innerHTML = Object.entries(COLOURS).map(([r, c]) =>
    `<span style="background:${c}">${r}</span>`).join("") +
    ` ${data.nodes.length} nodes, ${data.edges.length} edges, ${data.kernels.length} kernels`;
  window.addEventListener("resize", resize);

  profileTable();
  resize();
  // for scripted use and tests: the page's own functions and state
  window.graphcView = {data, select, search, collapse, expandAll, view,
    screenPos(id) {
      const n = byId.get(id), rect = canvas.getBoundingClientRect();
      return {x: rect.left + (n.x + W / 2 - view.x) * view.k,
              y: rect.top + (n.y + H / 2 - view.y) * view.k};
    },
    selected: () => selected, highlighted: () => [...highlighted], shownKernel: () => kernelShown};
})();
