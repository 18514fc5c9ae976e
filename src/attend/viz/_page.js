"use strict";
// attend attention viewer. Reads the JSON block #attend-data; draws on canvases only.
// Token text reaches the page through canvas fillText and textContent, never as markup.
// Weights travel per (layer, head) as base64 and are decoded only when drawn: either every
// weight ("full") or, for long texts, each row's k strongest weights exactly plus a block-max
// overview ("summary").
(function () {
  const data = JSON.parse(document.getElementById("attend-data").textContent);
  const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd"];
  const ZOOM = 64, WINDOW = 100, HEAT = 640;
  const $ = (id) => document.getElementById(id);
  const texts = data.texts;
  const state = { text: 0, text2: Math.min(1, texts.length - 1), compare: false, section: 0, sel: "layer:0",
                  heads: new Set([0]), focus: 0, view: "head", hover: null, zoom: null, window: 0 };

  // -- data ------------------------------------------------------------------------------
  function bytes(b64) {
    const raw = atob(b64), out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }
  function decode(sec, b64) {
    const b = bytes(b64), nr = sec.rows.length, nc = sec.cols.length;
    if (sec.store === "full") return { full: b };
    const k = Math.min(sec.k, nc), n = nr * k, ov = sec.ov;
    const idx = new Uint16Array(b.buffer.slice(0, 2 * n));
    return { idx: idx, k: k, val: b.subarray(2 * n, 3 * n), kept: b.subarray(3 * n, 3 * n + nr),
             ov: b.subarray(3 * n + nr, 3 * n + nr + ov[2] * ov[3]) };
  }
  function section(t) { t = t === undefined ? texts[state.text] : t; return t.sections[Math.min(state.section, t.sections.length - 1)]; }
  function isAgg() { return state.sel.startsWith("agg:"); }
  function mapOf(sec, head) {  // the decoded map drawn for this selection and head
    sec._cache = sec._cache || {};
    let key, b64;
    if (isAgg()) {
      const a = sec.aggregates.find((x) => x.name === state.sel.slice(4));
      if (!a) return null;
      key = state.sel; b64 = a.map;
    } else {
      const l = Math.min(Number(state.sel.slice(6)), sec.layers - 1), h = Math.min(head, sec.heads - 1);
      key = l + ":" + h; b64 = sec.maps[l * sec.heads + h];
    }
    if (!sec._cache[key]) sec._cache[key] = decode(sec, b64);
    return sec._cache[key];
  }
  // the weight from row i to column j: a number, NaN (not finite), or null (not stored: below the row's k-th)
  function weight(sec, m, i, j) {
    if (m.full) { const v = m.full[i * sec.cols.length + j]; return v === 255 ? NaN : v / 254; }
    for (let r = i * m.k; r < (i + 1) * m.k; r++) {
      if (m.idx[r] === j) { const v = m.val[r]; return v === 255 ? NaN : v / 254; }
    }
    return null;
  }
  function rowTop(sec, m, i, count) {
    const out = [];
    if (m.full) { for (let j = 0; j < sec.cols.length; j++) out.push([weight(sec, m, i, j), j]); }
    else { for (let r = i * m.k; r < (i + 1) * m.k; r++) out.push([m.val[r] === 255 ? NaN : m.val[r] / 254, m.idx[r]]); }
    out.sort((a, b) => (Number.isNaN(b[0]) ? 2 : b[0]) - (Number.isNaN(a[0]) ? 2 : a[0]));
    return out.slice(0, count);
  }
  function heads() { return isAgg() ? [0] : Array.from(state.heads); }

  function short(tok) { return tok.length > 16 ? tok.slice(0, 15) + "\u2026" : tok; }
  function setStatus(msg) { $("status").textContent = msg; }
  function option(sel, value, label) {
    const o = document.createElement("option");
    o.value = String(value); o.textContent = label; sel.appendChild(o);
  }
  function sizeCanvas(c, w, h) {
    const r = window.devicePixelRatio || 1;
    c.width = Math.max(1, Math.round(w * r)); c.height = Math.max(1, Math.round(h * r));
    c.style.width = w + "px"; c.style.height = h + "px";
    const g = c.getContext("2d"); g.setTransform(r, 0, 0, r, 0, 0);
    return g;
  }
  function color(v) {
    if (v === null) return [255, 255, 255];
    if (Number.isNaN(v)) return [214, 39, 40];
    const a = Math.round(255 * (1 - v));
    return [a, a, 255];
  }

  // -- controls --------------------------------------------------------------------------
  function buildControls() {
    $("title").textContent = data.title;
    for (const [id, value] of [["text", state.text], ["text2", state.text2]]) {
      const ts = $(id); ts.textContent = "";
      texts.forEach((t, i) => option(ts, i, t.label));
      ts.value = String(value);
    }
    $("text-box").hidden = texts.length < 2;
    $("compare-box").hidden = texts.length < 2;
    $("text2").hidden = !state.compare;
    const sec = section(), ss = $("section"); ss.textContent = "";
    texts[state.text].sections.forEach((s, i) => option(ss, i, s.name));
    ss.value = String(Math.min(state.section, texts[state.text].sections.length - 1));
    $("section-box").hidden = texts[state.text].sections.length < 2;
    const ls = $("layer"); ls.textContent = "";
    for (let l = 0; l < sec.layers; l++) option(ls, "layer:" + l, "layer " + (l + 1));
    for (const a of sec.aggregates) option(ls, "agg:" + a.name, a.title);
    if (!Array.from(ls.options).some((o) => o.value === state.sel)) state.sel = "layer:0";
    ls.value = state.sel;
    const hs = $("heads"); hs.textContent = "";
    for (let h = 0; h < sec.heads; h++) {
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
    for (const h of Array.from(state.heads)) if (h >= sec.heads) state.heads.delete(h);
    if (state.heads.size === 0) state.heads.add(0);
    state.focus = Math.min(state.focus, sec.heads - 1);
    info();
  }
  function info() {  // what the page keeps and leaves out, for the text(s) shown
    const lines = [];
    for (const ti of state.compare ? [state.text, state.text2] : [state.text]) {
      const sec = section(texts[ti]), pre = state.compare ? texts[ti].label + ": " : "";
      if (sec.store === "summary") {
        lines.push(pre + sec.rows.length + " \u00d7 " + sec.cols.length + " tokens: each token keeps its " + sec.k +
          " strongest weights exactly (" + Math.round(100 * sec.kept) + "% of a row's weight on average), plus an overview of " +
          sec.ov[2] + " \u00d7 " + sec.ov[3] + " blocks of " + sec.ov[0] + " \u00d7 " + sec.ov[1] +
          " tokens (each its largest weight); smaller weights were dropped to keep the page small. Click the heat map to zoom in.");
      }
      for (const n of sec.left_out) lines.push(pre + n);
    }
    $("info").textContent = lines.join(" \u00b7 ");
    $("info").hidden = lines.length === 0;
  }

  // -- head view: lines from each query token (left) to the key tokens (right) -------------
  const ROW = 18, LEFT = 170, RIGHT = 390, WIDTH = 560;
  function span(n) {  // the window of one side: WINDOW tokens from state.window, kept inside the side
    if (n <= 2 * WINDOW) return [0, n];
    const start = Math.max(0, Math.min(state.window, n - WINDOW));
    return [start, start + WINDOW];
  }
  function missing(c, t) {  // an aggregate another text has but this one does not
    const g = sizeCanvas(c, WIDTH, 40);
    g.fillStyle = "#fff"; g.fillRect(0, 0, WIDTH, 40); g.fillStyle = "#555"; g.font = "13px sans-serif";
    g.fillText("not computed for this text (see the note above)", 10, 24);
  }
  function drawHead(c, t) {
    const sec = section(t), nr = sec.rows.length, nc = sec.cols.length, [a, b] = span(nr), [ca, cb] = span(nc);
    if (!mapOf(sec, heads()[0])) return missing(c, t);
    const rows = Math.max(b - a, cb - ca, 1);
    const g = sizeCanvas(c, WIDTH, rows * ROW + 10);
    g.fillStyle = "#fff"; g.fillRect(0, 0, WIDTH, rows * ROW + 10);
    g.font = "13px sans-serif"; g.textBaseline = "middle";
    const y = (i) => 5 + (i - a) * ROW + ROW / 2, yc = (j) => 5 + (j - ca) * ROW + ROW / 2;
    for (const h of heads()) {
      const m = mapOf(sec, h);
      g.strokeStyle = isAgg() ? "#333" : COLORS[h % COLORS.length];
      for (let i = a; i < b; i++) {
        if (state.hover !== null && state.hover !== i) continue;
        for (const [v, j] of rowTop(sec, m, i, m.full ? nc : m.k)) {
          if (!(v > 0.01) || j < ca || j >= cb) continue;  // (keys outside the window: the status names them)
          g.globalAlpha = Math.min(1, v * (state.hover === null ? 0.8 : 1.0));
          g.lineWidth = state.hover === null ? 1.5 : 2.5;
          g.beginPath(); g.moveTo(LEFT + 6, y(i)); g.lineTo(RIGHT - 6, yc(j)); g.stroke();
        }
      }
    }
    g.globalAlpha = 1;
    for (let i = a; i < b; i++) {
      g.fillStyle = state.hover === i ? "#c00" : "#222"; g.textAlign = "right"; g.fillText(short(sec.rows[i]), LEFT, y(i));
    }
    g.fillStyle = "#222"; g.textAlign = "left";
    for (let j = ca; j < cb; j++) g.fillText(short(sec.cols[j]), RIGHT, yc(j));
  }

  // -- heat map: queries (rows) x keys (columns), a colour scale, zoom -------------------
  function matrixImage(sec, m, key) {  // an offscreen canvas of the whole map (overview for summaries)
    m._img = m._img || {};
    if (m._img[key]) return m._img[key];
    const full = !!m.full, h = full ? sec.rows.length : sec.ov[2], w = full ? sec.cols.length : sec.ov[3];
    const src = full ? m.full : m.ov, img = new ImageData(w, h);
    for (let p = 0; p < w * h; p++) {
      const v = src[p], rgb = color(v === 255 ? NaN : v / 254);
      img.data[4 * p] = rgb[0]; img.data[4 * p + 1] = rgb[1]; img.data[4 * p + 2] = rgb[2]; img.data[4 * p + 3] = 255;
    }
    const off = document.createElement("canvas"); off.width = w; off.height = h;
    off.getContext("2d").putImageData(img, 0, 0);
    return (m._img[key] = off);
  }
  function zoomImage(sec, m, z) {
    const img = new ImageData(z.nc, z.nr);
    for (let i = 0; i < z.nr; i++) for (let j = 0; j < z.nc; j++) {
      const rgb = color(weight(sec, m, z.r0 + i, z.c0 + j)), p = 4 * (i * z.nc + j);
      img.data[p] = rgb[0]; img.data[p + 1] = rgb[1]; img.data[p + 2] = rgb[2]; img.data[p + 3] = 255;
    }
    const off = document.createElement("canvas"); off.width = z.nc; off.height = z.nr;
    off.getContext("2d").putImageData(img, 0, 0);
    return off;
  }
  function zoomOf(t) { return state.zoom && texts[state.zoom.text] === t ? state.zoom : null; }
  function heatGeometry(sec, t) {
    const z = zoomOf(t), nr = z ? z.nr : sec.rows.length, nc = z ? z.nc : sec.cols.length;
    const cell = Math.min(24, HEAT / Math.max(nr, nc)), labels = cell >= 8;
    const left = labels ? 130 : 60, top = labels ? 120 : 40;
    return { nr: nr, nc: nc, cell: cell, labels: labels, left: left, top: top, w: cell * nc, h: cell * nr,
             r0: z ? z.r0 : 0, c0: z ? z.c0 : 0 };
  }
  function drawHeat(c, t) {
    const sec = section(t), m = mapOf(sec, state.focus), G = heatGeometry(sec, t);
    if (!m) return missing(c, t);
    const width = G.left + G.w + 90, height = G.top + G.h + 30;
    const g = sizeCanvas(c, width, height);
    g.fillStyle = "#fff"; g.fillRect(0, 0, width, height);
    g.imageSmoothingEnabled = false;
    const img = zoomOf(t) ? zoomImage(sec, m, zoomOf(t)) : matrixImage(sec, m, "all");
    g.drawImage(img, G.left, G.top, G.w, G.h);
    g.strokeStyle = "#999"; g.lineWidth = 1; g.strokeRect(G.left - 0.5, G.top - 0.5, G.w + 1, G.h + 1);
    if (state.hover !== null && state.hover >= G.r0 && state.hover < G.r0 + G.nr) {
      g.strokeStyle = "#c00"; g.lineWidth = 2;
      g.strokeRect(G.left, G.top + (state.hover - G.r0) * G.cell, G.w, Math.max(G.cell, 2));
    }
    g.fillStyle = "#222"; g.font = "12px sans-serif";
    g.textAlign = "center"; g.textBaseline = "bottom";
    g.fillText("keys (attended to) \u2192", G.left + G.w / 2, 14);
    g.save(); g.translate(12, G.top + G.h / 2); g.rotate(-Math.PI / 2); g.fillText("\u2190 queries (attending)", 0, 0); g.restore();
    g.font = Math.min(12, G.cell) + "px sans-serif"; g.textBaseline = "middle";
    if (G.labels) {
      for (let i = 0; i < G.nr; i++) {
        g.textAlign = "right"; g.fillStyle = state.hover === G.r0 + i ? "#c00" : "#222";
        g.fillText(short(sec.rows[G.r0 + i]), G.left - 4, G.top + (i + 0.5) * G.cell);
      }
      g.fillStyle = "#222";
      for (let j = 0; j < G.nc; j++) {
        g.save(); g.translate(G.left + (j + 0.5) * G.cell, G.top - 4); g.rotate(-Math.PI / 2);
        g.textAlign = "left"; g.fillText(short(sec.cols[G.c0 + j]), 0, 0); g.restore();
      }
    } else {  // token numbers along the axes
      g.font = "10px sans-serif"; g.fillStyle = "#555";
      for (let f = 0; f <= 4; f++) {
        const i = Math.round(f * (G.nr - 1) / 4), j = Math.round(f * (G.nc - 1) / 4);
        g.textAlign = "right"; g.fillText(String(G.r0 + i), G.left - 4, G.top + (i + 0.5) * G.cell);
        g.textAlign = "center"; g.fillText(String(G.c0 + j), G.left + (j + 0.5) * G.cell, G.top - 8);
      }
    }
    // the colour scale
    const sx = G.left + G.w + 25, sh = Math.min(200, Math.max(80, G.h));
    for (let p = 0; p < sh; p++) {
      const rgb = color(1 - p / (sh - 1));
      g.fillStyle = "rgb(" + rgb.join(",") + ")"; g.fillRect(sx, G.top + p, 14, 1);
    }
    g.strokeStyle = "#999"; g.strokeRect(sx - 0.5, G.top - 0.5, 15, sh + 1);
    g.fillStyle = "#222"; g.font = "10px sans-serif"; g.textAlign = "left";
    for (const [v, label] of [[1, "1"], [0.5, "0.5"], [0, "0"]]) g.fillText(label, sx + 18, G.top + (1 - v) * (sh - 1));
    g.fillStyle = "rgb(214,39,40)"; g.fillRect(sx, G.top + sh + 8, 14, 10);
    g.fillStyle = "#222"; g.fillText("NaN", sx + 18, G.top + sh + 13);
  }
  function heatCell(c, t, ev) {  // [row, column] under the mouse, or null
    const sec = section(t), G = heatGeometry(sec, t), r = c.getBoundingClientRect();
    const i = Math.floor((ev.clientY - r.top - G.top) / G.cell), j = Math.floor((ev.clientX - r.left - G.left) / G.cell);
    if (i < 0 || i >= G.nr) return null;
    return [G.r0 + i, j >= 0 && j < G.nc ? G.c0 + j : null];
  }

  // -- model view: every layer x head (and the aggregates), click to zoom ----------------
  function drawModel() {
    const sec = section(), grid = $("grid"), thumb = sec.heads > 12 ? 48 : 64;
    grid.textContent = "";
    grid.style.gridTemplateColumns = "auto repeat(" + Math.max(sec.heads, sec.aggregates.length) + ", " + thumb + "px)";
    grid.appendChild(document.createElement("span"));
    for (let h = 0; h < Math.max(sec.heads, sec.aggregates.length); h++) {
      const s = document.createElement("span"); s.className = "axis"; s.textContent = h < sec.heads ? "head " + (h + 1) : ""; grid.appendChild(s);
    }
    const saved = state.sel;
    const cell = (label, l, h, sel) => {
      const c = document.createElement("canvas");
      c.className = "thumb"; c.dataset.layer = String(l); c.dataset.head = String(h); c.title = label + ": click to zoom";
      state.sel = sel;
      const m = mapOf(sec, h), g = sizeCanvas(c, thumb, thumb);
      g.imageSmoothingEnabled = true;
      g.drawImage(matrixImage(sec, m, "all"), 0, 0, thumb, thumb);
      c.addEventListener("click", () => {
        state.sel = sel; state.focus = h; state.heads = new Set([h]); state.view = "heat"; state.zoom = null; render();
      });
      return c;
    };
    for (let l = 0; l < sec.layers; l++) {
      const s = document.createElement("span"); s.className = "axis"; s.textContent = "layer " + (l + 1); grid.appendChild(s);
      for (let h = 0; h < sec.heads; h++) grid.appendChild(cell("layer " + (l + 1) + ", head " + (h + 1), l, h, "layer:" + l));
      for (let h = sec.heads; h < sec.aggregates.length; h++) grid.appendChild(document.createElement("span"));
    }
    if (sec.aggregates.length) {  // a row naming the aggregations, then their thumbnails
      grid.appendChild(document.createElement("span"));
      for (let h = 0; h < Math.max(sec.heads, sec.aggregates.length); h++) {
        const s = document.createElement("span"); s.className = "axis";
        s.textContent = h < sec.aggregates.length ? sec.aggregates[h].name : ""; grid.appendChild(s);
      }
      const s = document.createElement("span"); s.className = "axis"; s.textContent = "all layers"; grid.appendChild(s);
      sec.aggregates.forEach((a, k) => { const c = cell(a.title, -1, 0, "agg:" + a.name); c.dataset.agg = a.name; grid.appendChild(c); void k; });
    }
    state.sel = saved;
  }

  function render() {
    const sec = section();
    $("layer").value = state.sel;
    for (const b of document.querySelectorAll("button.head")) b.classList.toggle("on", state.heads.has(Number(b.dataset.head)));
    for (const b of document.querySelectorAll("button.tab")) b.classList.toggle("on", b.dataset.view === state.view);
    $("heads").hidden = isAgg() || state.view === "model";
    $("stage").hidden = state.view === "model";
    $("grid").hidden = state.view !== "model";
    $("layer-box").hidden = state.view === "model";
    $("zoomout").hidden = !(state.view === "heat" && state.zoom);
    const n = Math.max(sec.rows.length, sec.cols.length);
    $("window-box").hidden = !(state.view === "head" && n > 2 * WINDOW);
    $("window").max = String(Math.max(0, n - WINDOW));
    $("window").value = String(state.window);
    $("panel2").hidden = !(state.compare && state.view !== "model");
    $("caption1").hidden = $("caption2").hidden = !state.compare;
    $("caption1").textContent = texts[state.text].label;
    $("caption2").textContent = texts[state.text2].label;
    const draw = state.view === "head" ? drawHead : drawHeat;
    if (state.view === "model") drawModel();
    else {
      draw($("canvas"), texts[state.text]);
      if (state.compare) draw($("canvas2"), texts[state.text2]);
    }
    document.body.dataset.view = state.view;
  }

  function describe(t, i, j) {
    if (!mapOf(section(t), heads()[0])) return;
    const sec = section(t), hs = heads(), where = isAgg() ? sec.aggregates.find((a) => "agg:" + a.name === state.sel).title
      : "layer " + (Number(state.sel.slice(6)) + 1) + ", head" + (hs.length > 1 ? "s " : " ") + hs.map((h) => h + 1).join(" ");
    const m = mapOf(sec, state.view === "heat" ? state.focus : hs[0]);
    let msg = sec.rows[i] + " attends to " + rowTop(sec, m, i, 3).map((p) => sec.cols[p[1]] + " " +
      (Number.isNaN(p[0]) ? "NaN" : p[0].toFixed(2))).join(", ");
    if (j !== null && j !== undefined) {
      const v = weight(sec, m, i, j);
      msg = sec.rows[i] + " \u2192 " + sec.cols[j] + ": " + (v === null ? "below the " + sec.k + " strongest (not stored)"
        : Number.isNaN(v) ? "not finite" : v.toFixed(3)) + " | " + msg;
    }
    setStatus(msg + " (" + where + ")");
  }
  function hover(c, t, ev) {
    let i = null, j = null;
    if (state.view === "head") {
      const sec = section(t), [a, b] = span(sec.rows.length), r = c.getBoundingClientRect();
      const k = a + Math.floor((ev.clientY - r.top - 5) / ROW);
      i = k >= a && k < b ? k : null;
    } else {
      const cell = heatCell(c, t, ev);
      if (cell) [i, j] = cell;
    }
    if (i !== state.hover) { state.hover = i; render(); }
    if (i !== null) describe(t, i, j);
  }
  function zoomAt(c, t, ev) {
    if (state.view !== "heat" || state.zoom || !mapOf(section(t), state.focus)) return;
    const sec = section(t), cell = heatCell(c, t, ev);
    if (!cell || Math.max(sec.rows.length, sec.cols.length) <= ZOOM) return;
    const nr = Math.min(ZOOM, sec.rows.length), nc = Math.min(ZOOM, sec.cols.length), j = cell[1] === null ? 0 : cell[1];
    state.zoom = { r0: Math.max(0, Math.min(cell[0] - nr / 2, sec.rows.length - nr)) | 0,
                   c0: Math.max(0, Math.min(j - nc / 2, sec.cols.length - nc)) | 0, nr: nr, nc: nc, text: texts.indexOf(t) };
    render();
  }

  function exportPNG() {
    let src = $("canvas");
    if (state.view === "model") {  // one image of the whole grid
      const thumbs = Array.from(document.querySelectorAll("canvas.thumb")), sec = section(), k = thumbs[0].width;
      src = document.createElement("canvas"); src.width = Math.max(sec.heads, sec.aggregates.length) * (k + 4);
      src.height = (sec.layers + (sec.aggregates.length ? 1 : 0)) * (k + 4);
      const g = src.getContext("2d"); g.fillStyle = "#fff"; g.fillRect(0, 0, src.width, src.height);
      thumbs.forEach((c) => {
        const row = Number(c.dataset.layer) < 0 ? sec.layers : Number(c.dataset.layer);
        const col = c.dataset.agg ? sec.aggregates.findIndex((a) => a.name === c.dataset.agg) : Number(c.dataset.head);
        g.drawImage(c, col * (k + 4), row * (k + 4));
      });
    }
    return src.toDataURL("image/png");
  }

  $("text").addEventListener("change", (e) => { state.text = Number(e.target.value); state.hover = null; state.zoom = null; buildControls(); render(); });
  $("text2").addEventListener("change", (e) => { state.text2 = Number(e.target.value); state.hover = null; info(); render(); });
  $("compare").addEventListener("change", (e) => { state.compare = e.target.checked; state.zoom = null; buildControls(); render(); });
  $("section").addEventListener("change", (e) => { state.section = Number(e.target.value); state.zoom = null; state.hover = null; buildControls(); render(); });
  const HINT = data.note || "Hover a token to see what it attends to; click heads to select them.";
  $("layer").addEventListener("change", (e) => { state.sel = e.target.value; setStatus(HINT); render(); });
  $("window").addEventListener("input", (e) => { state.window = Number(e.target.value) || 0; render(); });
  $("zoomout").addEventListener("click", () => { state.zoom = null; render(); });
  for (const b of document.querySelectorAll("button.tab")) {
    b.addEventListener("click", () => { state.view = b.dataset.view; state.hover = null; state.zoom = null; setStatus(HINT); render(); });
  }
  for (const [id, which] of [["canvas", "text"], ["canvas2", "text2"]]) {
    const c = $(id);
    c.addEventListener("mousemove", (ev) => hover(c, texts[state[which]], ev));
    c.addEventListener("mouseleave", () => { state.hover = null; render(); });
    c.addEventListener("click", (ev) => zoomAt(c, texts[state[which]], ev));
  }
  $("export").addEventListener("click", () => {
    const a = document.createElement("a");
    a.href = exportPNG(); a.download = "attention-" + state.view + ".png";
    document.body.appendChild(a); a.click(); a.remove();
  });

  buildControls();
  render();
  setStatus(HINT);
  window.attendView = { state: state, render: render, exportPNG: exportPNG, buildControls: buildControls };
})();
