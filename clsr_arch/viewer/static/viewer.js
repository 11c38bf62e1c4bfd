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
  $('compare').hidden = true; $('others').textContent = ''; message('');
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
  const b = state.drag ? state.drag.box : state.box;
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
    state.drag = { start: p, box: boxFrom(p, p) };
  }
});
window.addEventListener('mousemove', (ev) => {
  const d = state.drag;
  if (!d) return;
  if (d.pan) {
    state.ox = d.ox + ev.clientX - d.x; state.oy = d.oy + ev.clientY - d.y;
  } else {
    d.box = boxFrom(d.start, toImage(ev));
  }
  draw();
});
window.addEventListener('mouseup', () => {
  const d = state.drag;
  state.drag = null;
  if (!d || d.pan) return;
  let box = d.box;
  if (box[2] === 1 && box[3] === 1) {  // a click inside a suggested box takes that box
    const hit = state.suggestions.find((s) => box[0] >= s[0] && box[0] < s[0] + s[2] && box[1] >= s[1] && box[1] < s[1] + s[3]);
    if (hit) box = hit.slice();
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
    const what = body.estimator === 'cnn' ? 'estimated gain over bicubic, dB' : `score by ${body.estimator}`;
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

// ------------------------------------------------------------------ SR
const LABELS = { clsr: 'CLSR (ours)', bicubic: 'bicubic', pre_crop: 'pre-crop', post_crop: 'post-crop' };

function label(method, r) {
  let t = `${LABELS[method]}: ${r.ms.toFixed(0)} ms, ${r.gflops.toPrecision(3)} GFLOPs`;
  if (r.psnr_y !== undefined) t += `, PSNR-Y ${r.psnr_y.toFixed(2)} dB`;
  return t;
}

async function srRequest(box, methods) {
  return api(`/api/images/${state.current.id}/sr`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ box, methods }),
  });
}

async function superResolve(box) {
  const n = ++state.request;
  const id = state.current.id;
  document.body.dataset.busy = '1';  // '0' once this box's comparisons are shown (tests wait on it)
  message('');
  status(`super-resolving ${box[2]}×${box[3]} at (${box[0]}, ${box[1]}) ...`);
  try {
    const first = await srRequest(box, ['clsr']);
    if (n !== state.request) return;  // a newer box was dragged meanwhile
    const r = first.results.clsr;
    const out = $('sr-clsr');
    out.onload = () => { out.dataset.box = box.join(','); out.dataset.image = id; };
    delete out.dataset.box;
    out.src = `data:image/png;base64,${r.png}`;
    $('sr-bicubic').removeAttribute('src');
    $('compare').hidden = false;
    let text = label('clsr', r);
    if (first.context) text += `\n(first box of this image: context pass ${first.context.ms.toFixed(0)} ms, ${first.context.gflops.toPrecision(3)} GFLOPs)`;
    $('clsr-label').textContent = text;
    $('download').href = `/api/images/${id}/sr.png?box=${box.join(',')}`;
    status(`x${state.info.scale}: ${r.width}×${r.height} from ${box[2]}×${box[3]} LR pixels (server ${first.server_ms.toFixed(0)} ms)`);
    const methods = ['bicubic', 'pre_crop'];
    if (state.current.post_crop) methods.push('post_crop');
    const rest = await srRequest(box, methods);
    if (n !== state.request) return;
    $('sr-bicubic').src = `data:image/png;base64,${rest.results.bicubic.png}`;
    const others = $('others');
    others.textContent = '';
    for (const m of methods) {
      const fig = document.createElement('figure');
      const img = document.createElement('img');
      img.src = `data:image/png;base64,${rest.results[m].png}`;
      img.id = `sr-${m}-tile`;
      const cap = document.createElement('figcaption');
      cap.textContent = label(m, rest.results[m]);
      fig.append(img, cap);
      others.appendChild(fig);
    }
    if (!state.current.post_crop) {
      const note = document.createElement('p');
      note.className = 'label';
      note.textContent = 'post-crop (whole-image SR) is offered for small images only.';
      others.appendChild(note);
    }
  } catch (e) {
    if (n === state.request) { message(e.message); status(''); }
  } finally {
    if (n === state.request) document.body.dataset.busy = '0';
  }
}

$('slider').addEventListener('input', () => {
  $('sr-bicubic').style.clipPath = `inset(0 ${$('slider').value}% 0 0)`;
});

// ------------------------------------------------------------------ start
(async () => {
  try {
    state.info = await api('/api/info');
    $('maxbox').textContent = $('maxbox2').textContent = state.info.max_box;
    $('model').textContent = `${state.info.model} (x${state.info.scale}, base ${state.info.base})`;
    $('sr-bicubic').style.clipPath = `inset(0 ${$('slider').value}% 0 0)`;
    await loadImages();
  } catch (e) { message(e.message); }
})();
