// Expert repair: refit each FFN's second layer (W2, B2) so that the experts the routing plan keeps reproduce the
// dense FFN's output on the calibration tokens. With the plan's mask m (1 for the experts that run on a token) and
// h = act(x·W1 + b1), the MoE output is (h ⊙ m)·W2 + b2; it is linear in (W2, b2), so the fit is a ridge least
// squares in closed form:
//   min Σ_n ‖(h_n ⊙ m_n)·W + b − y_n‖² + λ Σ_j G_jj ‖W_j − W2_j‖²
// (y = the dense FFN output, G = the Gram matrix of the masked activations: the ridge pulls each neuron's row
// toward the original in proportion to how much that neuron is used, so λ does not depend on the layer's scale).
// Skipped-expert compensation (the op's skip_bias, a vector c_e per expert that a token adds when it skips expert e)
// is linear too: one more feature per expert, the indicator s_e = 1 − m_e, fitted jointly with W2 and b2 (the
// oracle experiment: the unconditional mean output of a skipped expert points the wrong way, the jointly fitted c_e
// gains), or alone on the residual of the experts as they are (W2, b2 kept: the dense FFN stays exact), ridge toward 0.
// The features and the cross terms come from onnxruntime-node in chunks, the Gram matrix is added by one
// ssyrk per chunk in the solver addon, all summed in float64; the normal equations are solved by a Cholesky
// factorisation (LAPACK, calib/linalg.ts). λ is chosen on a held-out split of the tokens (the last
// `heldOutFraction` of them: tokens are ordered by sample, so this holds out whole sequences), then the
// weights are refitted on every token with that λ.
import { MoefyError } from '../errors';
import { gramAdd, quadForm, solveSpd } from './linalg';
import type { Value } from '../ir/graph';
import { GraphBuilder, activationOp, f32 } from './ort-graph';
import { routeTokens, type ActivationKind as FfnActivation, type RoutingRule } from '../op';

/** An FFN in the expert-contiguous layout: expert e owns hidden neurons e·S … e·S+S−1 (S = H/E). */
export interface FfnWeights {
  W1: Float32Array; // [D, H]
  B1: Float32Array; // [H]
  W2: Float32Array; // [H, D]
  B2: Float32Array | null; // [D]
}

/** Which experts run on each calibration token under the chosen routers and thresholds. */
export interface RoutingMask {
  /** [N, E]: 1 where the expert runs. */
  mask: Uint8Array;
  E: number;
}

export interface RepairInputs {
  /** Captured FFN inputs [N, D]. */
  X: Float32Array;
  N: number;
  D: number;
  /**
   * The fit's target, the dense FFN's outputs on X: given [N, D], or computed chunk by chunk from `weights` with
   * the dense FFN's own activation (`{ denseActivation }`: no N×D array, and x·W1 computed once for both).
   */
  target: Float32Array | { denseActivation: FfnActivation };
  /** The experts' weights before the repair (the dense FFN's, permuted) and the activation they use. */
  weights: FfnWeights;
  activation: FfnActivation;
  routing: RoutingMask;
}

/** What the closed form fits: the experts' second layer (W2, B2), the skipped-expert vectors (skip_bias), or both jointly. */
export interface RepairFit {
  experts: boolean;
  skipBias: boolean;
}

export interface RepairOptions {
  /** Default: the experts only. */
  fit?: RepairFit;
  /** Ridge strengths (relative, see above), tried from the weakest up while the held-out error falls; default [1e-3, 1e-2, 0.1, 1]. */
  ridge?: number[];
  /** Share of tokens (the last ones) held out to choose the ridge; default 0.125. */
  heldOutFraction?: number;
  /** Tokens per ORT run; default about 64 MiB of intermediates. */
  chunk?: number;
  /** ORT intra-op threads (default: ORT's). */
  threads?: number;
}

