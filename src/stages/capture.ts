// Stage capture → FfnInputSample: run the model with onnxruntime-node on calibration inputs and record each FFN's
// input, batch by batch. Inputs come from --calib (a folder of .bin + manifest.json, or .npz) or are synthesised
// from the model's signature with a seed (with a warning: real data routes better). The model runs as the converted
// model's stream will compute: its FFNs with the experts' ReLU unless the experts are repaired (repaired experts
// reproduce the dense FFNs, so a repaired MoE sees the dense model's stream).
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ort from 'onnxruntime-node';
import type { FfnSite, VarStructure } from '../analysis/var-structure';
import { inputRole, isKvInputName, isKvOutputName, kvOutputFor, TEACHER_FORCING } from '../analysis/var-signature';
import { checkCalib, Feeds, floatData, floatView, modelInputs, sliceFeeds, synthesise, toHalfTensor } from '../calib/inputs';
import { deriveSeed, rng } from '../calib/random';
import type { Recipe } from '../convert-options';
import { MoefyError } from '../errors';
import { scaleRange } from '../format';
import { readTensorSet } from '../io';
import { Lendable } from '../calib/layer-pool';
import { Model, ModelCopy } from '../ir/model';
import { encodeModel, saveModel } from '../onnx/io';
import { Value } from '../ir/graph';
import { removeTemp, tempDir } from '../files/temp';
import { checkInputValues } from '../calib/check-inputs';
import { scaleOfPositions, scaleOfStep } from '../op';
import { relufied } from './relufy';
import { stage } from './stage';
import { FfnInputSample, LayerCapture } from './types';

// Errors only: on a float16 model ORT warns for every node it cannot constant-fold on the CPU (no float16 kernel
// for folding), which says nothing about the model.
const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = { graphOptimizationLevel: 'all', logSeverityLevel: 3 };

export interface CaptureOptions extends Pick<Recipe, 'calib' | 'kvPrefix' | 'synthSamples' | 'seed' | 'maxTokens'> {
  /** Run the FFNs with ReLU (the experts' activation) instead of the model's own. */
  reluFfns?: boolean;
}

export const captureStage = stage({
  name: 'capture',
  needs: ['model', 'structure', 'sites', 'recipe'],
  gives: 'sample',
  // The bar counts samples; capture reports (done, total) with the total it actually runs.
  steps: ({ recipe }) => (recipe.calib ? 1 : recipe.synthSamples),
  run: ({ model, structure, sites, recipe }, progress) => capture(model, structure, sites, { ...recipe, reluFfns: !recipe.repair && recipe.activation === 'relu' }, progress),
  summary: (s, { sites }) => {
    const src = s.source;
    const what = `captured ${s.layers[0].N} tokens × ${sites.length} FFN inputs`;
    if (typeof src === 'object') return `${what} of ${scaleRange(src.chain.firstScale, src.chain.lastScale)} from ${s.samples} calibration samples through a KV-cache chain of ${src.chain.steps} earlier step(s)`;
    return `${what} from ${s.samples} ${src} samples`;
  },
  warnings: (s, { recipe }) => (s.source === 'synthesised' ? [`no --calib given: synthesised ${recipe.synthSamples} inputs from the model's signature (seed ${recipe.seed}); real calibration data routes better`] : []),
});

