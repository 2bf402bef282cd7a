// Expert repair by gradient descent: all four FFN tensors (W1, B1, W2, B2), and the skip_bias vectors when the
// closed form fitted them (SB [E, D]: a token adds SB[e] for each expert e it skips), trained so that the experts the
// routing keeps reproduce the dense FFN's output, with the routing mask in the loop (dropped experts contribute
// nothing and get no gradient), MSE + Adam, decoupled weight decay toward the starting weights, a held-out split of the tokens
// (the last ones: whole sequences) and early stopping on it (the best held-out epoch is returned). One step is one
// ONNX graph run in onnxruntime-node (forward and a hand-written backward, as the routers' training step), seeded.
import * as ort from 'onnxruntime-node';
import { MoefyError } from '../errors';
import { GELU_TANH, type ActivationKind as FfnActivation } from '../op';
import { GraphBuilder, activationOp, f32, f32Scalar } from './ort-graph';
import { deriveSeed, permutation, rng } from './random';
import { neuronMask, type RepairInputs } from './repair';

export interface TrainExpertsOptions {
  epochs?: number;
  batchSize?: number;
  /** Step size relative to each tensor's RMS (default 5e-3). */
  lr?: number;
  /** Decoupled decay toward the starting weights, per step, relative to the step size (default 0.01). */
  weightDecay?: number;
  heldOutFraction?: number;
  /** Stop after this many epochs without a better held-out error (default 3). */
  patience?: number;
  /** ORT intra-op threads (default: ORT's). */
  threads?: number;
  /** Called after every epoch (e.g. to stop: it may throw). */
  onEpoch?: () => void;
  seed: number;
}

export interface TrainExpertsResult {
  weights: FullFfnWeights;
  /** ‖MoE − dense‖/‖dense‖ on the held-out tokens: at the start and at the best epoch. */
  heldOutBefore: number;
  heldOutAfter: number;
  bestEpoch: number;
  epochs: number;
}

const K = GELU_TANH.sqrt2OverPi, C3 = GELU_TANH.cubic;

type FullFfnWeights = { W1: Float32Array; B1: Float32Array; W2: Float32Array; B2: Float32Array; SB?: Float32Array };

/** d act / dz for the activations the experts use. */
function activationGrad(b: GraphBuilder, z: ReturnType<GraphBuilder['input']>, activation: FfnActivation) {
  if (activation === 'relu') return b.op('Cast', [b.op('Greater', [z, b.scalar(0)])], { to: 1 });
  if (activation === 'gelu_tanh') {
    const z2 = b.op('Mul', [z, z]);
    const t = b.op('Tanh', [b.op('Mul', [b.scalar(K), b.op('Add', [z, b.op('Mul', [b.scalar(C3), b.op('Mul', [z2, z])])])])]);
    const sech2 = b.op('Sub', [b.scalar(1), b.op('Mul', [t, t])]);
    const du = b.op('Mul', [b.scalar(K), b.op('Add', [b.scalar(1), b.op('Mul', [b.scalar(3 * C3), z2])])]);
    return b.op('Add', [b.op('Mul', [b.scalar(0.5), b.op('Add', [b.scalar(1), t])]), b.op('Mul', [b.op('Mul', [b.scalar(0.5), z]), b.op('Mul', [sech2, du])])]);
  }
  const Phi = b.op('Mul', [b.op('Add', [b.op('Erf', [b.op('Mul', [z, b.scalar(Math.SQRT1_2)])]), b.scalar(1)]), b.scalar(0.5)]);
  const phi = b.op('Mul', [b.op('Exp', [b.op('Mul', [b.op('Mul', [z, z]), b.scalar(-0.5)])]), b.scalar(1 / Math.sqrt(2 * Math.PI))]);
  return b.op('Add', [Phi, b.op('Mul', [z, phi])]);
}

type Param = 'W1' | 'B1' | 'W2' | 'B2' | 'SB';
const paramsOf = (skip: boolean): Param[] => (skip ? ['W1', 'B1', 'W2', 'B2', 'SB'] : ['W1', 'B1', 'W2', 'B2']);

