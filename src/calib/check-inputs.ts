// Calibration and run inputs checked before any model runs, in moefy's words: a tensor with 0 samples (every mean
// would be 0/0), a NaN or ±Inf in a float tensor (named, with its first index: k-means would fail on it much later,
// far from the cause), and class labels outside the model's class-embedding table (ONNX Runtime's Gather would fail
// with an index error).
import type { Tensor } from 'onnxruntime-common';
import { analyseVar, VarStructure } from '../analysis/var-structure';
import { MoefyError } from '../errors';
import type { Model } from '../ir/model';
import { loadModel } from '../onnx/io';

/** The multi-index of flat index i in dims. */
function at(i: number, dims: readonly number[]): string {
  const idx: number[] = [];
  for (let k = dims.length - 1; k >= 0; k--) {
    idx.unshift(i % dims[k]);
    i = Math.floor(i / dims[k]);
  }
  return `[${idx.join(', ')}]`;
}

/** Throws on a tensor with no samples (its first dimension 0): every statistic of it would be 0/0. */
export function checkSamples(set: Record<string, Tensor>, where: string): void {
  for (const [name, t] of Object.entries(set)) {
    if (t.dims.length > 0 && t.dims[0] === 0) throw new MoefyError(`${where}: '${name}' holds 0 samples (shape [${t.dims.join(', ')}]); there is nothing to run on`);
  }
}

/** Throws on the first non-finite value of any float tensor. */
export function checkFinite(set: Record<string, Tensor>, where: string): void {
  for (const [name, t] of Object.entries(set)) {
    if (t.type !== 'float32' && t.type !== 'float64') continue;
    const d = t.data as Float32Array | Float64Array;
    for (let i = 0; i < d.length; i++) {
      if (!Number.isFinite(d[i])) throw new MoefyError(`${where}: tensor '${name}' holds ${d[i]} at index ${at(i, t.dims)} (flat ${i}); inputs must be finite`);
    }
  }
}

/**
 * Throws on a label outside 0…rows−1, where rows is the class-embedding table's row count (the classes and, for
 * classifier-free guidance, the null class after them).
 */
export function checkLabels(t: Tensor, name: string, rows: number, where: string): void {
  if (t.type !== 'int64' && t.type !== 'int32') return;
  const d = t.data as BigInt64Array | Int32Array;
  for (let i = 0; i < d.length; i++) {
    const v = Number(d[i]);
    if (v < 0 || v >= rows)
      throw new MoefyError(`${where}: label ${v} in '${name}' at index ${at(i, t.dims)} is outside the model's classes 0…${rows - 2} (and ${rows - 1}, the null class of classifier-free guidance)`);
  }
}

const PASS_THROUGH = new Set(['Cast', 'Reshape', 'Unsqueeze', 'Squeeze', 'Identity', 'Where', 'Flatten', 'Expand']);

/**
 * Integer graph inputs that index an embedding table (a Gather on a 2-D initializer, directly or through casts,
 * reshapes and Where, as CFG's label dropout has it), with the table's row count: the values they may hold.
 */
export function embeddingInputs(model: Model): Map<string, number> {
  const out = new Map<string, number>();
  const inputs = new Set(model.graph.inputs.filter((v) => !v.tensor));
  for (const n of model.graph.nodes) {
    if (n.opType !== 'Gather' || n.domain !== '' || !n.inputs[0]?.tensor || n.inputs[0].tensor.dims.length !== 2 || !n.inputs[1]) continue;
    const rows = n.inputs[0].tensor.dims[0];
    let frontier = [n.inputs[1]];
    for (let d = 0; d < 6 && frontier.length; d++) {
      const next = [];
      for (const v of frontier) {
        if (inputs.has(v)) out.set(v.name, Math.min(rows, out.get(v.name) ?? Infinity));
        const p = v.producer;
        if (p && PASS_THROUGH.has(p.opType)) for (const i of p.inputs) if (i && !i.tensor) next.push(i);
      }
      frontier = next;
    }
  }
  return out;
}

/** Calibration data checked before anything runs: samples, finite values, labels inside the model's tables. */
export function checkInputValues(model: Model, set: Record<string, Tensor>, where: string): void {
  checkSamples(set, where);
  checkFinite(set, where);
  checkEmbeddingInputs(model, set, where);
}

/** Labels (and other embedding indices) of run or eval inputs inside the model's tables. */
export function checkEmbeddingInputs(model: Model, feeds: Record<string, Tensor>, where: string): void {
  for (const [name, rows] of embeddingInputs(model)) if (feeds[name]) checkLabels(feeds[name], name, rows, where);
}

/** `f` run with its MoefyError prefixed by `prefix` (which flag and file the problem is in). */
function naming<T>(prefix: string, f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw e instanceof MoefyError ? new MoefyError(`${prefix}${e.message}`) : e;
  }
}

/**
 * The first fact in which two VAR exports differ as networks (patch layout, depth, widths, vocabulary, classes), as
 * [what, in a, in b]; null when they agree. Graphs of one network (its full graph, its step graphs, its conversion)
 * agree on all of them.
 */
export function networkDifference(a: VarStructure, b: VarStructure): [string, unknown, unknown] | null {
  const facts: [string, unknown, unknown][] = [
    ['patch layout', a.layout.patchNums.join(','), b.layout.patchNums.join(',')],
    ['blocks', a.blocks.length, b.blocks.length],
    ['width D', a.D, b.D],
    ['FFN hidden size H', a.H, b.H],
    ['vocabulary', a.vocab ?? '?', b.vocab ?? '?'],
    ['classes', a.classes, b.classes],
  ];
  return facts.find(([, x, y]) => x !== y) ?? null;
}

/**
 * The --kv-prefix graphs, scale 1 first, read before the conversion starts: each a VAR step graph of the model's own
 * network, of the scale of its place in the list when its scale is static (a dynamic one serves any). Otherwise
 * ONNX Runtime would fail on them in the middle of the capture, in its own words.
 */
export function checkKvPrefix(files: string[], model: VarStructure): void {
  files.forEach((f, k) => {
    const m = naming('--kv-prefix ', () => loadModel(f));
    const s: VarStructure = naming(`--kv-prefix ${f}: `, () => analyseVar(m, { patchNums: model.layout.patchNums }));
    const diff = networkDifference(model, s);
    if (diff) throw new MoefyError(`--kv-prefix ${f} is not a graph of the model being converted: ${diff[0]} ${diff[2]} against ${diff[1]}`);
    if (s.kind !== 'step') throw new MoefyError(`--kv-prefix ${f}: a full-sequence graph; the KV cache comes from step graphs (var_step_s{k}.onnx), scale 1 first`);
    if (s.stepScale !== null && s.stepScale !== k + 1) throw new MoefyError(`--kv-prefix ${f} computes scale ${s.stepScale} but is number ${k + 1} in the list: give the step graphs of scales 1, 2, … in order`);
  });
}