/** The FFN inputs of `sites` in `model` on the calibration data (or synthesised inputs). */
export async function capture(model: Model, s: VarStructure, sites: FfnSite[], o: CaptureOptions, onProgress?: (done: number, total: number) => void): Promise<FfnInputSample> {
  let feeds: Feeds;
  let scaleIdx = -1;
  // The model as it runs here (a copy: the model itself stays as it is).
  const run = o.reluFfns ? relufied(model, sites) : model.clone();
  if (o.calib) {
    if (!fs.existsSync(o.calib)) throw new MoefyError(`--calib ${o.calib}: no such file or folder`);
    const set = (await readTensorSet(o.calib)) as unknown as Record<string, ort.Tensor>;
    // No samples, non-finite values and out-of-range labels, named before anything runs.
    checkInputValues(model, set, `calibration data ${o.calib}`);
    if (s.kind === 'step' && isFullSequenceSet(set) && !hasAllInputs(model, set)) return captureChain(run, s, sites, o, set, onProgress);
    feeds = checkCalib(model, set, o.calib);
    if (s.kind === 'step') scaleIdx = stepScaleOf(s, feeds);
  } else {
    const syn = synthesise(model, s, o.synthSamples, o.seed);
    feeds = syn.feeds;
    scaleIdx = syn.scale;
  }
  const samples = Object.entries(feeds).find(([n, t]) => !isKvInputName(n) && t.dims.length > 0)?.[1].dims[0] ?? 1;

  // The model with the FFN inputs as its outputs.
  const sess = await captureSession(run.model, sites.map((x) => run.valueOf(x.ffnIn)), SESSION_OPTIONS);
  const D = s.D;
  let sinks: RowSink[] | null = null;
  let scaleOfToken: Int32Array | null = null;
  let keep: Int32Array | null = null;
  let row = 0;
  const batch = Math.max(1, Math.min(8, Math.floor(4_000_000 / (D * (s.kind === 'full' ? s.layout.L : 256)))));
  // Full-sequence graphs: each position's scale by the op's layout rule.
  const fullScales = s.kind === 'full' ? scaleOfPositions(s.layout.L, s.layout.patchNums)! : [];
  try {
    for (let a = 0; a < samples; a += batch) {
      const b = Math.min(samples, a + batch);
      const r = await sess.run(sliceFeeds(feeds, a, b, s.rowsPerSample));
      const t0 = r[sites[0].ffnIn.name];
      const rows = t0.dims.slice(0, -1).reduce((x, y) => x * y, 1);
      if (!sinks) {
        // Every batch holds the same rows per sample: the total is known from the first one.
        const total = (rows / (b - a)) * samples;
        keep = subsample(total, o.maxTokens, o.seed);
        sinks = sites.map(() => new RowSink(total, D, keep));
        scaleOfToken = new Int32Array(total);
      }
      const L = t0.dims[t0.dims.length - 2];
      for (let i = 0; i < rows; i++) scaleOfToken![row + i] = s.kind === 'full' ? fullScales[i % L] : scaleIdx;
      row += rows;
      sites.forEach((site, k) => sinks![k].push(floatView(r[site.ffnIn.name])));
      onProgress?.(b, samples);
    }
  } finally {
    await sess.release();
  }
  return { layers: fromSinks(sinks!, scaleOfToken!, keep, D), samples, source: o.calib ? 'calibration' : 'synthesised' };
}

/** Models this size or larger go to ORT through a temporary file (protobuf's 2 GB limit); smaller ones from memory. */
const IN_MEMORY_LIMIT = 2 ** 31 - 128 * 2 ** 20;

/**
 * An ORT session of `model` (a copy this module owns: it is pruned here) with `outputs` as its outputs. From an
 * in-memory encoding when it fits a protobuf (no copy of the weights written to disk and read back: measured 8 s
 * instead of 39 s at d16 size, contended), else through a temporary file.
 */
async function captureSession(model: Model, outputs: Value[], opts: ort.InferenceSession.SessionOptions = {}): Promise<ort.InferenceSession> {
  const g = model.graph;
  // Only the nodes the outputs need: ORT runs dead nodes too (the last FFN and the head here: 5% of a d16 forward).
  const live = g.liveNodes(outputs);
  const reads = g.subgraphReads(live);
  const used = new Set<Value>(outputs);
  for (const n of live) for (const v of n.inputs) if (v) used.add(v);
  g.nodes = g.nodes.filter((n) => live.has(n));
  g.initializers = g.initializers.filter((v) => used.has(v) || reads.has(v.name));
  g.outputs = outputs;
  if (g.initializers.reduce((a, v) => a + (v.tensor?.byteLength ?? 0), 0) < IN_MEMORY_LIMIT) return ort.InferenceSession.create(encodeModel(model), opts);
  const dir = tempDir('capture');
  try {
    saveModel(model, path.join(dir, 'capture.onnx'));
    return await ort.InferenceSession.create(path.join(dir, 'capture.onnx'), opts);
  } finally {
    removeTemp(dir);
  }
}

