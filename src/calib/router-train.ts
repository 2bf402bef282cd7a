// Router training: a 2-layer MLP per MoE layer, x [D] → MatMul W1 [D,width] → GELU (exact erf) → MatMul W2 [width,E]
// → Abs, no biases (DMoE-VAR), regressing the true L2 norm of each expert's output with MSE. The forward is the
// router's graph form (analysis/router-graph.ts), the one the converted model holds.
//
// One training step (forward, hand-written backward of MatMul/Gelu/Abs/MSE, global-norm gradient clipping, Adam
// update of W1, W2 and their moments) is the body of an ONNX Loop: one onnxruntime-node run per epoch, the batches
// gathered by index inside ORT, the parameters and Adam moments carried by the Loop (one run per step cost 32% more
// CPU at d16 size in per-step copies between JS and ORT).
//
// Optimiser: Adam (PyTorch semantics, bias-corrected, no weight decay), betas (0.9, 0.95) by default (DMoE-VAR's
// AdamW with wd 0; measured: β2 0.999 needed twice the epochs for the same held-out fit), eps 1e-8, lr 2.5e-3 with a
// cosine decay to 10% (DMoE-VAR had no schedule and a far smaller lr). Init: kaiming-uniform (nonlinearity 'relu',
// bound sqrt(6/fan_in)) as DMoE-VAR, from a seeded PRNG. Training runs on inputs and targets divided by their global
// RMS (so lr does not depend on the layer's norm scale); the scales are folded back into W1 (÷ input scale) and W2
// (× target scale) exactly, so the returned weights take raw ffn_in and predict raw norms.
import * as ort from 'onnxruntime-node';
import { MoefyError } from '../errors';
import { DataType } from '../onnx/schema';
import { routerOps } from '../analysis/router-graph';
import { GRAPH_OPSET, GraphBuilder, f32, f32Scalar } from './ort-graph';
import { deriveSeed, permutation, rng } from './random';

export interface TrainRouterProgress {
  epoch: number;
  epochs: number;
  step: number;
  /** Mean training loss (MSE on normalised targets) over the epoch. */
  loss: number;
}

export interface TrainRouterOptions {
  /** Hidden width (DMoE-VAR: 128). */
  width?: number;
  /** Default 10. */
  epochs?: number;
  /** Default 256. */
  batchSize?: number;
  /** Peak learning rate (default 2.5e-3). */
  lr?: number;
  /** Adam betas (default [0.9, 0.95], as DMoE-VAR's AdamW; 0.999 needed twice the epochs for the same fit). */
  betas?: [number, number];
  /** 'cosine' (default: to 10% of lr at the end) or 'constant'. */
  schedule?: 'cosine' | 'constant';
  /** Cosine schedule: the last step's lr as a fraction of lr (default 0.1). */
  finalLr?: number;
  /** Linear warmup over this fraction of the steps (default 0). */
  warmup?: number;
  /** Global gradient-norm clip on the normalised problem (default: none). */
  clipGradNorm?: number;
  seed: number;
  /** Share of tokens held out for evaluation (seeded split; default 0.1). */
  heldOutFraction?: number;
  /**
   * Early stopping: after each epoch the held-out MSE is measured; training stops after this many epochs without a
   * relative gain of minImprovement, and the best epoch's weights are returned (0 = off, the default).
   */
  patience?: number;
  /** Default 0. */
  minImprovement?: number;
  /** ORT intra-op threads of the training session (default: ORT's). */
  threads?: number;
  /** Thresholds at which the oracle-expert recall is reported (default [0.1, 0.2, 0.3]). */
  recallThresholds?: number[];
  onProgress?: (p: TrainRouterProgress) => void;
}

export interface RecallPoint {
  threshold: number;
  /** Of the (token, expert) pairs with true ≥ t·max_true, the share with pred ≥ t·max_pred. */
  recall: number;
  /** Mean share of experts the oracle runs / the router runs at this threshold. */
  trueActive: number;
  predActive: number;
}

