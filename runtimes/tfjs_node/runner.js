// kexport TF.js runner: loads TF.js models from disk and predicts, for the parity check.
//
//   node runner.js cpu|wasm
//
// Protocol on stdin/stdout, one frame per message: 8-byte little-endian length, then
// 4-byte little-endian header length, a JSON header, and the raw tensor bytes the header
// describes ({name, dtype, shape, offset, nbytes}). Requests:
//   {cmd: "load", path, format: "graph"|"layers"}  -> {ok, id, seconds, inputs, outputs}
//   {cmd: "predict", id, tensors: [...]}            -> {ok, seconds, tensors: [...]}
//   {cmd: "dispose", id}                            -> {ok}
// Errors come back as {ok: false, error}. The first frame written is {ok, backend, seconds}
// once the backend is ready. Logs go to stderr so stdout carries only frames.
'use strict';

const t0 = process.hrtime.bigint();
const fs = require('fs');
const path = require('path');

// Keep TF.js' console chatter (backend notices, warnings) off the protocol stream.
console.log = console.warn = console.info = (...a) => process.stderr.write(a.join(' ') + '\n');

const tf = require('@tensorflow/tfjs');
const backend = process.argv[2] || 'cpu';
if (backend === 'wasm') {
  require('@tensorflow/tfjs-backend-wasm');
}

function seconds(start) {
  return Number(process.hrtime.bigint() - start) / 1e9;
}

// A file:// IOHandler: tf.io.fileSystem lives in tfjs-node, which does not install here.
function fileHandler(modelJsonPath) {
  return {
    load: async () => {
      const dir = path.dirname(modelJsonPath);
      let json;
      try {
        json = JSON.parse(fs.readFileSync(modelJsonPath, 'utf8'));
      } catch (e) {
        throw new Error(`${modelJsonPath}: not a readable model.json (${e.message})`);
      }
      if (!json.weightsManifest) {
        throw new Error(`${modelJsonPath}: model.json has no weightsManifest`);
      }
      const specs = [];
      const buffers = [];
      for (const group of json.weightsManifest) {
        specs.push(...group.weights);
        for (const p of group.paths) {
          buffers.push(fs.readFileSync(path.join(dir, p)));
        }
      }
      const all = Buffer.concat(buffers);
      const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
      return {
        modelTopology: json.modelTopology,
        format: json.format,
        generatedBy: json.generatedBy,
        convertedBy: json.convertedBy,
        signature: json.signature,
        userDefinedMetadata: json.userDefinedMetadata,
        modelInitializer: json.modelInitializer,
        initializerSignature: json.initializerSignature,
        weightSpecs: specs,
        weightData,
      };
    },
  };
}

const ARRAYS = {float32: Float32Array, int32: Int32Array, bool: Uint8Array};
const models = new Map();
let nextId = 1;

function toTensor(spec, body) {
  const Arr = ARRAYS[spec.dtype];
  if (!Arr) throw new Error(`input '${spec.name}': dtype ${spec.dtype} is not one TF.js accepts (float32, int32, bool)`);
  const bytes = body.subarray(spec.offset, spec.offset + spec.nbytes);
  const copy = new Uint8Array(bytes); // aligned copy
  return tf.tensor(new Arr(copy.buffer), spec.shape, spec.dtype);
}

async function load(req) {
  const start = process.hrtime.bigint();
  let model;
  if (req.format === 'layers') {
    model = await tf.loadLayersModel(fileHandler(req.path));
  } else {
    model = await tf.loadGraphModel(fileHandler(req.path));
  }
  const id = nextId++;
  models.set(id, {model, format: req.format});
  const ins = req.format === 'layers' ? model.inputNames : model.inputs.map((t) => t.name);
  const outs = req.format === 'layers' ? model.outputNames : model.outputs.map((t) => t.name);
  return {ok: true, id, seconds: seconds(start), inputs: ins, outputs: outs};
}