function buildStep(D: number, H: number, E: number, activation: FfnActivation, train: boolean, skip: boolean): GraphBuilder {
  const PARAMS = paramsOf(skip);
  const b = new GraphBuilder(train ? 'expert_train_step' : 'expert_eval');
  const X = b.input('X', ['n', D]);
  const M = b.input('M', ['n', E]);
  const Y = b.input('Y', ['n', D]);
  const dims: Record<Param, number[]> = { W1: [D, H], B1: [H], W2: [H, D], B2: [D], SB: [E, D] };
  const P = Object.fromEntries(PARAMS.map((p) => [p, b.input(p, dims[p])])) as Record<Param, ReturnType<GraphBuilder['input']>>;
  const Z = b.op('Add', [b.op('MatMul', [X, P.W1]), P.B1]);
  const A = activationOp(b, Z, activation);
  const m = neuronMask(b, M, H, E);
  const Hm = b.op('Mul', [A, m]);
  const skipped = skip ? b.op('Sub', [b.scalar(1), M]) : null;
  const out = b.op('Add', [b.op('MatMul', [Hm, P.W2]), P.B2]);
  const R = b.op('Sub', [skipped ? b.op('Add', [out, b.op('MatMul', [skipped, P.SB])]) : out, Y]);
  b.output(b.op('ReduceSumSquare', [R], { keepdims: 0 }), 'sse');
  if (!train) {
    b.output(b.op('ReduceSumSquare', [Y], { keepdims: 0 }), 'yy');
    return b;
  }
  const gscale = b.input('gscale', []);
  const dP = b.op('Mul', [R, gscale]);
  const grads: Record<string, ReturnType<GraphBuilder['input']>> = {
    W2: b.op('Gemm', [Hm, dP], { transA: 1 }),
    B2: b.op('ReduceSum', [dP, b.constI64([0])], { keepdims: 0 }),
  };
  if (skipped) grads.SB = b.op('Gemm', [skipped, dP], { transA: 1 });
  const dZ = b.op('Mul', [b.op('Mul', [b.op('Gemm', [dP, P.W2], { transB: 1 }), m]), activationGrad(b, Z, activation)]);
  grads.W1 = b.op('Gemm', [X, dZ], { transA: 1 });
  grads.B1 = b.op('ReduceSum', [dZ, b.constI64([0])], { keepdims: 0 });
  const c2 = b.input('c2', []); // 1 / sqrt(1 − β2^t)
  const decay = b.input('decay', []);
  for (const p of PARAMS) {
    const W0 = b.input(`${p}0`, dims[p]);
    const Mo = b.input(`M${p}`, dims[p]);
    const V = b.input(`V${p}`, dims[p]);
    const c1 = b.input(`c1${p}`, []); // step / (1 − β1^t)
    const g = grads[p];
    const mo = b.op('Add', [b.op('Mul', [Mo, b.scalar(0.9)]), b.op('Mul', [g, b.scalar(0.1)])]);
    const v = b.op('Add', [b.op('Mul', [V, b.scalar(0.999)]), b.op('Mul', [b.op('Mul', [g, g]), b.scalar(0.001)])]);
    const upd = b.op('Mul', [b.op('Div', [mo, b.op('Add', [b.op('Mul', [b.op('Sqrt', [v]), c2]), b.scalar(1e-12)])]), c1]);
    const w = b.op('Sub', [b.op('Sub', [P[p], upd]), b.op('Mul', [b.op('Sub', [P[p], W0]), decay])]);
    b.output(w, `${p}_out`);
    b.output(mo, `M${p}_out`);
    b.output(v, `V${p}_out`);
  }
  return b;
}

function rms(a: Float32Array): number {
  let s = 0;
  for (const x of a) s += x * x;
  return Math.sqrt(s / Math.max(1, a.length)) || 1;
}

/**
 * The repair's inputs with the dense outputs as an array (the epochs read them per batch), and the skip_bias [E, D]
 * to train with the experts when the closed form fitted one.
 */
export type TrainExpertsInputs = RepairInputs & { target: Float32Array; skipBias?: Float32Array | null };