export interface RepairResult {
  /** New W2 [H, D] and B2 [D] (the given ones, or zeros for none, when only skip_bias is fitted); W1 and B1 are unchanged. */
  W2: Float32Array;
  B2: Float32Array;
  /** [E, D] the vector each token adds for each expert it skips; null when not fitted. */
  skipBias: Float32Array | null;
  ridge: number;
  /** ‖MoE − dense‖ / ‖dense‖ on the held-out tokens, with the original and the refitted second layer, per ridge tried. */
  heldOut: { before: number; after: number; perRidge: { ridge: number; relErr: number }[] };
  /** The same on every token, after the final refit. */
  all: { before: number; after: number };
}

/**
 * Sufficient statistics of the least squares over the features f̃: F columns (masked activations, skip indicators or
 * both), augmented by a 1 for the bias when it is fitted.
 */
interface Moments {
  /** Features, and whether a bias column (last) follows them. */
  F: number;
  bias: boolean;
  /** [(F+bias)², ] Σ f̃ᵀf̃ with the bias row/column last; its upper triangle (i ≤ j) is what the solves read. */
  G: Float64Array;
  /** [(F+bias), D] Σ f̃ᵀy (y: the fit's target). */
  C: Float64Array;
  /** Σ ‖y‖². */
  yy: number;
  /** Σ ‖dense output‖²: what errors are relative to (the target itself, unless the target is a residual). */
  ref: number;
  n: number;
}

/** The FFN's two linears in a graph: x·W1 + b1 (before the activation) and h·W2 + b2. */
const fc1 = (b: GraphBuilder, x: Value, w: FfnWeights, D: number, H: number) => b.op('Add', [b.op('MatMul', [x, b.constF(w.W1, [D, H], 'W1')]), b.constF(w.B1, [H], 'B1')]);
const fc2 = (b: GraphBuilder, h: Value, w: FfnWeights, D: number, H: number) => b.op('Add', [b.op('MatMul', [h, b.constF(w.W2, [H, D], 'W2')]), b.constF(w.B2 ?? new Float32Array(D), [D], 'B2')]);

/** The expert mask M [n, E] widened to the neurons [n, H] (expert-contiguous). */
export const neuronMask = (b: GraphBuilder, M: Value, H: number, E: number) =>
  b.op('Reshape', [b.op('Expand', [b.op('Unsqueeze', [M, b.constI64([2], [1], 'axes')]), b.constI64([1, 1, H / E])]), b.constI64([0, H])]);

/**
 * The moments graph: features f = [h ⊙ m] (experts), [h ⊙ m, 1 − M] (both) or [1 − M] (skip_bias alone, whose target
 * is the residual y − ((h ⊙ m)·W2 + b2) of the experts as they are); the dense output y is an input, or with `dense`
 * the dense FFN's output on X (sharing x·W1 + b1).
 */
function buildMoments(D: number, H: number, E: number, w: FfnWeights, activation: FfnActivation, fit: RepairFit, dense?: FfnActivation): GraphBuilder {
  const b = new GraphBuilder('repair_moments');
  const X = b.input('X', ['n', D]);
  const M = b.input('M', ['n', E]);
  const z = fc1(b, X, w, D, H);
  const h = activationOp(b, z, activation);
  const Y = dense ? fc2(b, activationOp(b, z, dense), w, D, H) : b.input('Y', ['n', D]);
  const hm = b.op('Mul', [h, neuronMask(b, M, H, E)]);
  const skipped = () => b.op('Sub', [b.scalar(1, 'one'), M]);
  const f = !fit.skipBias ? hm : fit.experts ? b.op('Concat', [hm, skipped()], { axis: 1 }) : skipped();
  const target = fit.experts ? Y : b.op('Sub', [Y, fc2(b, hm, w, D, H)]);
  b.output(f, 'f'); // its Gram matrix is added in the solver addon (one ssyrk: half the products of a Gemm)
  b.output(b.op('ReduceSum', [f, b.constI64([0])], { keepdims: 0 }), 's');
  b.output(b.op('Gemm', [f, target], { transA: 1 }), 'C');
  b.output(b.op('ReduceSum', [target, b.constI64([0])], { keepdims: 0 }), 'ys');
  b.output(b.op('ReduceSumSquare', [target], { keepdims: 0 }), 'yy');
  if (!fit.experts) b.output(b.op('ReduceSumSquare', [Y], { keepdims: 0 }), 'ref');
  return b;
}

