// Calibration inputs of a VAR graph: synthesised from its signature (seeded), or given tensors checked against it,
// and sliced into batches. The model's facts (KV inputs, classes, layout) come from the analysis.
import * as ort from 'onnxruntime-node';
import { VarStructure, isKvInputName } from '../analysis/var-structure';
import { inputRole } from '../analysis/var-signature';
import { MoefyError } from '../errors';
import { Value } from '../ir/graph';
import { Model } from '../ir/model';
import { float32ToHalfBits, halfBitsToFloat32 } from '../onnx/half';
import { deriveSeed, gaussian, rng } from './random';

export type Feeds = Record<string, ort.Tensor>;

const ORT_TYPE: Record<number, ort.Tensor.Type> = { 1: 'float32', 6: 'int32', 7: 'int64', 9: 'bool', 10: 'float16', 11: 'float64' };

/**
 * A captured tensor as float32. A float16 model is run as it is (ONNX Runtime's CPU runs float16 graphs) and its
 * FFN inputs are widened here: calibration computes in float32 on the activations the float16 model really makes.
 */
export function floatData(t: ort.Tensor): Float32Array {
  if (t.type === 'float32') return new Float32Array(t.data as Float32Array);
  if (t.type === 'float16') {
    const d = t.data as unknown;
    return d instanceof Uint16Array ? halfBitsToFloat32(d) : Float32Array.from(d as ArrayLike<number>);
  }
  throw new MoefyError(`captured tensor of type ${t.type}: expected float32 or float16`);
}

/** A float32 or float16 output as float32: a view of float32 data (no copy), float16 widened. */
export function floatView(t: ort.Tensor): Float32Array {
  return t.type === 'float32' ? (t.data as Float32Array) : floatData(t);
}

/** float32 data as the float16 tensor a float16 model takes (rounded to nearest even). */
export function toHalfTensor(d: Float32Array, dims: readonly number[]): ort.Tensor {
  return new ort.Tensor('float16', float32ToHalfBits(d), dims);
}

/** The model's real (non-initializer) inputs. */
export function modelInputs(model: Model): Value[] {
  return model.graph.inputs.filter((v) => !v.tensor);
}

/** Synthesised inputs for `count` samples: labels uniform over the classes, features N(0,1), KV cache N(0,1). */
export function synthesise(model: Model, s: VarStructure, count: number, seed: number): { feeds: Feeds; scale: number } {
  const uniform = rng(deriveSeed(seed, 0x5eed));
  const normal = gaussian(uniform);
  // A dynamic step graph is fed the finest scale (the one that matters most for the MoE).
  const scaleIdx = s.kind === 'step' ? (s.stepScale ?? s.layout.patchNums.length) - 1 : -1;
  const feeds: Feeds = {};
  for (const v of modelInputs(model)) {
    const kv = isKvInputName(v.name);
    const shape = (v.shape() ?? []).map((d, k) => {
      if (typeof d === 'number') return d;
      if (k === 0) return kv ? count * s.rowsPerSample : count;
      if (kv) return k === 2 ? s.layout.offsets[scaleIdx] : 1;
      if (k === 1) return s.kind === 'full' ? s.layout.L - 1 : s.layout.tokens[scaleIdx];
      throw new MoefyError(`cannot synthesise input '${v.name}': dimension ${k} is symbolic; pass --calib`);
    });
    const n = shape.reduce((a, b) => a * b, 1);
    const type = ORT_TYPE[v.elemType() ?? 1];
    if (type === 'int64') feeds[v.name] = new ort.Tensor('int64', BigInt64Array.from({ length: n }, () => BigInt(Math.floor(uniform() * s.classes))), shape);
    else if (type === 'float32') {
      const d = new Float32Array(n);
      if (inputRole(v.name) === 'cfg') d.fill(1.5);
      else for (let i = 0; i < n; i++) d[i] = normal();
      feeds[v.name] = new ort.Tensor('float32', d, shape);
    } else if (type === 'float16') {
      const d = new Float32Array(n);
      for (let i = 0; i < n; i++) d[i] = normal();
      feeds[v.name] = toHalfTensor(d, shape);
    } else throw new MoefyError(`cannot synthesise input '${v.name}' of type ${type}; pass --calib`);
  }
  return { feeds, scale: scaleIdx };
}

