// clsr viewer: pan/zoom an LR image on a canvas, drag a box, show its SR (clsr_arch/viewer/app.py).
'use strict';

const state = {
  info: null, images: [], current: null, img: null,
  scale: 1, ox: 0, oy: 0,          // view: screen = image * scale + offset
  drag: null, box: null, request: 0, suggestions: [],
};
const $ = (id) => document.getElementById(id);
const canvas = $('canvas');
const ctx = canvas.getContext('2d');

function message(text) { $('message').textContent = text || ''; }
function status(text) { $('status').textContent = text; }

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json().catch(() => ({ error: `HTTP ${res.status}` }));
  if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
  return body;
}

// ------------------------------------------------------------------ images
function renderImageList() {
  const nav = $('images');
  nav.textContent = '';
  for (const im of state.images) {
    const b = document.createElement('button');
    b.textContent = `${im.name} (${im.width}×${im.height})`;
    b.dataset.id = im.id;
    if (state.current && im.id === state.current.id) b.classList.add('active');
    b.onclick = () => selectImage(im.id);
    nav.appendChild(b);
  }
}

async function selectImage(id) {
  const im = state.images.find((e) => e.id === id);
  if (!im) return;
  state.current = im; state.box = null; state.suggestions = [];
  renderImageList();
  $('compare').hidden = true; $('panels').textContent = ''; message('');
  $('imginfo').textContent = `LR ${im.width}×${im.height}` + (im.ground_truth ? ', ground truth known (PSNR shown)' : '');
  canvas.dataset.image = id;
  if (im.tiled) {  // read region by region: draw the pyramid's tiles as the view needs them
    state.img = { tiled: true };
    state.tiles = new Map();
    fitView(); draw(); status('Drag a box on the image (wheel: zoom, shift-drag: pan).');
    return;
  }
  const img = new Image();
  img.onload = () => { state.img = img; fitView(); draw(); status('Drag a box on the image.'); };
  img.onerror = () => message('could not load the LR image');
  img.src = `/api/images/${id}/lr.png`;
}

async function loadImages(selectId) {
  const body = await api('/api/images');
  state.images = body.images;
  renderImageList();
  const first = selectId || (state.images[0] && state.images[0].id);
  if (first) await selectImage(first);
}

$('file').addEventListener('change', async () => {
  const f = $('file').files[0];
  if (!f) return;
  const form = new FormData();
  form.append('file', f);
  form.append('degrade', $('degrade').checked ? 'true' : 'false');
  status(`uploading ${f.name} ...`);
  try {
    const im = await api('/api/images', { method: 'POST', body: form });
    message('');
    await loadImages(im.id);
  } catch (e) { message(e.message); status(''); }
  $('file').value = '';
});

// ------------------------------------------------------------------ view
function resizeCanvas() {
  const vp = $('viewport');
  canvas.width = vp.clientWidth; canvas.height = vp.clientHeight;
}

function fitView() {
  resizeCanvas();
  const im = state.current;
  state.scale = Math.min(canvas.width / im.width, canvas.height / im.height);
  state.ox = (canvas.width - im.width * state.scale) / 2;
  state.oy = (canvas.height - im.height * state.scale) / 2;
}

function draw() {
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = '#333'; ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (!state.img) return;
  ctx.imageSmoothingEnabled = false;
  ctx.setTransform(state.scale, 0, 0, state.scale, state.ox, state.oy);
  if (state.img.tiled) drawTiles(); else ctx.drawImage(state.img, 0, 0);
  ctx.setLineDash([6 / state.scale, 4 / state.scale]);
  ctx.lineWidth = 2.5 / state.scale;
  ctx.strokeStyle = '#00e5ff';
  for (const s of state.suggestions) ctx.strokeRect(s[0], s[1], s[2], s[3]);
  ctx.setLineDash([]);
  const b = (state.drag && state.drag.box) || state.box;
  if (b) {
    ctx.lineWidth = 2 / state.scale;
    ctx.strokeStyle = '#ffcc00';
    ctx.strokeRect(b[0], b[1], b[2], b[3]);
  }
}