export interface TrainRouterResult {
  /** [D, width] row-major; takes raw ffn_in. */
  W1: Float32Array;
  /** [width, E] row-major; predicts raw norms (after Abs). */
  W2: Float32Array;
  width: number;
  /** 1 − SSE/SST over all held-out targets, SST around their global mean. */
  heldOutR2: number;
  /** 1 − SSE/Σ_e SST_e with per-expert means (sklearn's variance-weighted R²). */
  heldOutR2PerExpert: number;
  heldOutMse: number;
  trainMse: number;
  /** Recall at the first of recallThresholds (default 0.1). */
  recall: number;
  recallAt: RecallPoint[];
  /** Epochs run (fewer than asked when early stopping ended training). */
  epochs: number;
  /** Epoch whose weights were returned. */
  bestEpoch: number;
  batchSize: number;
  steps: number;
  trainTokens: number;
  heldOutTokens: number;
  /** Final epoch's mean training loss on the normalised problem. */
  finalLoss: number;
  seconds: number;
}

const SQRT1_2 = Math.SQRT1_2;
const INV_SQRT_2PI = 1 / Math.sqrt(2 * Math.PI);

type V = ReturnType<GraphBuilder['input']>;

/** The values one training step reads. */
export interface StepValues {
  X: V; T: V; W1: V; W2: V; M1: V; V1: V; M2: V; V2: V;
  /** lr / (1 − β1^t) */
  c1: V;
  /** 1 / sqrt(1 − β2^t) */
  c2: V;
  /** 2 / (B·E): d mean((Y−T)²) / dY */
  gscale: V;
  clip: V;
}

/** One training step's ops (forward, backward, clip, Adam) on b; returns the loss, updated tensors and raw gradients. */
export function stepOps(b: GraphBuilder, v: StepValues, betas: [number, number], eps: number): { loss: V; W1: V; M1: V; V1: V; W2: V; M2: V; V2: V; gW1: V; gW2: V } {
  const { X, T, W1, W2, M1, V1, M2, V2, c1, c2, gscale, clip } = v;
  // Forward: the router's own graph form (as the converted model holds it, without the square).
  const { pre: A, hidden: G, out: P, norms: Y } = routerOps(b.graph, X, W1, W2, false, { opset: GRAPH_OPSET, name: b.scoped('router') });
  const R = b.op('Sub', [Y, T]);
  const loss = b.op('ReduceMean', [b.op('Mul', [R, R])], { keepdims: 0 });
  // Backward.
  const dP = b.op('Mul', [b.op('Mul', [R, gscale]), b.op('Sign', [P])]);
  const gW2raw = b.op('Gemm', [G, dP], { transA: 1 }); // Gᵀ·dP
  const dG = b.op('Gemm', [dP, W2], { transB: 1 }); // dP·W2ᵀ
  const Phi = b.op('Mul', [b.op('Add', [b.op('Erf', [b.op('Mul', [A, b.scalar(SQRT1_2)])]), b.scalar(1)]), b.scalar(0.5)]);
  const phi = b.op('Mul', [b.op('Exp', [b.op('Mul', [b.op('Mul', [A, A]), b.scalar(-0.5)])]), b.scalar(INV_SQRT_2PI)]);
  const dA = b.op('Mul', [dG, b.op('Add', [Phi, b.op('Mul', [A, phi])])]);
  const gW1raw = b.op('Gemm', [X, dA], { transA: 1 }); // Xᵀ·dA
  // Global-norm clip: g · min(1, clip / (‖g‖ + 1e-6)).
  const norm = b.op('Sqrt', [b.op('Add', [b.op('ReduceSumSquare', [gW1raw], { keepdims: 0 }), b.op('ReduceSumSquare', [gW2raw], { keepdims: 0 })])]);
  const factor = b.op('Min', [b.scalar(1), b.op('Div', [clip, b.op('Add', [norm, b.scalar(1e-6)])])]);
  const gW1 = b.op('Mul', [gW1raw, factor]);
  const gW2 = b.op('Mul', [gW2raw, factor]);
  // Adam.
  const [beta1, beta2] = betas;
  const adam = (W: V, M: V, Vv: V, g: V): [V, V, V] => {
    const m = b.op('Add', [b.op('Mul', [M, b.scalar(beta1)]), b.op('Mul', [g, b.scalar(1 - beta1)])]);
    const vv = b.op('Add', [b.op('Mul', [Vv, b.scalar(beta2)]), b.op('Mul', [b.op('Mul', [g, g]), b.scalar(1 - beta2)])]);
    const denom = b.op('Add', [b.op('Mul', [b.op('Sqrt', [vv]), c2]), b.scalar(eps)]);
    return [b.op('Sub', [W, b.op('Mul', [b.op('Div', [m, denom]), c1])]), m, vv];
  };
  const [w1, m1, v1] = adam(W1, M1, V1, gW1);
  const [w2, m2, v2] = adam(W2, M2, V2, gW2);
  return { loss, W1: w1, M1: m1, V1: v1, W2: w2, M2: m2, V2: v2, gW1: gW1raw, gW2: gW2raw };
}