/** Inputs for `count` samples synthesised from a VAR's signature (for benchmarks and conversion without --calib). */
export function synthesiseInputs(model: Model, structure: VarStructure, count: number, seed: number): Feeds {
  return synthesise(model, structure, count, seed).feeds;
}

/**
 * Checks calibration tensors against the model's signature: one clear line for a wrong name, type or shape, or
 * inputs that disagree on the samples. `where` names the set in the messages (e.g. "--inputs x.npz" for eval).
 */
export function checkCalib(model: Model, set: Feeds, file: string, where = `calibration data ${file}`): Feeds {
  const feeds: Feeds = {};
  let batch: number | null = null;
  for (const v of modelInputs(model)) {
    let t = set[v.name];
    if (!t) throw new MoefyError(`${where}: no tensor named '${v.name}' (the model's inputs: ${modelInputs(model).map((x) => x.name).join(', ')}; found: ${Object.keys(set).join(', ') || 'nothing'})`);
    const want = ORT_TYPE[v.elemType() ?? 1];
    // float32 calibration data for a float16 model is rounded to float16, as the model's own input would be.
    if (want === 'float16' && t.type === 'float32') t = toHalfTensor(t.data as Float32Array, t.dims);
    if (t.type !== want) throw new MoefyError(`${where}: '${v.name}' is ${t.type}, the model expects ${want}`);
    const shape = v.shape() ?? [];
    const bad = t.dims.length !== shape.length || shape.some((d, k) => typeof d === 'number' && d !== t.dims[k]);
    if (bad) throw new MoefyError(`${where}: '${v.name}' has shape [${t.dims.join(', ')}], the model expects [${shape.map((d) => d ?? '?').join(', ')}]`);
    if (!isKvInputName(v.name) && t.dims.length > 0) {
      if (batch !== null && t.dims[0] !== batch) throw new MoefyError(`${where}: '${v.name}' has ${t.dims[0]} samples, other inputs have ${batch}`);
      batch = t.dims[0];
    }
    feeds[v.name] = t;
  }
  return feeds;
}

/** Slices samples [a, b) of every feed along axis 0 (KV-cache inputs hold rowsPerSample rows per sample, in blocks). */
export function sliceFeeds(feeds: Feeds, a: number, b: number, rowsPerSample: number): Feeds {
  const out: Feeds = {};
  for (const [name, t] of Object.entries(feeds)) {
    if (t.dims.length === 0) {
      out[name] = t;
      continue;
    }
    const per = t.dims.slice(1).reduce((x, y) => x * y, 1);
    const k = isKvInputName(name) ? rowsPerSample : 1;
    if (k === 1) {
      out[name] = new ort.Tensor(t.type, (t.data as Float32Array).subarray(a * per, b * per) as never, [b - a, ...t.dims.slice(1)]);
      continue;
    }
    // A CFG-doubled KV cache holds k blocks of B rows (VAR: the B conditional rows, then the B unconditional ones):
    // samples a…b−1 are rows a…b−1 of every block.
    const B = t.dims[0] / k;
    const src = t.data as Float32Array;
    const data = new (src.constructor as Float32ArrayConstructor)(k * (b - a) * per);
    for (let j = 0; j < k; j++) data.set(src.subarray((j * B + a) * per, (j * B + b) * per), j * (b - a) * per);
    out[name] = new ort.Tensor(t.type, data as never, [(b - a) * k, ...t.dims.slice(1)]);
  }
  return out;
}