async function predict(req, body) {
  const entry = models.get(req.id);
  if (!entry) throw new Error(`no loaded model with id ${req.id}`);
  const start = process.hrtime.bigint();
  const feed = {};
  for (const spec of req.tensors) feed[spec.feed || spec.name] = toTensor(spec, body);
  let outs;
  const fetch = req.fetch; // [[tfjsName, kerasName], ...]
  if (entry.format === 'layers') {
    // by name; a Sequential model exposes no input/output names: then by position, in the
    // order of the Keras signature (inputs) and of the layers model (fetch, from Python)
    const given = req.tensors.map((spec) => feed[spec.feed || spec.name]);
    const names = entry.model.inputNames || [];
    const ordered = given.map((t, i) => (names[i] in feed ? feed[names[i]] : t));
    let y = entry.model.predict(ordered.length === 1 ? ordered[0] : ordered);
    y = Array.isArray(y) ? y : [y];
    outs = fetch.map((f, i) => [f[1], y[i]]);
  } else {
    // executeAsync handles control flow (While/If) as well as plain graphs; outputs by name.
    const names = fetch.map((f) => f[0]);
    let y = await entry.model.executeAsync(feed, names);
    y = Array.isArray(y) ? y : [y];
    outs = fetch.map((f, i) => [f[1], y[i]]);
  }
  const tensors = [];
  const parts = [];
  let offset = 0;
  for (const [name, t] of outs) {
    const data = await t.data();
    const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    tensors.push({name, dtype: t.dtype, shape: t.shape, offset, nbytes: buf.length});
    parts.push(buf);
    offset += buf.length;
  }
  tf.dispose(Object.values(feed));
  tf.dispose(outs.map((o) => o[1]));
  return [{ok: true, seconds: seconds(start), tensors, backend: tf.getBackend()}, Buffer.concat(parts)];
}

function send(header, body) {
  const h = Buffer.from(JSON.stringify(header), 'utf8');
  const b = body || Buffer.alloc(0);
  const head = Buffer.alloc(12);
  head.writeBigUInt64LE(BigInt(4 + h.length + b.length), 0);
  head.writeUInt32LE(h.length, 8);
  process.stdout.write(Buffer.concat([head, h, b]));
}

async function handle(frame) {
  const hlen = frame.readUInt32LE(0);
  const req = JSON.parse(frame.subarray(4, 4 + hlen).toString('utf8'));
  const body = frame.subarray(4 + hlen);
  try {
    if (req.cmd === 'load') return send(await load(req));
    if (req.cmd === 'predict') {
      const [h, b] = await predict(req, body);
      return send(h, b);
    }
    if (req.cmd === 'dispose') {
      const entry = models.get(req.id);
      if (entry) entry.model.dispose();
      models.delete(req.id);
      return send({ok: true});
    }
    throw new Error(`unknown command ${req.cmd}`);
  } catch (e) {
    send({ok: false, error: String((e && e.message) || e).split('\n')[0]});
  }
}

async function main() {
  await tf.setBackend(backend);
  await tf.ready();
  if (tf.getBackend() !== backend) throw new Error(`backend ${backend} did not initialise (got ${tf.getBackend()})`);
  send({ok: true, backend: tf.getBackend(), tfjs: tf.version.tfjs, seconds: seconds(t0)});
  let pending = Buffer.alloc(0);
  let chain = Promise.resolve();
  process.stdin.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    while (pending.length >= 8) {
      const n = Number(pending.readBigUInt64LE(0));
      if (pending.length < 8 + n) break;
      const frame = pending.subarray(8, 8 + n);
      pending = pending.subarray(8 + n);
      chain = chain.then(() => handle(frame)); // one request at a time, in order
    }
  });
  process.stdin.on('end', () => chain.then(() => process.exit(0)));
}

main().catch((e) => {
  send({ok: false, error: `TF.js ${backend} backend failed to start: ${String((e && e.message) || e).split('\n')[0]}`});
  process.exit(3);
});