/**
 * K training steps in one run: an ONNX Loop over steps whose body gathers its mini-batch rows of the (normalised)
 * X and T by index and runs the step, carrying the weights and Adam moments inside ORT (no per-step copies between
 * JS and ORT). Step k uses rows order[starts[k] … ends[k]) and the per-step scalars c1[k], c2[k], gscale[k].
 */
export function buildTrainSteps(D: number, E: number, width: number, betas: [number, number], eps = 1e-8): GraphBuilder {
  const b = new GraphBuilder('router_train_steps');
  const X = b.input('X', ['N', D]), T = b.input('T', ['N', E]);
  const order = b.input('order', ['R'], DataType.INT64);
  const starts = b.input('starts', ['K'], DataType.INT64), ends = b.input('ends', ['K'], DataType.INT64);
  const c1s = b.input('c1', ['K']), c2s = b.input('c2', ['K']), gs = b.input('gscale', ['K']);
  const clip = b.input('clip', []);
  const K = b.input('K', [], DataType.INT64);
  const init = [b.input('W1', [D, width]), b.input('M1', [D, width]), b.input('V1', [D, width]), b.input('W2', [width, E]), b.input('M2', [width, E]), b.input('V2', [width, E])];
  const body = b.body('step');
  const i = body.input('i', [], DataType.INT64);
  const cond = body.input('cond', [], DataType.BOOL);
  const [W1, M1, V1, W2, M2, V2] = ['W1', 'M1', 'V1', 'W2', 'M2', 'V2'].map((n, k) => body.input(`${n}_in`, k < 3 ? [D, width] : [width, E]));
  const at = (v: V) => body.op('Gather', [body.outer(v), i], { axis: 0 });
  const one = (v: V) => body.op('Unsqueeze', [v, body.constI64([0], [1], 'axes')]);
  const idx = body.op('Slice', [body.outer(order), one(at(starts)), one(at(ends))]);
  const r = stepOps(body, {
    X: body.op('Gather', [body.outer(X), idx], { axis: 0 }), T: body.op('Gather', [body.outer(T), idx], { axis: 0 }),
    W1, W2, M1, V1, M2, V2, c1: at(c1s), c2: at(c2s), gscale: at(gs), clip: body.outer(clip),
  }, betas, eps);
  body.output(body.op('Identity', [cond]), 'cond_out', DataType.BOOL);
  for (const [n, v] of [['W1', r.W1], ['M1', r.M1], ['V1', r.V1], ['W2', r.W2], ['M2', r.M2], ['V2', r.V2], ['loss', r.loss]] as const) body.output(v, `step/${n}_out`);
  const outs = b.loop(K, null, init, body, 1, ['W1_out', 'M1_out', 'V1_out', 'W2_out', 'M2_out', 'V2_out', 'losses']);
  for (const o of outs) b.output(o);
  return b;
}

function buildPredict(D: number, E: number, width: number): GraphBuilder {
  const b = new GraphBuilder('router_predict');
  const X = b.input('X', ['n', D]);
  const W1 = b.input('W1', [D, width]);
  const W2 = b.input('W2', [width, E]);
  b.output(routerOps(b.graph, X, W1, W2, false, { opset: GRAPH_OPSET, name: 'router' }).norms, 'P');
  return b;
}

/** Router predictions [N, E] = |GELU(X·W1)·W2| in onnxruntime-node. */
export async function predictNorms(X: Float32Array, N: number, D: number, W1: Float32Array, W2: Float32Array, E: number, width: number, threads?: number): Promise<Float32Array> {
  if (X.length !== N * D || W1.length !== D * width || W2.length !== width * E) throw new MoefyError(`predictNorms: sizes do not match N=${N} D=${D} E=${E} width=${width}`);
  const sess = await buildPredict(D, E, width).session(threads ? { intraOpNumThreads: threads } : {});
  try {
    return await predictWith(sess, X, N, D, W1, W2, E, width);
  } finally {
    await sess.release();
  }
}