// pyramid tiles (images read region by region): the coarsest level whose pixels are still at
// most one screen pixel; a tile not yet loaded is requested and drawn from a coarser level
const MAX_TILES = 600;
function levelFor(im) {
  let k = 0;
  while (k + 1 < im.levels.length && im.width / im.levels[k + 1][0] <= 1 / state.scale) k++;
  return k;
}

function tile(im, k, col, row) {
  const key = `${k}/${col}/${row}`;
  let t = state.tiles.get(key);
  if (!t) {
    t = new Image();
    t.onload = () => { if (state.current === im) draw(); };
    t.src = `/api/images/${im.id}/tiles/${key}.png`;
    state.tiles.set(key, t);
    if (state.tiles.size > MAX_TILES) state.tiles.delete(state.tiles.keys().next().value);  // oldest first
  }
  return t;
}

function drawTiles() {
  const im = state.current, T = im.tile;
  const k = levelFor(im);
  // visible LR rectangle -> tiles of level k (a level-k pixel = f level-0 pixels)
  const x0 = -state.ox / state.scale, y0 = -state.oy / state.scale;
  const x1 = x0 + canvas.width / state.scale, y1 = y0 + canvas.height / state.scale;
  const draws = [];
  for (let j = k; j < im.levels.length; j++) {  // coarser levels first, as fallbacks underneath
    const [lw, lh] = im.levels[j], f = im.width / lw;
    const c0 = Math.max(0, Math.floor(x0 / f / T)), c1 = Math.min(Math.ceil(lw / T) - 1, Math.floor(x1 / f / T));
    const r0 = Math.max(0, Math.floor(y0 / f / T)), r1 = Math.min(Math.ceil(lh / T) - 1, Math.floor(y1 / f / T));
    draws.push([j, f, c0, c1, r0, r1]);
  }
  canvas.dataset.level = k;
  for (const [j, f, c0, c1, r0, r1] of draws.reverse()) {
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const key = `${j}/${c}/${r}`;
        const t = j === k ? tile(im, j, c, r) : state.tiles.get(key);
        if (t && t.complete && t.naturalWidth) ctx.drawImage(t, c * T * f, r * T * f, t.naturalWidth * f, t.naturalHeight * f);
      }
    }
  }
}

function toImage(ev) {  // mouse event -> LR image coordinates (float)
  const r = canvas.getBoundingClientRect();
  return [(ev.clientX - r.left - state.ox) / state.scale, (ev.clientY - r.top - state.oy) / state.scale];
}

function boxFrom(a, b) {  // two corners -> integer box clamped to the image, limited to max_box
  const im = state.current, m = state.info.max_box;
  let x0 = Math.floor(Math.min(a[0], b[0])), y0 = Math.floor(Math.min(a[1], b[1]));
  let x1 = Math.ceil(Math.max(a[0], b[0])), y1 = Math.ceil(Math.max(a[1], b[1]));
  x0 = Math.max(0, Math.min(im.width - 1, x0)); y0 = Math.max(0, Math.min(im.height - 1, y0));
  x1 = Math.max(x0 + 1, Math.min(im.width, x1)); y1 = Math.max(y0 + 1, Math.min(im.height, y1));
  return [x0, y0, Math.min(x1 - x0, m), Math.min(y1 - y0, m)];
}

canvas.addEventListener('mousedown', (ev) => {
  if (!state.img) return;
  ev.preventDefault();
  if (ev.button === 1 || ev.shiftKey) {
    state.drag = { pan: true, x: ev.clientX, y: ev.clientY, ox: state.ox, oy: state.oy };
  } else if (ev.button === 0) {
    const p = toImage(ev);
    state.drag = { start: p, x: ev.clientX, y: ev.clientY, box: null };
  }
});