/** Trains W1, B1, W2, B2 (and SB, the skip_bias, when given) from `inp.weights` (e.g. the closed-form repair) under the routing mask. */
export async function trainExperts(inp: TrainExpertsInputs, opts: TrainExpertsOptions): Promise<TrainExpertsResult> {
  const { X, N, D, target, routing } = inp;
  const H = inp.weights.B1.length, E = routing.E;
  const epochs = opts.epochs ?? 30, batchSize = opts.batchSize ?? 512, lr = opts.lr ?? 5e-3, wd = opts.weightDecay ?? 0.01;
  const patience = opts.patience ?? 3, hf = opts.heldOutFraction ?? 0.125;
  if (!(N >= 2) || X.length !== N * D || target.length !== N * D || routing.mask.length !== N * E || H % E !== 0) throw new MoefyError(`expert training: sizes do not match N=${N} D=${D} H=${H} E=${E}`);
  if (!(epochs >= 0 && batchSize >= 1 && lr > 0 && wd >= 0 && hf > 0 && hf < 1)) throw new MoefyError('expert training: bad options');
  const nHeld = Math.max(1, Math.floor(N * hf)), nFit = N - nHeld;
  const skip = !!inp.skipBias;
  if (inp.skipBias && inp.skipBias.length !== E * D) throw new MoefyError(`expert training: skip_bias has ${inp.skipBias.length} values, expected E·D = ${E * D}`);
  const PARAMS = paramsOf(skip);
  const start: Record<Param, Float32Array> = { W1: inp.weights.W1, B1: inp.weights.B1, W2: inp.weights.W2, B2: inp.weights.B2 ?? new Float32Array(D), SB: inp.skipBias ?? new Float32Array(0) };
  const dims: Record<Param, number[]> = { W1: [D, H], B1: [H], W2: [H, D], B2: [D], SB: [E, D] };
  let cur: Record<string, ort.Tensor> = Object.fromEntries(PARAMS.map((p) => [p, f32(Float32Array.from(start[p]), dims[p])]));
  const orig = Object.fromEntries(PARAMS.map((p) => [`${p}0`, f32(start[p], dims[p])]));
  let moments: Record<string, ort.Tensor> = {};
  for (const p of PARAMS) {
    moments[`M${p}`] = f32(new Float32Array(start[p].length), dims[p]);
    moments[`V${p}`] = f32(new Float32Array(start[p].length), dims[p]);
  }
  const scale = Object.fromEntries(PARAMS.map((p) => [p, lr * rms(p === 'B1' ? start.W1 : p === 'B2' ? start.W2 : start[p])]));
  const maskF = (a: number, n: number, buf: Float32Array) => {
    for (let i = 0; i < n * E; i++) buf[i] = routing.mask[a * E + i];
    return f32(buf.subarray(0, n * E), [n, E]);
  };
  const sessOpts = opts.threads ? { intraOpNumThreads: opts.threads } : {};
  const trainSess = await buildStep(D, H, E, inp.activation, true, skip).session(sessOpts);
  const evalSess = await buildStep(D, H, E, inp.activation, false, skip).session(sessOpts);
  const evalChunk = 4096;
  const mbuf = new Float32Array(Math.max(evalChunk, batchSize) * E);
  const heldErr = async (params: Record<string, ort.Tensor>) => {
    let sse = 0, yy = 0;
    for (let s = nFit; s < N; s += evalChunk) {
      const n = Math.min(evalChunk, N - s);
      const r = await evalSess.run({ X: f32(X.subarray(s * D, (s + n) * D), [n, D]), M: maskF(s, n, mbuf), Y: f32(target.subarray(s * D, (s + n) * D), [n, D]), ...params });
      sse += (r.sse.data as Float32Array)[0];
      yy += (r.yy.data as Float32Array)[0];
    }
    return Math.sqrt(sse / Math.max(yy, 1e-30));
  };
  const xb = new Float32Array(batchSize * D), yb = new Float32Array(batchSize * D), mb = new Float32Array(batchSize * E);
  const shuffle = rng(deriveSeed(opts.seed, 7));
  let best = cur, bestErr = Infinity, bestEpoch = 0, ran = 0, step = 0;
  try {
    const before = await heldErr(cur);
    best = cur;
    bestErr = before;
    for (let ep = 1; ep <= epochs; ep++) {
      const order = permutation(nFit, shuffle);
      for (let s = 0; s < nFit; s += batchSize) {
        const B = Math.min(batchSize, nFit - s);
        for (let j = 0; j < B; j++) {
          const i = order[s + j];
          xb.set(X.subarray(i * D, i * D + D), j * D);
          yb.set(target.subarray(i * D, i * D + D), j * D);
          for (let e = 0; e < E; e++) mb[j * E + e] = routing.mask[i * E + e];
        }
        step++;
        const c1 = Object.fromEntries(PARAMS.map((p) => [`c1${p}`, f32Scalar(scale[p] / (1 - 0.9 ** step))]));
        const r = await trainSess.run({
          X: f32(xb.subarray(0, B * D), [B, D]), M: f32(mb.subarray(0, B * E), [B, E]), Y: f32(yb.subarray(0, B * D), [B, D]),
          ...cur, ...orig, ...moments, ...c1, gscale: f32Scalar(2 / (B * D)), c2: f32Scalar(1 / Math.sqrt(1 - 0.999 ** step)), decay: f32Scalar(wd * lr),
        });
        cur = Object.fromEntries(PARAMS.map((p) => [p, r[`${p}_out`]]));
        moments = Object.fromEntries(PARAMS.flatMap((p) => [[`M${p}`, r[`M${p}_out`]], [`V${p}`, r[`V${p}_out`]]]));
      }
      ran = ep;
      opts.onEpoch?.();
      const err = await heldErr(cur);
      if (!Number.isFinite(err)) throw new MoefyError(`expert training: the error became ${err} at epoch ${ep}`);
      if (err < bestErr) {
        bestErr = err;
        best = cur;
        bestEpoch = ep;
      } else if (ep - bestEpoch >= patience) break;
    }
    return {
      weights: Object.fromEntries(PARAMS.map((p) => [p, new Float32Array(best[p].data as Float32Array)])) as unknown as FullFfnWeights,
      heldOutBefore: before, heldOutAfter: bestErr, bestEpoch, epochs: ran,
    };
  } finally {
    await trainSess.release();
    await evalSess.release();
  }
}