async function predictWith(sess: ort.InferenceSession, X: Float32Array, N: number, D: number, W1: Float32Array, W2: Float32Array, E: number, width: number): Promise<Float32Array> {
  const out = new Float32Array(N * E);
  const w1 = f32(W1, [D, width]), w2 = f32(W2, [width, E]);
  const chunk = 4096;
  for (let s = 0; s < N; s += chunk) {
    const n = Math.min(chunk, N - s);
    const r = await sess.run({ X: f32(X.subarray(s * D, (s + n) * D), [n, D]), W1: w1, W2: w2 });
    out.set(r.P.data as Float32Array, s * E);
  }
  return out;
}

/** Kaiming-uniform (nonlinearity 'relu'): U(−b, b), b = sqrt(6 / fanIn), seeded. */
export function kaimingUniform(n: number, fanIn: number, r: () => number): Float32Array {
  const bound = Math.sqrt(6 / fanIn);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * bound;
  return a;
}

/** Regression and selection quality of predictions against true norms, both [N, E]. */
export function routerMetrics(pred: Float32Array, truth: Float32Array, N: number, E: number, thresholds: number[] = [0.1, 0.2, 0.3]): { mse: number; r2: number; r2PerExpert: number; recallAt: RecallPoint[] } {
  let sse = 0, sum = 0;
  const colSum = new Float64Array(E);
  for (let i = 0; i < N * E; i++) {
    const d = pred[i] - truth[i];
    sse += d * d;
    sum += truth[i];
    colSum[i % E] += truth[i];
  }
  const mean = sum / (N * E);
  let sst = 0, sstCol = 0;
  for (let i = 0; i < N * E; i++) {
    sst += (truth[i] - mean) ** 2;
    sstCol += (truth[i] - colSum[i % E] / N) ** 2;
  }
  const recallAt: RecallPoint[] = thresholds.map((t) => {
    let pos = 0, hit = 0, predAct = 0;
    for (let n = 0; n < N; n++) {
      let mt = 0, mp = 0;
      for (let e = 0; e < E; e++) {
        mt = Math.max(mt, truth[n * E + e]);
        mp = Math.max(mp, pred[n * E + e]);
      }
      for (let e = 0; e < E; e++) {
        const onT = truth[n * E + e] >= t * mt, onP = pred[n * E + e] >= t * mp;
        if (onT) pos++;
        if (onT && onP) hit++;
        if (onP) predAct++;
      }
    }
    return { threshold: t, recall: pos ? hit / pos : NaN, trueActive: pos / (N * E), predActive: predAct / (N * E) };
  });
  return { mse: N ? sse / (N * E) : NaN, r2: sst > 0 ? 1 - sse / sst : NaN, r2PerExpert: sstCol > 0 ? 1 - sse / sstCol : NaN, recallAt };
}

/**
 * Trains one router. X [N, D] = ffn_in of calibration tokens, targets [N, E] = true expert output norms
 * (computeExpertNorms). Deterministic for a given seed (given the same ORT build and thread count).
 */