/**
 * The captured rows of one FFN, copied once from each ORT output into their final array; with a token subsample
 * only its rows are kept (keep: sorted row indices into the `total` rows the run produces).
 */
class RowSink {
  readonly X: Float32Array;
  private seen = 0;
  private next = 0;
  constructor(total: number, private readonly D: number, private readonly keep: Int32Array | null) {
    this.X = new Float32Array((keep ? keep.length : total) * D);
  }
  push(data: Float32Array): void {
    const D = this.D, rows = data.length / D;
    if (!this.keep) this.X.set(data, this.seen * D);
    else {
      const keep = this.keep;
      while (this.next < keep.length && keep[this.next] < this.seen + rows) {
        const r = keep[this.next] - this.seen;
        this.X.set(data.subarray(r * D, (r + 1) * D), this.next * D);
        this.next++;
      }
    }
    this.seen += rows;
  }
}

function fromSinks(sinks: RowSink[], scaleOfToken: Int32Array, keep: Int32Array | null, D: number): LayerCapture[] {
  const sc = keep ? Int32Array.from(keep, (i) => scaleOfToken[i]) : scaleOfToken;
  return sinks.map((k) => ({ X: new Lendable(k.X), N: k.X.length / D, D, scaleOfToken: sc }));
}

function stepScaleOf(s: VarStructure, feeds: Feeds): number {
  if (s.stepScale !== null) return s.stepScale - 1;
  const x = s.tokenInput ? feeds[s.tokenInput.name] : undefined;
  const l = x ? x.dims[1] : 1;
  const k = scaleOfStep(l, s.layout.patchNums);
  if (k < 0) throw new MoefyError(`calibration data: the step input has ${l} tokens, which is no scale of the layout ${s.layout.patchNums.join(',')}`);
  return k;
}