function emptyMoments(F: number, bias: boolean, D: number): Moments {
  const F1 = F + (bias ? 1 : 0);
  return { F, bias, G: new Float64Array(F1 * F1), C: new Float64Array(F1 * D), yy: 0, ref: 0, n: 0 };
}

/**
 * Adds one chunk's ORT outputs into the float64 moments. G holds its upper triangle only (i ≤ j, what the solver
 * addon reads; the bias row is filled too).
 */
function accumulate(m: Moments, r: Record<string, { data: unknown }>, D: number, n: number): void {
  const s = r.s.data as Float32Array, C = r.C.data as Float32Array, ys = r.ys.data as Float32Array;
  const F = m.F, F1 = F + (m.bias ? 1 : 0);
  gramAdd(m.G, r.f.data as Float32Array, n, F, F1);
  for (let i = 0; i < F; i++) {
    if (m.bias) {
      m.G[i * F1 + F] += s[i];
      m.G[F * F1 + i] += s[i];
    }
    for (let d = 0; d < D; d++) m.C[i * D + d] += C[i * D + d];
  }
  if (m.bias) {
    m.G[F * F1 + F] += n;
    for (let d = 0; d < D; d++) m.C[F * D + d] += ys[d];
  }
  const yy = (r.yy.data as Float32Array)[0];
  m.yy += yy;
  m.ref += r.ref ? (r.ref.data as Float32Array)[0] : yy;
  m.n += n;
}

function addMoments(a: Moments, b: Moments): Moments {
  return { F: a.F, bias: a.bias, G: a.G.map((v, i) => v + b.G[i]), C: a.C.map((v, i) => v + b.C[i]), yy: a.yy + b.yy, ref: a.ref + b.ref, n: a.n + b.n };
}

/** ‖f̃·W − y‖² from the moments: tr(WᵀGW) − 2 tr(WᵀC) + Σ‖y‖². W [(F+bias), D] float64. */
function residual(m: Moments, W: Float64Array, D: number): number {
  const F1 = m.F + (m.bias ? 1 : 0);
  let cross = 0;
  for (let i = 0; i < F1 * D; i++) cross += W[i] * m.C[i];
  return Math.max(0, quadForm(m.G, W, F1, D) - 2 * cross + m.yy);
}

/**
 * Ridge solution toward W0 [(F+bias), D] (the bias row gets a tiny ridge only, to keep the system definite). The
 * ridge of a feature is λ·(G_jj + a floor of 1e-6 of the mean G_jj of the first `scaleOf` features: the neurons, or
 * the indicators when they are fitted alone).
 */
function solveRidge(m: Moments, W0: Float64Array, D: number, ridge: number, scaleOf: number): Float64Array {
  const F = m.F, F1 = F + (m.bias ? 1 : 0);
  const A = Float64Array.from(m.G);
  const B = Float64Array.from(m.C);
  let meanDiag = 0;
  for (let j = 0; j < scaleOf; j++) meanDiag += m.G[j * F1 + j];
  meanDiag = meanDiag / scaleOf || 1;
  for (let j = 0; j < F1; j++) {
    // A neuron no token keeps (G_jj = 0) stays at its original row through the small floor.
    const r = j < F ? ridge * (m.G[j * F1 + j] + 1e-6 * meanDiag) : 1e-9 * Math.max(1, m.n);
    A[j * F1 + j] += r;
    for (let d = 0; d < D; d++) B[j * D + d] += r * W0[j * D + d];
  }
  solveSpd(A, B, F1, D, 'expert repair');
  return B;
}

