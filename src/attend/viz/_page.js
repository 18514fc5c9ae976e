"use strict";
// attend attention viewer. Reads the JSON block #attend-data; draws on canvases only.
// Token text reaches the page through canvas fillText and textContent, never as markup.
(function () {
  const data = JSON.parse(document.getElementById("attend-data").textContent);
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  const $ = (id) => document.getElementById(id);
  const texts = data.texts.map((t) => {
    const raw = atob(t.weights);
    const w = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) w[i] = raw.charCodeAt(i);
    return Object.assign({}, t, { w: w });
  });
  const state = { text: 0, layer: 0, heads: new Set([0]), focus: 0, view: "head", hover: null };

  function cur() { return texts[state.text]; }
  // weight of layer l, head h, from token i to token j; NaN where the model's weight was not finite
  function weight(t, l, h, i, j) {
    const v = t.w[((l * t.heads + h) * t.n + i) * t.n + j];
    return v === 255 ? NaN : v / 254;
  }
  function short(tok) { return tok.length > 16 ? tok.slice(0, 15) + "\u2026" : tok; }
  function setStatus(msg) { $("status").textContent = msg; }
  function option(sel, value, label) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = label; sel.appendChild(o);
  }

  function buildControls() {
    $("title").textContent = data.title;
    const ts = $("text"); ts.textContent = "";
    texts.forEach((t, i) => option(ts, i, t.label));
    ts.value = String(state.text);
    $("text-box").hidden = texts.length < 2;
    const ls = $("layer"); ls.textContent = "";
    for (let l = 0; l < cur().layers; l++) option(ls, l, "layer " + (l + 1));
    ls.value = String(state.layer);
    const hs = $("heads"); hs.textContent = "";
    for (let h = 0; h < cur().heads; h++) {
      const b = document.createElement("button");
      b.type = "button"; b.className = "head"; b.dataset.head = String(h);
      b.textContent = String(h + 1); b.title = "head " + (h + 1) + " (shift-click: only this head)";
      b.style.setProperty("--c", COLORS[h % COLORS.length]);
      b.addEventListener("click", (ev) => {
        if (ev.shiftKey || state.view === "heat") { state.heads = new Set([h]); }
        else if (state.heads.has(h) && state.heads.size > 1) { state.heads.delete(h); }
        else { state.heads.add(h); }
        state.focus = h;
        render();
      });
      hs.appendChild(b);
    }
  }

  function sizeCanvas(c, w, h) {
    const r = window.devicePixelRatio || 1;
    c.width = Math.max(1, Math.round(w * r)); c.height = Math.max(1, Math.round(h * r));
    c.style.width = w + "px"; c.style.height = h + "px";
    const g = c.getContext("2d"); g.setTransform(r, 0, 0, r, 0, 0);
    return g;
  }

  // -- head view: lines from each token (left) to what it attends to (right) -------------
  const ROW = 18, LEFT = 170, RIGHT = 390, WIDTH = 560;
  function drawHead() {
    const t = cur(), c = $("canvas");
    const g = sizeCanvas(c, WIDTH, t.n * ROW + 10);
    g.fillStyle = "#fff"; g.fillRect(0, 0, WIDTH, t.n * ROW + 10);
    g.font = "13px sans-serif"; g.textBaseline = "middle";
    const y = (i) => 5 + i * ROW + ROW / 2;
    for (const h of state.heads) {
      g.strokeStyle = COLORS[h % COLORS.length];
      for (let i = 0; i < t.n; i++) {
        if (state.hover !== null && state.hover !== i) continue;
        for (let j = 0; j < t.n; j++) {
          const v = weight(t, state.layer, h, i, j);
          if (!(v > 0.01)) continue;
          g.globalAlpha = Math.min(1, v * (state.hover === null ? 0.8 : 1.0));
          g.lineWidth = state.hover === null ? 1.5 : 2.5;
          g.beginPath(); g.moveTo(LEFT + 6, y(i)); g.lineTo(RIGHT - 6, y(j)); g.stroke();
        }
      }
    }
    g.globalAlpha = 1;
    for (let i = 0; i < t.n; i++) {
      g.fillStyle = state.hover === i ? "#c00" : "#222";
      g.textAlign = "right"; g.fillText(short(t.tokens[i]), LEFT, y(i));
      g.textAlign = "left"; g.fillText(short(t.tokens[i]), RIGHT, y(i));
    }
  }

  // -- heat map of one layer and head ---------------------------------------------------
  function heatLayout(t) {
    const labels = t.n <= 80;
    const margin = labels ? 120 : 10;
    const cell = Math.max(1, Math.min(24, Math.floor(640 / t.n)));
    return { margin: margin, cell: cell, labels: labels };
  }
  function color(v) {
    if (Number.isNaN(v)) return [214, 39, 40];
    const a = Math.round(255 * (1 - v));
    return [a, a, 255];
  }
  function paintMatrix(t, l, h) {  // an n x n image of the weights
    const img = new ImageData(t.n, t.n);
    for (let i = 0; i < t.n; i++) for (let j = 0; j < t.n; j++) {
      const k = 4 * (i * t.n + j), rgb = color(weight(t, l, h, i, j));
      img.data[k] = rgb[0]; img.data[k + 1] = rgb[1]; img.data[k + 2] = rgb[2]; img.data[k + 3] = 255;
    }
    const off = document.createElement("canvas"); off.width = t.n; off.height = t.n;
    off.getContext("2d").putImageData(img, 0, 0);
    return off;
  }
  function drawHeat() {
    const t = cur(), c = $("canvas"), L = heatLayout(t), side = L.cell * t.n;
    const g = sizeCanvas(c, L.margin + side + 10, L.margin + side + 10);
    g.fillStyle = "#fff"; g.fillRect(0, 0, L.margin + side + 10, L.margin + side + 10);
    g.imageSmoothingEnabled = false;
    g.drawImage(paintMatrix(t, state.layer, state.focus), L.margin, L.margin, side, side);
    if (state.hover !== null) {
      g.strokeStyle = "#c00"; g.lineWidth = 2;
      g.strokeRect(L.margin, L.margin + state.hover * L.cell, side, L.cell);
    }
    if (L.labels) {
      g.font = Math.min(12, L.cell) + "px sans-serif"; g.fillStyle = "#222"; g.textBaseline = "middle";
      for (let i = 0; i < t.n; i++) {
        g.textAlign = "right"; g.fillStyle = state.hover === i ? "#c00" : "#222";
        g.fillText(short(t.tokens[i]), L.margin - 4, L.margin + (i + 0.5) * L.cell);
        g.save(); g.translate(L.margin + (i + 0.5) * L.cell, L.margin - 4); g.rotate(-Math.PI / 2);
        g.textAlign = "left"; g.fillStyle = "#222"; g.fillText(short(t.tokens[i]), 0, 0); g.restore();
      }
    }
  }

  // -- model view: every layer x head, click to zoom -------------------------------------
  function drawModel() {
    const t = cur(), grid = $("grid"), thumb = t.heads > 12 ? 48 : 64;
    grid.textContent = "";
    grid.style.gridTemplateColumns = "auto repeat(" + t.heads + ", " + thumb + "px)";
    grid.appendChild(document.createElement("span"));
    for (let h = 0; h < t.heads; h++) {
      const s = document.createElement("span"); s.className = "axis"; s.textContent = "head " + (h + 1); grid.appendChild(s);
    }
    for (let l = 0; l < t.layers; l++) {
      const s = document.createElement("span"); s.className = "axis"; s.textContent = "layer " + (l + 1); grid.appendChild(s);
      for (let h = 0; h < t.heads; h++) {
        const c = document.createElement("canvas");
        c.className = "thumb"; c.dataset.layer = String(l); c.dataset.head = String(h);
        c.title = "layer " + (l + 1) + ", head " + (h + 1) + ": click to zoom";
        const g = sizeCanvas(c, thumb, thumb); g.imageSmoothingEnabled = t.n > thumb;
        g.drawImage(paintMatrix(t, l, h), 0, 0, thumb, thumb);
        c.addEventListener("click", () => {
          state.layer = l; state.focus = h; state.heads = new Set([h]); state.view = "heat"; render();
        });
        grid.appendChild(c);
      }
    }
  }

  function render() {
    const t = cur();
    state.layer = Math.min(state.layer, t.layers - 1);
    $("layer").value = String(state.layer);
    for (const b of document.querySelectorAll("button.head")) {
      b.classList.toggle("on", state.heads.has(Number(b.dataset.head)));
    }
    for (const b of document.querySelectorAll("button.tab")) b.classList.toggle("on", b.dataset.view === state.view);
    $("stage").hidden = state.view === "model";
    $("grid").hidden = state.view !== "model";
    $("layer-box").hidden = state.view === "model";
    if (state.view === "head") drawHead();
    else if (state.view === "heat") drawHeat();
    else drawModel();
    document.body.dataset.view = state.view;
  }

  function tokenAt(ev) {
    const t = cur(), r = $("canvas").getBoundingClientRect();
    const x = ev.clientX - r.left, y = ev.clientY - r.top;
    if (state.view === "head") {
      const i = Math.floor((y - 5) / ROW);
      return i >= 0 && i < t.n ? i : null;
    }
    const L = heatLayout(t), i = Math.floor((y - L.margin) / L.cell), j = Math.floor((x - L.margin) / L.cell);
    if (i < 0 || i >= t.n) return null;
    if (j >= 0 && j < t.n) {
      const v = weight(t, state.layer, state.focus, i, j);
      setStatus(t.tokens[i] + " \u2192 " + t.tokens[j] + ": " + (Number.isNaN(v) ? "not finite" : v.toFixed(3)));
    }
    return i;
  }
  function describe(i) {
    const t = cur(), heads = Array.from(state.heads), avg = [];
    for (let j = 0; j < t.n; j++) {
      let s = 0; for (const h of heads) s += weight(t, state.layer, h, i, j);
      avg.push([s / heads.length, j]);
    }
    avg.sort((a, b) => b[0] - a[0]);
    setStatus(t.tokens[i] + " attends to " + avg.slice(0, 3).map((p) => t.tokens[p[1]] + " " + p[0].toFixed(2)).join(", ") +
              " (layer " + (state.layer + 1) + ", heads " + heads.map((h) => h + 1).join(" ") + ")");
  }

  function exportPNG() {
    let src = $("canvas");
    if (state.view === "model") {  // one image of the whole grid
      const thumbs = Array.from(document.querySelectorAll("canvas.thumb")), t = cur(), k = thumbs[0].width;
      src = document.createElement("canvas"); src.width = t.heads * (k + 4); src.height = t.layers * (k + 4);
      const g = src.getContext("2d"); g.fillStyle = "#fff"; g.fillRect(0, 0, src.width, src.height);
      thumbs.forEach((c) => g.drawImage(c, Number(c.dataset.head) * (k + 4), Number(c.dataset.layer) * (k + 4)));
    }
    return src.toDataURL("image/png");
  }

  $("text").addEventListener("change", (e) => { state.text = Number(e.target.value); state.hover = null; buildControls(); render(); });
  $("layer").addEventListener("change", (e) => { state.layer = Number(e.target.value); render(); });
  for (const b of document.querySelectorAll("button.tab")) {
    b.addEventListener("click", () => { state.view = b.dataset.view; state.hover = null; render(); });
  }
  $("canvas").addEventListener("mousemove", (ev) => {
    const i = tokenAt(ev);
    if (i !== state.hover) { state.hover = i; render(); }
    if (i !== null && state.view === "head") describe(i);
  });
  $("canvas").addEventListener("mouseleave", () => { state.hover = null; render(); });
  $("export").addEventListener("click", () => {
    const a = document.createElement("a");
    a.href = exportPNG(); a.download = "attention-" + state.view + ".png";
    document.body.appendChild(a); a.click(); a.remove();
  });

  buildControls();
  render();
  setStatus(data.note || "Hover a token to see what it attends to; click heads to select them.");
  window.attendView = { state: state, render: render, exportPNG: exportPNG };
})();