// A click is not a box (issue 23): the pointer must move at least 4 LR pixels -- at least 4
// screen pixels when zoomed out (a hand's jitter), at most 12 when zoomed in (a 2x2 box stays easy)
function minDrag() { return Math.max(4, Math.min(4 * state.scale, 12)); }
function dragged(d, ev) { return Math.max(Math.abs(ev.clientX - d.x), Math.abs(ev.clientY - d.y)) >= minDrag(); }
window.addEventListener('mousemove', (ev) => {
  const d = state.drag;
  if (!d) return;
  if (d.pan) {
    state.ox = d.ox + ev.clientX - d.x; state.oy = d.oy + ev.clientY - d.y;
  } else {
    d.box = d.box || dragged(d, ev) ? boxFrom(d.start, toImage(ev)) : null;
  }
  draw();
});
window.addEventListener('mouseup', (ev) => {
  const d = state.drag;
  state.drag = null;
  if (!d || d.pan) return;
  let box = d.box && boxFrom(d.start, toImage(ev));
  if (!box) {  // a click: inside a suggested box it takes that box, elsewhere it selects nothing
    const [px, py] = d.start;
    const hit = state.suggestions.find((s) => px >= s[0] && px < s[0] + s[2] && py >= s[1] && py < s[1] + s[3]);
    if (!hit) {
      draw();
      status(`A click selects nothing: drag a box (at least ${minDrag().toFixed(0)} screen pixels).`);
      return;
    }
    box = hit.slice();
  }
  state.box = box; draw(); superResolve(box);
});

$('suggest').addEventListener('click', async () => {
  if (!state.current) return;
  const im = state.current;
  const button = $('suggest');
  const size = Math.min(48, im.width, im.height, state.info.max_box);
  const waiting = 'estimating where SR gains most ...';
  button.disabled = true;  // one request at a time; re-enabled whatever happens (issue 23)
  message('');
  status(waiting);
  try {
    const body = await api(`/api/images/${im.id}/proposals?n=5&size=${size}`);
    if (state.current !== im) return;
    state.suggestions = body.boxes;
    draw();
    const what = ['cnn', 'map'].includes(body.estimator) ? 'estimated gain over bicubic, dB' : `score by ${body.estimator}`;
    status(`${body.boxes.length} suggested boxes (dashed; ${what}: ${body.scores.map((v) => v.toFixed(2)).join(', ')}): click one to super-resolve it.`);
  } catch (e) {
    message(`suggest where to look: ${e.message}`);
  } finally {
    button.disabled = false;
    if ($('status').textContent === waiting) status('');  // never left on "estimating"
  }
});
canvas.addEventListener('wheel', (ev) => {
  if (!state.img) return;
  ev.preventDefault();
  const r = canvas.getBoundingClientRect();
  const mx = ev.clientX - r.left, my = ev.clientY - r.top;
  const k = Math.exp(-ev.deltaY * 0.0015);
  const s = Math.max(0.05, Math.min(64, state.scale * k));
  state.ox = mx - (mx - state.ox) * s / state.scale;
  state.oy = my - (my - state.oy) * s / state.scale;
  state.scale = s;
  draw();
}, { passive: false });
window.addEventListener('resize', () => { if (state.current) { fitView(); draw(); } });

// ------------------------------------------------------------------ SR: result panels
// Issue 23, item 3: every method's output of the box at the same scale, side by side -- HR
// pixels x zoom, 1:1 by default (an <img> at its natural size, never stretched by CSS; above 1:1
// image-rendering: pixelated draws each HR pixel as a zoom x zoom square) -- with one zoom and one
// pan shared by all panels (wheel over any panel zooms all, drag pans all), and the bicubic/CLSR
// slider over the CLSR panel. Post-crop is offered when the server's memory budget allows it,
// with its estimated time shown before it runs (app.py, PostCropOffers).
const LABELS = { bicubic: 'bicubic', pre_crop: 'pre-crop', clsr: 'CLSR (ours)', post_crop: 'post-crop',
  ground_truth: 'ground truth (HR)' };
const ORDER = ['bicubic', 'pre_crop', 'clsr', 'post_crop', 'ground_truth'];
const ZOOMS = [0.125, 0.25, 0.5, 1, 2, 3, 4, 6, 8, 12, 16];
const PANEL_GAP = 10;

