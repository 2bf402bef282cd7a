// Pass: run the (ReLUfied) model with onnxruntime-node on calibration inputs and record each FFN's input, batch by
// batch. Inputs come from --calib (a folder of .bin + manifest.json, or .npz) or are synthesised from the model's
// signature with a seed (with a warning: real data routes better).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import { MoefyError } from '../errors';
import { readTensorSet } from '../io';
import { Value } from '../ir/graph';
import { saveModel } from '../onnx/io';
import { deriveSeed, gaussian, rng } from '../calib/random';
import { ConversionState, LayerCapture, PassResult } from './types';

type Feeds = Record<string, ort.Tensor>;

const ORT_TYPE: Record<number, ort.Tensor.Type> = { 1: 'float32', 6: 'int32', 7: 'int64', 9: 'bool', 10: 'float16', 11: 'float64' };

/** The model's real (non-initializer) inputs. */
function modelInputs(st: ConversionState): Value[] {
  return st.model.graph.inputs.filter((v) => !v.tensor);
}

/** Number of classes from the class-embedding table feeding a Gather on the label (minus the null class). */
function numClasses(st: ConversionState): number {
  for (const n of st.model.graph.nodes) {
    if (n.opType === 'Gather' && n.inputs[0]?.tensor && n.inputs[0].tensor.dims.length === 2) {
      const rows = n.inputs[0].tensor.dims[0];
      if (n.inputs[0].tensor.dims[1] === st.structure.D && rows > 10 && rows !== st.structure.layout.L) return rows - 1;
    }
  }
  return 10;
}

/** Inputs for `count` samples synthesised from a VAR's signature (for benchmarks and conversion without --calib). */
export function synthesiseInputs(model: ConversionState['model'], structure: ConversionState['structure'], count: number, seed: number): Feeds {
  return synthesise({ model, structure, options: { seed } } as ConversionState, count).feeds;
}

/** Synthesised inputs for `count` samples: labels uniform over the classes, features N(0,1), KV cache N(0,1). */
function synthesise(st: ConversionState, count: number): { feeds: Feeds; scale: number } {
  const uniform = rng(deriveSeed(st.options.seed, 0x5eed));
  const normal = gaussian(uniform);
  const s = st.structure;
  // A dynamic step graph is fed the finest scale (the one that matters most for the MoE).
  const scaleIdx = s.kind === 'step' ? (s.stepScale ?? s.layout.patchNums.length) - 1 : -1;
  const classes = numClasses(st);
  const feeds: Feeds = {};
  for (const v of modelInputs(st)) {
    const shape = (v.shape() ?? []).map((d, k) => {
      if (typeof d === 'number') return d;
      if (k === 0) return /past_/.test(v.name) ? count * s.rowsPerSample : count;
      if (/past_/.test(v.name)) return k === 2 ? s.layout.offsets[scaleIdx] : 1;
      if (k === 1) return s.kind === 'full' ? s.layout.L - 1 : s.layout.tokens[scaleIdx];
      throw new MoefyError(`cannot synthesise input '${v.name}': dimension ${k} is symbolic; pass --calib`);
    });
    const n = shape.reduce((a, b) => a * b, 1);
    const type = ORT_TYPE[v.elemType() ?? 1];
    if (type === 'int64') feeds[v.name] = new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => BigInt(Math.floor(uniform() * classes))), shape);
    else if (type === 'float32') {
      const d = new Float32Array(n);
      if (/cfg/i.test(v.name)) d.fill(1.5);
      else for (let i = 0; i < n; i++) d[i] = normal();
      feeds[v.name] = new ort.Tensor('float32', d, shape);
    } else throw new MoefyError(`cannot synthesise input '${v.name}' of type ${type}; pass --calib`);
  }
  return { feeds, scale: scaleIdx };
}