/** The routing mask of a plan: the experts that run on each token at its threshold (the op's rule, src/op/routing.ts). */
export function routingMask(norms: Float32Array, N: number, E: number, rule: RoutingRule, thresholdOfToken: (n: number) => number): RoutingMask {
  if (norms.length !== N * E) throw new MoefyError(`routingMask: norms have ${norms.length} values, expected N·E = ${N}·${E}`);
  return { mask: routeTokens(norms, N, E, rule, thresholdOfToken).mask, E };
}

/** The dense FFN's outputs act(x·W1 + b1)·W2 + b2 [N, D], in onnxruntime-node. */
export async function ffnOutputs(X: Float32Array, N: number, D: number, w: FfnWeights, activation: FfnActivation, chunk = 4096, threads?: number): Promise<Float32Array> {
  const H = w.B1.length;
  if (X.length !== N * D || w.W1.length !== D * H || w.W2.length !== H * D) throw new MoefyError(`ffnOutputs: sizes do not match N=${N} D=${D} H=${H}`);
  const b = new GraphBuilder('ffn');
  const x = b.input('X', ['n', D]);
  b.output(fc2(b, activationOp(b, fc1(b, x, w, D, H), activation), w, D, H), 'Y');
  const sess = await b.session(threads ? { intraOpNumThreads: threads } : {});
  const out = new Float32Array(N * D);
  try {
    for (let s = 0; s < N; s += chunk) {
      const n = Math.min(chunk, N - s);
      const r = await sess.run({ X: f32(X.subarray(s * D, (s + n) * D), [n, D]) });
      out.set(r.Y.data as Float32Array, s * D);
    }
  } finally {
    await sess.release();
  }
  return out;
}

/**
 * Refits W2 and B2 of one FFN's experts, their skip_bias, or both (opts.fit) to the dense outputs under the routing
 * mask (see the file comment).
 */