function seconds(s) {
  if (s < 1) return `${(s * 1000).toFixed(0)} ms`;
  if (s < 90) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

function label(method, r) {
  let t = `${LABELS[method]}: ${seconds(r.ms / 1000)}, ${r.gflops.toPrecision(3)} GFLOPs`;
  if (r.cached) t = `${LABELS[method]}: ${r.gflops.toPrecision(3)} GFLOPs once per image (whole-image SR kept), this crop ${seconds(r.ms / 1000)}`;
  if (r.estimated_ms) t += ` (estimated ${seconds(r.estimated_ms / 1000)})`;
  if (r.psnr_y !== undefined) t += `\nPSNR-Y ${r.psnr_y.toFixed(2)} dB`;
  return t;
}

async function srRequest(box, methods, groundTruth) {
  return api(`/api/images/${state.current.id}/sr`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ box, methods, ground_truth: !!groundTruth }),
  });
}

// the shared view: zoom (screen px per HR px) and the HR point at every panel's centre
const view = { w: 0, h: 0, zoom: 1, cx: 0, cy: 0, pan: null };

function paneLimits() {  // the largest panel: two a row at least, a third of the window high
  const avail = $('panels').clientWidth || 640;
  return [Math.max(96, Math.floor((avail - PANEL_GAP) / 2)), Math.max(96, Math.floor(window.innerHeight * 0.34))];
}

function paneSize() {
  const [mw, mh] = paneLimits();
  return [Math.min(Math.round(view.w * view.zoom), mw), Math.min(Math.round(view.h * view.zoom), mh)];
}

function clampView() {
  const [pw, ph] = paneSize(), z = view.zoom;
  const clamp = (c, size, p) => (size * z <= p ? size / 2 : Math.max(p / (2 * z), Math.min(size - p / (2 * z), c)));
  view.cx = clamp(view.cx, view.w, pw); view.cy = clamp(view.cy, view.h, ph);
}

function applyView() {
  clampView();
  const [pw, ph] = paneSize(), z = view.zoom;
  const left = Math.round(pw / 2 - view.cx * z), top = Math.round(ph / 2 - view.cy * z);
  for (const fig of $('panels').querySelectorAll('.panel')) {
    fig.style.width = `${Math.max(pw, 120)}px`;
    const pane = fig.querySelector('.pane');
    pane.style.width = `${pw}px`; pane.style.height = `${ph}px`;
    for (const img of pane.querySelectorAll('img')) {
      if (z === 1) { img.style.width = ''; img.style.height = ''; }  // natural size: no CSS scaling at 1:1
      else { img.style.width = `${view.w * z}px`; img.style.height = `${view.h * z}px`; }
      img.classList.toggle('smooth', z < 1);
      img.style.left = `${left}px`; img.style.top = `${top}px`;
    }
  }
  $('zoom-level').textContent = z >= 1 ? `${z}:1` : `1:${1 / z}`;
  $('panels').dataset.zoom = z;
}

function setZoom(z, anchor) {  // anchor: [x, y] in pane pixels that keeps its HR point
  z = Math.max(ZOOMS[0], Math.min(ZOOMS[ZOOMS.length - 1], z));
  const [pw, ph] = paneSize();
  const [ax, ay] = anchor || [pw / 2, ph / 2];
  const hx = view.cx + (ax - pw / 2) / view.zoom, hy = view.cy + (ay - ph / 2) / view.zoom;
  view.zoom = z;
  const [qw, qh] = paneSize();  // the panels may grow or shrink with the zoom
  const bx = Math.min(ax, qw), by = Math.min(ay, qh);
  view.cx = hx - (bx - qw / 2) / z; view.cy = hy - (by - qh / 2) / z;
  applyView();
}

function zoomStep(dir, anchor) {
  const i = ZOOMS.findIndex((z) => z >= view.zoom - 1e-9);
  const next = dir > 0 ? ZOOMS[Math.min(ZOOMS.length - 1, ZOOMS[i] > view.zoom + 1e-9 ? i : i + 1)]
    : ZOOMS[Math.max(0, i - 1)];
  setZoom(next, anchor);
}

function fitZoom() {  // the largest level that shows the whole box in a panel
  const [mw, mh] = paneLimits();
  const fits = ZOOMS.filter((z) => view.w * z <= mw && view.h * z <= mh);
  return fits.length ? fits[fits.length - 1] : ZOOMS[0];
}