/** Checks calibration tensors against the model's signature: one clear line for a wrong name, type or shape. */
function checkCalib(st: ConversionState, set: Record<string, ort.Tensor>, file: string): Feeds {
  const feeds: Feeds = {};
  let batch: number | null = null;
  for (const v of modelInputs(st)) {
    const t = set[v.name];
    if (!t) throw new MoefyError(`calibration data ${file}: no tensor named '${v.name}' (the model's inputs: ${modelInputs(st).map((x) => x.name).join(', ')}; found: ${Object.keys(set).join(', ') || 'nothing'})`);
    const want = ORT_TYPE[v.elemType() ?? 1];
    if (t.type !== want) throw new MoefyError(`calibration data ${file}: '${v.name}' is ${t.type}, the model expects ${want}`);
    const shape = v.shape() ?? [];
    const bad = t.dims.length !== shape.length || shape.some((d, k) => typeof d === 'number' && d !== t.dims[k]);
    if (bad) throw new MoefyError(`calibration data ${file}: '${v.name}' has shape [${t.dims.join(', ')}], the model expects [${shape.map((d) => d ?? '?').join(', ')}]`);
    if (!/past_/.test(v.name) && t.dims.length > 0) {
      if (batch !== null && t.dims[0] !== batch) throw new MoefyError(`calibration data ${file}: '${v.name}' has ${t.dims[0]} samples, other inputs have ${batch}`);
      batch = t.dims[0];
    }
    feeds[v.name] = t;
  }
  return feeds;
}

/** Slices samples [a, b) of every feed along axis 0 (KV-cache inputs hold rowsPerSample rows per sample). */
function sliceFeeds(feeds: Feeds, a: number, b: number, rowsPerSample: number): Feeds {
  const out: Feeds = {};
  for (const [name, t] of Object.entries(feeds)) {
    if (t.dims.length === 0) {
      out[name] = t;
      continue;
    }
    const k = /past_/.test(name) ? rowsPerSample : 1;
    const per = t.dims.slice(1).reduce((x, y) => x * y, 1);
    const data = (t.data as Float32Array).subarray(a * k * per, b * k * per);
    out[name] = new ort.Tensor(t.type, data as never, [(b - a) * k, ...t.dims.slice(1)]);
  }
  return out;
}

