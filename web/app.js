// The segmentation page: opens WebGPU through the wasm package in ./pkg, prepares the chosen
// model, segments the chosen image tile by tile and draws the labels over it.
import init, { Device, presets } from './pkg/dilated_web.js';

const $ = (id) => document.getElementById(id);
const state = (s) => { document.body.dataset.state = s; };

// What the page last did, for people and for the browser tests (web/test.sh).
const page = { device: null, prepared: null, key: null, labels: null, width: 0, height: 0 };
window.dilated = page;

function fail(message) {
  $('error').textContent = message;
  $('status').textContent = '';
  state('error');
}

function message(e) {
  return e instanceof Error ? e.message : String(e);
}

async function start() {
  try {
    await init();
  } catch (e) {
    fail(`The WebAssembly module did not load: ${message(e)}`);
    return;
  }
  for (const name of presets()) {
    const option = document.createElement('option');
    option.textContent = name;
    $('model').append(option);
  }
  $('model').value = 'dilation8_camvid';
  if (!navigator.gpu) {
    $('adapter').textContent = '';
    fail('This browser has no WebGPU. Use a recent Chrome, Edge or Opera (desktop or ' +
      'Android), Safari 26 or later, or Firefox 141 or later on Windows; elsewhere it may ' +
      'need a flag (chrome://flags/#enable-unsafe-webgpu).');
    return;
  }
  try {
    page.device = await Device.open();
  } catch (e) {
    $('adapter').textContent = '';
    fail(`No WebGPU adapter: ${message(e)}`);
    return;
  }
  $('adapter').textContent = `Adapter: ${page.device.adapter()}`;
  $('run').disabled = false;
  page.checks = async () => JSON.parse(await page.device.checks());
  state('ready');
}

async function readImage(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new Error(`${file.name} is not an image this browser can read`);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(bitmap, 0, 0);
  return ctx.getImageData(0, 0, bitmap.width, bitmap.height);
}

async function prepare() {
  const model = $('model').value;
  const divisor = Number($('divisor').value);
  const tile = $('tile').value ? Number($('tile').value) : undefined;
  const file = $('random').checked ? null : $('weights').files[0];
  if (!$('random').checked && !file) {
    throw new Error('Choose a weights file (.safetensors or .caffemodel), or tick "random weights".');
  }
  const key = JSON.stringify([model, divisor, tile, file && [file.name, file.size, file.lastModified]]);
  if (page.key === key) return 0;
  page.prepared?.free();
  page.prepared = null;
  page.key = null;
  const t0 = performance.now();
  $('status').textContent = file ? `reading ${file.name}…` : 'preparing the model…';
  const bytes = file ? new Uint8Array(await file.arrayBuffer()) : undefined;
  page.prepared = page.device.prepare(model, divisor, bytes, file?.name, tile);
  page.key = key;
  return performance.now() - t0;
}

function draw(image, labels, palette, alpha) {
  const { width, height } = image;
  const canvas = $('overlay');
  canvas.width = width;
  canvas.height = height;
  const out = new ImageData(width, height);
  for (let i = 0; i < labels.length; i++) {
    const c = 3 * labels[i];
    for (let ch = 0; ch < 3; ch++) {
      const colour = c + ch < palette.length ? palette[c + ch] : 255;
      out.data[4 * i + ch] = Math.round(alpha * colour + (1 - alpha) * image.data[4 * i + ch]);
    }
    out.data[4 * i + 3] = 255;
  }
  canvas.getContext('2d').putImageData(out, 0, 0);
}

function legend(classes, palette, labels) {
  const counts = new Array(classes.length).fill(0);
  for (const l of labels) if (l < counts.length) counts[l]++;
  const list = $('legend');
  list.replaceChildren();
  classes.forEach((name, i) => {
    const li = document.createElement('li');
    const swatch = document.createElement('span');
    swatch.className = 'swatch';
    swatch.style.background = `rgb(${palette[3 * i]},${palette[3 * i + 1]},${palette[3 * i + 2]})`;
    const share = (100 * counts[i] / labels.length).toFixed(1);
    li.append(swatch, `${name}${counts[i] ? ` (${share}%)` : ''}`);
    if (!counts[i]) li.className = 'absent';
    list.append(li);
  });
}

function timings(rows) {
  const table = $('timings');
  table.replaceChildren();
  for (const [what, ms] of rows) {
    const tr = document.createElement('tr');
    const a = document.createElement('td');
    const b = document.createElement('td');
    a.textContent = what;
    b.className = 'n';
    b.textContent = `${ms.toFixed(1)} ms`;
    tr.append(a, b);
    table.append(tr);
  }
}

async function run(event) {
  event.preventDefault();
  $('error').textContent = '';
  const file = $('image').files[0];
  if (!file) {
    fail('Choose an image first.');
    return;
  }
  $('run').disabled = true;
  state('running');
  try {
    const image = await readImage(file);
    const prepareMs = await prepare();
    const prepared = page.prepared;
    const [th, tw] = prepared.tile();
    const total = prepared.tile_count(image.width, image.height);
    $('progress').max = total;
    $('progress').value = 0;
    $('status').textContent = `0 / ${total} tiles of ${th}x${tw}`;
    const rows = [['prepare (weights, pipelines, buffers)', prepareMs]];
    const t0 = performance.now();
    let last = t0;
    const labels = await prepared.segment(image.data, image.width, image.height, (done, all) => {
      const now = performance.now();
      rows.push([`tile ${done} of ${all}`, now - last]);
      last = now;
      $('progress').value = done;
      $('status').textContent = `${done} / ${all} tiles of ${th}x${tw}`;
    });
    const end = performance.now();
    rows.push(['stitch, upsampling and argmax', end - last]);
    rows.push([`total for ${image.width}x${image.height}`, end - t0 + prepareMs]);
    // Per layer, on the first tile again, one layer at a time (waiting for the GPU after each).
    $('status').textContent = 'timing each layer on the first tile';
    for (const [layer, ms] of await prepared.profile(image.data, image.width, image.height)) {
      rows.push([`layer ${layer} (tile 1)`, ms]);
    }
    const palette = prepared.palette();
    draw(image, labels, palette, 0.5);
    legend(prepared.classes(), palette, labels);
    timings(rows);
    Object.assign(page, { labels: Array.from(labels), width: image.width, height: image.height });
    $('status').textContent = `done: ${total} tiles, ${(end - t0).toFixed(0)} ms` +
      ` (${(prepared.parameters() / 1e6).toFixed(2)} M parameters, ` +
      `${(prepared.gpu_memory() / 2 ** 20).toFixed(0)} MiB per tile on the GPU)`;
    state('done');
  } catch (e) {
    fail(message(e));
  } finally {
    $('run').disabled = page.device === null;
  }
}

$('form').addEventListener('submit', run);
$('weights').addEventListener('change', () => { if ($('weights').files[0]) $('random').checked = false; });
start();