$('zoom-in').onclick = () => zoomStep(1);
$('zoom-out').onclick = () => zoomStep(-1);
$('zoom-1').onclick = () => setZoom(1);
$('zoom-fit').onclick = () => setZoom(fitZoom());
$('panels').addEventListener('wheel', (ev) => {
  const pane = ev.target.closest('.pane');
  if (!pane) return;
  ev.preventDefault();
  const r = pane.getBoundingClientRect();
  zoomStep(ev.deltaY < 0 ? 1 : -1, [ev.clientX - r.left, ev.clientY - r.top]);
}, { passive: false });
$('panels').addEventListener('mousedown', (ev) => {
  const pane = ev.target.closest('.pane');
  if (!pane || ev.button !== 0 || ev.target.closest('button')) return;
  ev.preventDefault();
  view.pan = { x: ev.clientX, y: ev.clientY, cx: view.cx, cy: view.cy, pane };
  pane.classList.add('dragging');
});
window.addEventListener('mousemove', (ev) => {
  if (!view.pan) return;
  view.cx = view.pan.cx - (ev.clientX - view.pan.x) / view.zoom;
  view.cy = view.pan.cy - (ev.clientY - view.pan.y) / view.zoom;
  applyView();
});
window.addEventListener('mouseup', () => {
  if (view.pan) view.pan.pane.classList.remove('dragging');
  view.pan = null;
});

function panel(method) {  // the panel of a method, created empty in the fixed order
  let fig = $('panels').querySelector(`.panel[data-method="${method}"]`);
  if (fig) return fig;
  fig = document.createElement('figure');
  fig.className = 'panel'; fig.dataset.method = method;
  const pane = document.createElement('div');
  pane.className = 'pane';
  const img = document.createElement('img');
  img.className = 'out'; img.alt = LABELS[method]; img.draggable = false;
  img.id = method === 'clsr' ? 'sr-clsr' : `out-${method}`;
  pane.appendChild(img);
  if (method === 'clsr') {  // the slider's bicubic, over the CLSR output, clipped
    const over = document.createElement('img');
    over.id = 'sr-bicubic'; over.alt = 'bicubic (slider)'; over.draggable = false;
    over.style.clipPath = `inset(0 ${$('slider').value}% 0 0)`;
    pane.appendChild(over);
  }
  const cap = document.createElement('figcaption');
  cap.textContent = `${LABELS[method]}: ...`;
  fig.append(pane, cap);
  const after = ORDER.slice(ORDER.indexOf(method) + 1);
  const next = [...$('panels').children].find((c) => after.includes(c.dataset.method));
  $('panels').insertBefore(fig, next || null);
  applyView();
  return fig;
}

function show(method, png, box, caption) {
  const fig = panel(method);
  const img = fig.querySelector('img.out');
  delete img.dataset.box;
  img.onload = () => { img.dataset.box = box.join(','); img.dataset.image = state.current.id; };
  img.src = `data:image/png;base64,${png}`;
  const run = fig.querySelector('.run');
  if (run) run.remove();
  fig.querySelector('figcaption').textContent = caption;
}

function offerPostCrop(box, offer, n) {
  const note = $('post-crop-note');
  note.textContent = '';
  const old = $('panels').querySelector('.panel[data-method="post_crop"]');
  if (!offer.offered) {
    if (old) old.remove();
    note.textContent = `post-crop not offered: ${offer.reason}`;
    return;
  }
  const fig = panel('post_crop');
  const pane = fig.querySelector('.pane');
  const what = offer.tile ? `the ${offer.tile}-px whole-image tiles this box touches` : 'the whole image, once';
  const button = document.createElement('button');
  button.type = 'button'; button.className = 'run'; button.id = 'run-post-crop';
  button.textContent = `Run post-crop: ${what}, ${offer.gflops.toPrecision(3)} GFLOPs, estimated ${seconds(offer.seconds)}`;
  button.onclick = () => runPostCrop(box, n);
  pane.appendChild(button);
  fig.querySelector('figcaption').textContent = `post-crop: not run yet (estimated ${seconds(offer.seconds)})`;
}