export async function capture(st: ConversionState, onProgress?: (done: number, total: number) => void): Promise<PassResult> {
  const s = st.structure;
  let feeds: Feeds;
  let scaleIdx = -1;
  if (st.options.calib) {
    if (!fs.existsSync(st.options.calib)) throw new MoefyError(`--calib ${st.options.calib}: no such file or folder`);
    const set = (await readTensorSet(st.options.calib)) as unknown as Record<string, ort.Tensor>;
    if (s.kind === 'step' && isFullSequenceSet(set) && !hasAllInputs(st, set)) return captureChain(st, set, onProgress);
    feeds = checkCalib(st, set, st.options.calib);
    if (s.kind === 'step') scaleIdx = stepScaleOf(st, feeds);
  } else {
    st.warnings.push(`no --calib given: synthesised ${st.options.synthSamples} inputs from the model's signature (seed ${st.options.seed}); real calibration data routes better`);
    const syn = synthesise(st, st.options.synthSamples);
    feeds = syn.feeds;
    scaleIdx = syn.scale;
  }
  const samples = Object.entries(feeds).find(([n, t]) => !/past_/.test(n) && t.dims.length > 0)?.[1].dims[0] ?? 1;

  // A copy of the model whose outputs are the FFN inputs.
  const g = st.model.graph;
  const savedOutputs = g.outputs;
  g.outputs = st.sites.map((x) => x.ffnIn);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-capture-'));
  const file = path.join(dir, 'capture.onnx');
  try {
    saveModel(st.model, file);
  } finally {
    g.outputs = savedOutputs;
  }
  const sess = await ort.InferenceSession.create(file, { graphOptimizationLevel: 'all' });
  const D = s.D;
  const chunks: Float32Array[][] = st.sites.map(() => []);
  const scales: Int32Array[] = [];
  const batch = Math.max(1, Math.min(8, Math.floor(4_000_000 / (D * (s.kind === 'full' ? s.layout.L : 256)))));
  try {
    for (let a = 0; a < samples; a += batch) {
      const b = Math.min(samples, a + batch);
      const r = await sess.run(sliceFeeds(feeds, a, b, s.rowsPerSample));
      st.sites.forEach((site, k) => {
        const t = r[site.ffnIn.name];
        chunks[k].push(new Float32Array(t.data as Float32Array));
        if (k === 0) {
          const rows = t.dims.slice(0, -1).reduce((x, y) => x * y, 1);
          const L = t.dims[t.dims.length - 2];
          const sc = new Int32Array(rows);
          for (let i = 0; i < rows; i++) sc[i] = s.kind === 'full' ? scaleOfPosition(st, i % L) : scaleIdx;
          scales.push(sc);
        }
      });
      onProgress?.(b, samples);
    }
  } finally {
    await sess.release();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  st.captures = toCaptures(chunks, scales, D, st.options);
  const N = st.captures[0].N;
  return { name: 'capture', summary: `captured ${N} tokens × ${st.sites.length} FFN inputs from ${samples} ${st.options.calib ? 'calibration' : 'synthesised'} samples` };
}

function stepScaleOf(st: ConversionState, feeds: Feeds): number {
  const s = st.structure;
  if (s.stepScale !== null) return s.stepScale - 1;
  const x = Object.entries(feeds).find(([n, t]) => !/past_|label|cfg/.test(n) && t.dims.length === 3);
  const l = x ? x[1].dims[1] : 1;
  const k = s.layout.tokens.indexOf(l);
  if (k < 0) throw new MoefyError(`calibration data: the step input has ${l} tokens, which is no scale of the layout ${s.layout.patchNums.join(',')}`);
  return k;
}

export function scaleOfPosition(st: ConversionState, pos: number): number {
  const o = st.structure.layout.offsets;
  let k = 0;
  while (k + 1 < o.length && o[k + 1] <= pos) k++;
  return k;
}

/** Per-layer captures from the chunks of each run, with one seeded token subsample shared by all layers. */
function toCaptures(chunks: Float32Array[][], scales: Int32Array[], D: number, o: { maxTokens: number; seed: number }): LayerCapture[] {
  const scaleOfToken = concatInt(scales);
  const keep = subsample(scaleOfToken.length, o.maxTokens, o.seed);
  return chunks.map((cs) => {
    const all = concatFloat(cs);
    const X = keep ? gatherRows(all, keep, D) : all;
    return { X, N: X.length / D, D, scaleOfToken: keep ? Int32Array.from(keep, (i) => scaleOfToken[i]) : scaleOfToken };
  });
}

function subsample(n: number, cap: number, seed: number): Int32Array | null {
  if (n <= cap) return null;
  const uniform = rng(deriveSeed(seed, 0xcab));
  // Seeded partial Fisher-Yates, then sorted so token order stays.
  const idx = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = 0; i < cap; i++) {
    const j = i + Math.floor(uniform() * (n - i));
    const t = idx[i];
    idx[i] = idx[j];
    idx[j] = t;
  }
  return idx.slice(0, cap).sort();
}

function gatherRows(a: Float32Array, rows: Int32Array, D: number): Float32Array {
  const out = new Float32Array(rows.length * D);
  rows.forEach((r, i) => out.set(a.subarray(r * D, (r + 1) * D), i * D));
  return out;
}

function concatFloat(cs: Float32Array[]): Float32Array {
  const out = new Float32Array(cs.reduce((a, c) => a + c.length, 0));
  let o = 0;
  for (const c of cs) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}