export async function trainRouter(X: Float32Array, targets: Float32Array, N: number, D: number, E: number, opts: TrainRouterOptions): Promise<TrainRouterResult> {
  const t0 = performance.now();
  const width = opts.width ?? 128, epochs = opts.epochs ?? 10, batchSize = opts.batchSize ?? 256, lr = opts.lr ?? 2.5e-3;
  const betas = opts.betas ?? [0.9, 0.95];
  const heldOutFraction = opts.heldOutFraction ?? 0.1;
  const thresholds = opts.recallThresholds ?? [0.1, 0.2, 0.3];
  if (!Number.isInteger(N) || !Number.isInteger(D) || !Number.isInteger(E) || N < 2 || D < 1 || E < 1) throw new MoefyError(`trainRouter: bad sizes N=${N} D=${D} E=${E}`);
  if (X.length !== N * D) throw new MoefyError(`trainRouter: X has ${X.length} values, expected N·D = ${N * D}`);
  if (targets.length !== N * E) throw new MoefyError(`trainRouter: targets have ${targets.length} values, expected N·E = ${N * E}`);
  if (!(heldOutFraction >= 0 && heldOutFraction < 1)) throw new MoefyError(`trainRouter: heldOutFraction ${heldOutFraction} is not in [0, 1)`);
  if (!(width >= 1 && epochs >= 0 && batchSize >= 1 && lr > 0)) throw new MoefyError('trainRouter: width, epochs, batchSize and lr must be positive');
  if (!Number.isFinite(opts.seed)) throw new MoefyError('trainRouter: a numeric seed is required');
  for (const t of thresholds) if (!(t >= 0 && t <= 1)) throw new MoefyError(`trainRouter: recall threshold ${t} is not in [0, 1]`);

  // Seeded split.
  const perm = permutation(N, rng(deriveSeed(opts.seed, 1)));
  const nHeld = heldOutFraction > 0 ? Math.min(N - 1, Math.max(1, Math.round(N * heldOutFraction))) : 0;
  const trainIdx = perm.subarray(0, N - nHeld);
  const heldIdx = perm.subarray(N - nHeld);
  const nTrain = trainIdx.length;

  // Global scales (train split only).
  let sx = 0, st = 0;
  for (const i of trainIdx) {
    for (let d = 0; d < D; d++) sx += X[i * D + d] ** 2;
    for (let e = 0; e < E; e++) st += targets[i * E + e] ** 2;
  }
  const xScale = Math.sqrt(sx / (nTrain * D)) || 1;
  const tScale = Math.sqrt(st / (nTrain * E)) || 1;

  const initR = rng(deriveSeed(opts.seed, 2));
  let W1: ort.Tensor = f32(kaimingUniform(D * width, D, initR), [D, width]);
  let W2: ort.Tensor = f32(kaimingUniform(width * E, width, initR), [width, E]);
  let M1: ort.Tensor = f32(new Float32Array(D * width), [D, width]);
  let V1: ort.Tensor = f32(new Float32Array(D * width), [D, width]);
  let M2: ort.Tensor = f32(new Float32Array(width * E), [width, E]);
  let V2: ort.Tensor = f32(new Float32Array(width * E), [width, E]);
  const clip = f32Scalar(opts.clipGradNorm ?? 3e38);

  const stepsPerEpoch = Math.ceil(nTrain / batchSize);
  const totalSteps = stepsPerEpoch * epochs;
  const shuffleR = rng(deriveSeed(opts.seed, 3));
  const invX = 1 / xScale, invT = 1 / tScale;
  // The normalised problem, rows in split order: train rows 0…nTrain−1, then the held-out rows.
  const Xn = new Float32Array(N * D), Tn = new Float32Array(N * E);
  perm.forEach((i, j) => {
    for (let d = 0; d < D; d++) Xn[j * D + d] = X[i * D + d] * invX;
    for (let e = 0; e < E; e++) Tn[j * E + e] = targets[i * E + e] * invT;
  });
  const xTrain = f32(Xn.subarray(0, nTrain * D), [nTrain, D]), tTrain = f32(Tn.subarray(0, nTrain * E), [nTrain, E]);
  const patience = opts.patience ?? 0;
  const floor = opts.finalLr ?? 0.1;
  const warmupSteps = Math.round((opts.warmup ?? 0) * totalSteps);
  const sessOpts = opts.threads ? { intraOpNumThreads: opts.threads } : {};
  const sess = await buildTrainSteps(D, E, width, betas).session(sessOpts);
  const evalSess = patience > 0 && nHeld > 0 ? await buildPredict(D, E, width).session(sessOpts) : null;
  let step = 0, finalLoss = NaN, epochsRun = 0, bestEpoch = 0, best = Infinity;
  let bestW: [Float32Array, Float32Array] | null = null;
  try {
    for (let ep = 0; ep < epochs; ep++) {
      const order = permutation(nTrain, shuffleR);
      const starts = new BigInt64Array(stepsPerEpoch), ends = new BigInt64Array(stepsPerEpoch);
      const c1 = new Float32Array(stepsPerEpoch), c2 = new Float32Array(stepsPerEpoch), gs = new Float32Array(stepsPerEpoch);
      for (let k = 0; k < stepsPerEpoch; k++) {
        const s = k * batchSize, B = Math.min(batchSize, nTrain - s);
        step++;
        const cos = 0.5 * (1 + Math.cos((Math.PI * (step - 1)) / Math.max(1, totalSteps - 1)));
        const warm = warmupSteps > 0 ? Math.min(1, step / warmupSteps) : 1;
        const lrNow = warm * (opts.schedule === 'constant' ? lr : lr * (floor + (1 - floor) * cos));
        starts[k] = BigInt(s);
        ends[k] = BigInt(s + B);
        c1[k] = lrNow / (1 - betas[0] ** step);
        c2[k] = 1 / Math.sqrt(1 - betas[1] ** step);
        gs[k] = 2 / (B * E);
      }
      const r = await sess.run({
        X: xTrain, T: tTrain, order: new ort.Tensor('int64', BigInt64Array.from(order, (v) => BigInt(v)), [nTrain]),
        starts: new ort.Tensor('int64', starts, [stepsPerEpoch]), ends: new ort.Tensor('int64', ends, [stepsPerEpoch]),
        c1: f32(c1, [stepsPerEpoch]), c2: f32(c2, [stepsPerEpoch]), gscale: f32(gs, [stepsPerEpoch]), clip,
        K: new ort.Tensor('int64', BigInt64Array.of(BigInt(stepsPerEpoch)), []),
        W1, M1, V1, W2, M2, V2,
      });
      W1 = r.W1_out; W2 = r.W2_out; M1 = r.M1_out; V1 = r.V1_out; M2 = r.M2_out; V2 = r.V2_out;
      const losses = r.losses.data as Float32Array;
      let lossSum = 0;
      for (let k = 0; k < stepsPerEpoch; k++) {
        const l = losses[k];
        if (!Number.isFinite(l)) throw new MoefyError(`trainRouter: loss became ${l} at step ${step - stepsPerEpoch + k + 1} (lr too high?)`);
        lossSum += l * Math.min(batchSize, nTrain - k * batchSize);
      }
      finalLoss = lossSum / Math.max(1, nTrain);
      epochsRun = ep + 1;
      opts.onProgress?.({ epoch: ep + 1, epochs, step, loss: finalLoss });
      if (evalSess) {
        // Early stopping on the held-out split: keep the best weights, stop after `patience` epochs without a gain.
        const p = await predictWith(evalSess, Xn.subarray(nTrain * D), nHeld, D, W1.data as Float32Array, W2.data as Float32Array, E, width);
        const ho = Tn.subarray(nTrain * E);
        let sse = 0;
        for (let q = 0; q < p.length; q++) sse += (p[q] - ho[q]) ** 2;
        if (sse < best * (1 - (opts.minImprovement ?? 0))) {
          best = sse;
          bestEpoch = ep + 1;
          bestW = [Float32Array.from(W1.data as Float32Array), Float32Array.from(W2.data as Float32Array)];
        } else if (ep + 1 - bestEpoch >= patience) break;
      }
    }
  } finally {
    await sess.release();
    if (evalSess) await evalSess.release();
  }
  if (bestW) {
    W1 = f32(bestW[0], [D, width]);
    W2 = f32(bestW[1], [width, E]);
  } else bestEpoch = epochsRun;

  // Fold the normalisation back into the weights.
  const w1 = Float32Array.from(W1.data as Float32Array, (v) => v * invX);
  const w2 = Float32Array.from(W2.data as Float32Array, (v) => v * tScale);

  const pred = await buildPredict(D, E, width).session(sessOpts);
  let heldOutR2 = NaN, heldOutR2PerExpert = NaN, heldOutMse = NaN, trainMse = NaN;
  let recallAt: RecallPoint[] = thresholds.map((t) => ({ threshold: t, recall: NaN, trueActive: NaN, predActive: NaN }));
  try {
    const gather = (idx: Int32Array) => {
      const x = new Float32Array(idx.length * D), t = new Float32Array(idx.length * E);
      idx.forEach((i, j) => {
        x.set(X.subarray(i * D, i * D + D), j * D);
        t.set(targets.subarray(i * E, i * E + E), j * E);
      });
      return { x, t };
    };
    const tr = gather(trainIdx);
    trainMse = routerMetrics(await predictWith(pred, tr.x, nTrain, D, w1, w2, E, width), tr.t, nTrain, E, []).mse;
    if (nHeld > 0) {
      const ho = gather(heldIdx);
      const m = routerMetrics(await predictWith(pred, ho.x, nHeld, D, w1, w2, E, width), ho.t, nHeld, E, thresholds);
      heldOutR2 = m.r2;
      heldOutR2PerExpert = m.r2PerExpert;
      heldOutMse = m.mse;
      recallAt = m.recallAt;
    }
  } finally {
    await pred.release();
  }
  return {
    W1: w1, W2: w2, width, heldOutR2, heldOutR2PerExpert, heldOutMse, trainMse,
    recall: recallAt[0]?.recall ?? NaN, recallAt, epochs: epochsRun, bestEpoch, batchSize, steps: step,
    trainTokens: nTrain, heldOutTokens: nHeld, finalLoss, seconds: (performance.now() - t0) / 1000,
  };
}