export async function repairExperts(inp: RepairInputs, opts: RepairOptions = {}): Promise<RepairResult> {
  const { X, N, D, target, weights: w, routing } = inp;
  const H = w.B1.length, E = routing.E;
  if (!(N >= 2) || !Number.isInteger(N)) throw new MoefyError(`expert repair: needs at least 2 calibration tokens (got ${N})`);
  if (!(E >= 1) || H % E !== 0) throw new MoefyError(`expert repair: ${E} experts do not divide the hidden size ${H}`);
  const given = target instanceof Float32Array ? target : null;
  if (X.length !== N * D || (given && given.length !== N * D)) throw new MoefyError(`expert repair: X and the dense outputs must be [N, D] = [${N}, ${D}]`);
  if (w.W1.length !== D * H || w.W2.length !== H * D || (w.B2 && w.B2.length !== D)) throw new MoefyError(`expert repair: weights do not match D=${D}, H=${H}`);
  if (routing.mask.length !== N * E) throw new MoefyError(`expert repair: the routing mask has ${routing.mask.length} entries, expected N·E = ${N * E}`);
  const ridges = opts.ridge ?? [1e-3, 1e-2, 0.1, 1];
  if (ridges.length === 0 || ridges.some((r) => !(r >= 0))) throw new MoefyError('expert repair: ridge strengths must be ≥ 0');
  const hf = opts.heldOutFraction ?? 0.125;
  if (!(hf > 0 && hf < 1)) throw new MoefyError(`expert repair: heldOutFraction ${hf} is not in (0, 1)`);
  const nHeld = Math.max(1, Math.floor(N * hf));
  const nFit = N - nHeld;

  const fitWhat = opts.fit ?? { experts: true, skipBias: false };
  if (!fitWhat.experts && !fitWhat.skipBias) throw new Error('expert repair: nothing to fit');
  // Feature columns: the neurons [0, H) when the experts are fitted, then the experts' skip indicators.
  const F = (fitWhat.experts ? H : 0) + (fitWhat.skipBias ? E : 0);
  const bias = fitWhat.experts;
  const skipRow = fitWhat.experts ? H : 0;
  const dense = given ? undefined : (target as { denseActivation: FfnActivation }).denseActivation;
  const sess = await buildMoments(D, H, E, w, inp.activation, fitWhat, dense).session(opts.threads ? { intraOpNumThreads: opts.threads } : {});
  const chunk = Math.max(1, opts.chunk ?? Math.min(4096, Math.floor((64 << 20) / 4 / (3 * H + 2 * D + (fitWhat.skipBias ? E : 0)))));
  const fit = emptyMoments(F, bias, D), held = emptyMoments(F, bias, D);
  const mf = new Float32Array(chunk * E);
  try {
    // Chunks never straddle the split, so each lands in one set of moments.
    const run = async (a: number, b: number, into: Moments) => {
      for (let s = a; s < b; s += chunk) {
        const n = Math.min(chunk, b - s);
        for (let i = 0; i < n * E; i++) mf[i] = routing.mask[s * E + i];
        const feeds = { X: f32(X.subarray(s * D, (s + n) * D), [n, D]), M: f32(mf.subarray(0, n * E), [n, E]) };
        const r = await sess.run(given ? { ...feeds, Y: f32(given.subarray(s * D, (s + n) * D), [n, D]) } : feeds);
        accumulate(into, r as never, D, n);
      }
    };
    await run(0, nFit, fit);
    await run(nFit, N, held);
  } finally {
    await sess.release();
  }
  // The starting point, which the ridge pulls toward: the experts' W2 and B2, and no compensation.
  const F1 = F + (bias ? 1 : 0);
  const W0 = new Float64Array(F1 * D);
  if (fitWhat.experts) {
    for (let i = 0; i < H * D; i++) W0[i] = w.W2[i];
    if (w.B2) for (let d = 0; d < D; d++) W0[F * D + d] = w.B2[d];
  }
  const rel = (m: Moments, W: Float64Array) => Math.sqrt(residual(m, W, D) / Math.max(m.ref, 1e-30));
  const solve = (m: Moments, ridge: number) => solveRidge(m, W0, D, ridge, fitWhat.experts ? H : E);
  // From the weakest ridge up while the held-out error falls (it is U-shaped in the ridge; flat below 1e-3 on the
  // trained GELU model, where 1e-3 won 3 layers of 4): two solves where four were, each a Cholesky of the
  // (H+1)² system and a residual (~1.5 s per layer at d16 size).
  const order = [...ridges].sort((a, b) => a - b);
  const perRidge: { ridge: number; relErr: number }[] = [];
  for (const ridge of order) {
    perRidge.push({ ridge, relErr: rel(held, solve(fit, ridge)) });
    const n = perRidge.length;
    if (n >= 2 && perRidge[n - 1].relErr >= perRidge[n - 2].relErr) break;
  }
  const best = perRidge.reduce((a, b) => (b.relErr < a.relErr ? b : a));
  const all = addMoments(fit, held);
  const W = solve(all, best.ridge);
  return {
    W2: fitWhat.experts ? Float32Array.from(W.subarray(0, H * D)) : Float32Array.from(w.W2),
    B2: fitWhat.experts ? Float32Array.from(W.subarray(F * D, F1 * D)) : Float32Array.from(w.B2 ?? new Float32Array(D)),
    skipBias: fitWhat.skipBias ? Float32Array.from(W.subarray(skipRow * D, (skipRow + E) * D)) : null,
    ridge: best.ridge,
    heldOut: { before: rel(held, W0), after: best.relErr, perRidge },
    all: { before: rel(all, W0), after: rel(all, W) },
  };
}