function concatInt(cs: Int32Array[]): Int32Array {
  const out = new Int32Array(cs.reduce((a, c) => a + c.length, 0));
  let o = 0;
  for (const c of cs) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

const FULL_X = 'x_BLCv_wo_first_l';

function isFullSequenceSet(set: Record<string, ort.Tensor>): boolean {
  return !!set[FULL_X] && !!set.label_B;
}
function hasAllInputs(st: ConversionState, set: Record<string, ort.Tensor>): boolean {
  return modelInputs(st).every((v) => set[v.name]);
}


/**
 * Step graphs from full-sequence calibration data: run the earlier scales' graphs (--kv-prefix) in a chain, each fed
 * its scale's slice of the teacher-forcing input and the previous step's present_* as past_*, then the model itself,
 * capturing its FFN inputs. A dynamic step graph runs for every scale after the prefix, and is captured at each.
 */
async function captureChain(st: ConversionState, set: Record<string, ort.Tensor>, onProgress?: (done: number, total: number) => void): Promise<PassResult> {
  const s = st.structure;
  const layout = s.layout;
  const prefix = st.options.kvPrefix ?? [];
  const first = s.stepScale !== null ? s.stepScale - 1 : prefix.length;
  if (s.stepScale !== null && prefix.length < first)
    throw new MoefyError(`this step graph computes scale ${s.stepScale}: it needs the KV cache of scales 1…${first}; pass --kv-prefix with the graphs for them (${prefix.length} given)`);
  if (s.stepScale === null && prefix.length === 0)
    throw new MoefyError('this dynamic step graph needs the KV cache of scale 1: pass --kv-prefix with the first step\'s graph (e.g. the step-0 export)');
  const last = s.stepScale !== null ? first : layout.patchNums.length - 1;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-capture-'));
  const file = path.join(dir, 'capture.onnx');
  const g = st.model.graph;
  const savedOutputs = g.outputs;
  g.outputs = [...savedOutputs, ...st.sites.map((x) => x.ffnIn)];
  try {
    saveModel(st.model, file);
  } finally {
    g.outputs = savedOutputs;
  }
  const sessions: ort.InferenceSession[] = [];
  const samples = set.label_B.dims[0];
  const X = set[FULL_X];
  const xPer = X.dims[1] * X.dims[2];
  const chunks: Float32Array[][] = st.sites.map(() => []);
  const scales: Int32Array[] = [];
  try {
    for (const p of prefix.slice(0, first)) sessions.push(await ort.InferenceSession.create(p));
    const self = await ort.InferenceSession.create(file);
    const batch = 4;
    for (let a = 0; a < samples; a += batch) {
      const b = Math.min(samples, a + batch);
      let past: Record<string, ort.Tensor> = {};
      for (let k = 0; k <= last; k++) {
        const sess = k < first ? sessions[k] : self;
        const feeds: Feeds = {};
        for (const name of sess.inputNames) {
          if (name === 'label_B') feeds[name] = new ort.Tensor('int64', (set.label_B.data as BigInt64Array).slice(a, b), [b - a]);
          else if (/cfg/i.test(name)) feeds[name] = new ort.Tensor('float32', Float32Array.of(1.5), []);
          else if (/past_/.test(name)) {
            const t = past[name.replace('past_', 'present_')];
            if (!t) throw new MoefyError(`--kv-prefix: the graph for scale ${k} wants '${name}', which the previous step does not output`);
            feeds[name] = t;
          } else {
            // The scale's slice of the teacher-forcing input: full-sequence token t ≥ 1 is x[t − 1].
            const l = layout.tokens[k], from = layout.offsets[k] - 1, C = X.dims[2];
            const out = new Float32Array((b - a) * l * C);
            for (let i = a; i < b; i++) out.set((X.data as Float32Array).subarray(i * xPer + from * C, i * xPer + (from + l) * C), (i - a) * l * C);
            feeds[name] = new ort.Tensor('float32', out, [b - a, l, C]);
          }
        }
        const r = await sess.run(feeds);
        past = Object.fromEntries(Object.entries(r).filter(([n]) => /present_/.test(n)));
        if (k < first) continue;
        st.sites.forEach((site, j) => {
          const t = r[site.ffnIn.name];
          chunks[j].push(new Float32Array(t.data as Float32Array));
          if (j === 0) scales.push(new Int32Array(t.dims.slice(0, -1).reduce((x, y) => x * y, 1)).fill(k));
        });
      }
      onProgress?.(b, samples);
    }
    await self.release();
  } finally {
    for (const x of sessions) await x.release();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  st.captures = toCaptures(chunks, scales, s.D, st.options);
  return { name: 'capture', summary: `captured ${st.captures[0].N} tokens × ${st.sites.length} FFN inputs of scales ${first + 1}…${last + 1} from ${samples} calibration samples through a KV-cache chain of ${first} earlier step(s)` };
}