async function runPostCrop(box, n) {
  const button = $('run-post-crop');
  if (button) { button.disabled = true; button.textContent = 'running post-crop ...'; }
  document.body.dataset.busy = '1';
  status(`post-crop of ${box[2]}×${box[3]} at (${box[0]}, ${box[1]}) ...`);
  try {
    const body = await srRequest(box, ['post_crop']);
    const im = state.images.find((e) => e.id === body.image);
    if (im && body.post_crop_offer) im.post_crop_offer = body.post_crop_offer;  // cached: later boxes get it
    if (n !== state.request) return;
    const r = body.results.post_crop;
    show('post_crop', r.png, box, label('post_crop', r));
    status(`post-crop took ${seconds(r.ms / 1000)} (estimated ${seconds((r.estimated_ms || 0) / 1000)})`);
  } catch (e) {
    if (n === state.request) { message(e.message); status(''); }
  } finally {
    if (n === state.request) document.body.dataset.busy = '0';
  }
}

async function superResolve(box) {
  const n = ++state.request;
  const im = state.current, id = im.id;
  document.body.dataset.busy = '1';  // '0' once this box's comparisons are shown (tests wait on it)
  message('');
  status(`super-resolving ${box[2]}×${box[3]} at (${box[0]}, ${box[1]}) ...`);
  const s = state.info.scale;
  const fresh = view.w !== box[2] * s || view.h !== box[3] * s;
  view.w = box[2] * s; view.h = box[3] * s;
  if (fresh) { view.cx = view.w / 2; view.cy = view.h / 2; }  // the zoom stays the user's
  $('panels').textContent = ''; $('post-crop-note').textContent = '';
  for (const m of ['bicubic', 'pre_crop', 'clsr']) panel(m);
  if (im.ground_truth) panel('ground_truth');
  $('compare').hidden = false;
  applyView();
  try {
    const first = await srRequest(box, ['clsr']);
    if (n !== state.request) return;  // a newer box was dragged meanwhile
    const r = first.results.clsr;
    show('clsr', r.png, box, label('clsr', r));
    $('sr-bicubic').removeAttribute('src');
    let text = '';
    if (first.context) text = `first box of this image: context pass ${seconds(first.context.ms / 1000)}, ${first.context.gflops.toPrecision(3)} GFLOPs`;
    $('clsr-label').textContent = text;
    $('download').href = `/api/images/${id}/sr.png?box=${box.join(',')}`;
    status(`x${s}: ${r.width}×${r.height} from ${box[2]}×${box[3]} LR pixels (server ${first.server_ms.toFixed(0)} ms)`);
    const offer = first.post_crop_offer;
    const methods = ['bicubic', 'pre_crop'];
    if (offer.offered && offer.cached) methods.push('post_crop');  // computed once already: only a crop
    else offerPostCrop(box, offer, n);
    const rest = await srRequest(box, methods, im.ground_truth);
    if (n !== state.request) return;
    for (const m of methods) show(m, rest.results[m].png, box, label(m, rest.results[m]));
    $('sr-bicubic').src = `data:image/png;base64,${rest.results.bicubic.png}`;
    if (rest.ground_truth) show('ground_truth', rest.ground_truth.png, box, `${LABELS.ground_truth}: the --degrade input`);
  } catch (e) {
    if (n === state.request) { message(e.message); status(''); }
  } finally {
    if (n === state.request) document.body.dataset.busy = '0';
  }
}

$('slider').addEventListener('input', () => {
  const over = $('sr-bicubic');
  if (over) over.style.clipPath = `inset(0 ${$('slider').value}% 0 0)`;
});
window.addEventListener('resize', () => { if (!$('compare').hidden) applyView(); });

// ------------------------------------------------------------------ start
(async () => {
  try {
    state.info = await api('/api/info');
    $('maxbox').textContent = $('maxbox2').textContent = state.info.max_box;
    $('model').textContent = `${state.info.model} (x${state.info.scale}, base ${state.info.base})`;
    await loadImages();
  } catch (e) { message(e.message); }
})();