/** Per-layer captures from the chunks of each run, with one seeded token subsample shared by all layers. */
function toCaptures(chunks: Float32Array[][], scales: Int32Array[], D: number, o: { maxTokens: number; seed: number }): LayerCapture[] {
  const scaleOfToken = concatInt(scales);
  const keep = subsample(scaleOfToken.length, o.maxTokens, o.seed);
  return chunks.map((cs) => {
    const all = concatFloat(cs);
    const X = keep ? gatherRows(all, keep, D) : all;
    return { X: new Lendable(X), N: X.length / D, D, scaleOfToken: keep ? Int32Array.from(keep, (i) => scaleOfToken[i]) : scaleOfToken };
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

function isFullSequenceSet(set: Record<string, ort.Tensor>): boolean {
  return !!set[TEACHER_FORCING.tokens] && !!set[TEACHER_FORCING.label];
}
function hasAllInputs(model: Model, set: Record<string, ort.Tensor>): boolean {
  return modelInputs(model).every((v) => set[v.name]);
}


/**
 * Step graphs from full-sequence calibration data: run the earlier scales' graphs (--kv-prefix) in a chain, each fed
 * its scale's slice of the teacher-forcing input and the previous step's present_* as past_*, then the model itself,
 * capturing its FFN inputs. A dynamic step graph runs for every scale after the prefix, and is captured at each.
 */
async function captureChain(run: ModelCopy, s: VarStructure, sites: FfnSite[], o: CaptureOptions, set: Record<string, ort.Tensor>, onProgress?: (done: number, total: number) => void): Promise<FfnInputSample> {
  const layout = s.layout;
  const prefix = o.kvPrefix ?? [];
  const first = s.stepScale !== null ? s.stepScale - 1 : prefix.length;
  if (s.stepScale !== null && prefix.length < first)
    throw new MoefyError(`this step graph computes scale ${s.stepScale}: it needs the KV cache of scales 1…${first}; pass --kv-prefix with the graphs for them (${prefix.length} given)`);
  if (s.stepScale === null && prefix.length === 0)
    throw new MoefyError('this dynamic step graph needs the KV cache of scale 1: pass --kv-prefix with the first step\'s graph (e.g. the step-0 export)');
  const last = s.stepScale !== null ? first : layout.patchNums.length - 1;
  const sessions: ort.InferenceSession[] = [];
  const labels = set[TEACHER_FORCING.label];
  const samples = labels.dims[0];
  const X = set[TEACHER_FORCING.tokens];
  const xData = X.type === 'float16' ? floatData(X) : (X.data as Float32Array);
  const xPer = X.dims[1] * X.dims[2];
  const chunks: Float32Array[][] = sites.map(() => []);
  const scales: Int32Array[] = [];
  try {
    for (const p of prefix.slice(0, first)) sessions.push(await ort.InferenceSession.create(p, SESSION_OPTIONS));
    const self = await captureSession(run.model, [...run.model.graph.outputs, ...sites.map((x) => run.valueOf(x.ffnIn))], SESSION_OPTIONS);
    // A graph exported with a static batch (B 1) takes exactly that many samples per run.
    const fixed = s.label?.shape()?.[0];
    const batch = typeof fixed === 'number' && fixed > 0 ? fixed : 4;
    for (let a = 0; a < samples; a += batch) {
      const b = Math.min(samples, a + batch);
      let past: Record<string, ort.Tensor> = {};
      for (let k = 0; k <= last; k++) {
        const sess = k < first ? sessions[k] : self;
        const feeds: Feeds = {};
        for (const name of sess.inputNames) {
          const role = inputRole(name);
          if (role === 'label') feeds[name] = new ort.Tensor('int64', (labels.data as BigInt64Array).slice(a, b), [b - a]);
          else if (role === 'cfg') feeds[name] = new ort.Tensor('float32', Float32Array.of(1.5), []);
          else if (role === 'kv') {
            const t = past[kvOutputFor(name)];
            if (!t) throw new MoefyError(`--kv-prefix: the graph for scale ${k} wants '${name}', which the previous step does not output`);
            feeds[name] = t;
          } else {
            // The scale's slice of the teacher-forcing input: full-sequence token t ≥ 1 is x[t − 1].
            const l = layout.tokens[k], from = layout.offsets[k] - 1, C = X.dims[2];
            const out = new Float32Array((b - a) * l * C);
            for (let i = a; i < b; i++) out.set(xData.subarray(i * xPer + from * C, i * xPer + (from + l) * C), (i - a) * l * C);
            // A float16 step graph takes the slice rounded to float16.
            const meta = sess.inputMetadata.find((m) => m.name === name);
            feeds[name] = meta?.isTensor && meta.type === 'float16' ? toHalfTensor(out, [b - a, l, C]) : new ort.Tensor('float32', out, [b - a, l, C]);
          }
        }
        const r = await sess.run(feeds);
        past = Object.fromEntries(Object.entries(r).filter(([n]) => isKvOutputName(n)));
        if (k < first) continue;
        sites.forEach((site, j) => {
          const t = r[site.ffnIn.name];
          chunks[j].push(floatData(t));
          if (j === 0) scales.push(new Int32Array(t.dims.slice(0, -1).reduce((x, y) => x * y, 1)).fill(k));
        });
      }
      onProgress?.(b, samples);
    }
    await self.release();
  } finally {
    for (const x of sessions) await x.release();
  }
  return { layers: toCaptures(chunks, scales, s.D, o), samples, source: { chain: { firstScale: first + 1, lastScale: last + 1, steps: first } } };
}
