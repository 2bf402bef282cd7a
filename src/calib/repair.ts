// Expert repair: refit each FFN's second layer (W2, B2) so that the experts the routing plan keeps reproduce the
// dense FFN's output on the calibration tokens. With the plan's mask m (1 for the experts that run on a token) and
// h = act(x·W1 + b1), the MoE output is (h ⊙ m)·W2 + b2; it is linear in (W2, b2), so the fit is a ridge least
// squares in closed form:
//   min Σ_n ‖(h_n ⊙ m_n)·W + b − y_n‖² + λ Σ_j G_jj ‖W_j − W2_j‖²
// (y = the dense FFN output, G = the Gram matrix of the masked activations: the ridge pulls each neuron's row
// toward the original in proportion to how much that neuron is used, so λ does not depend on the layer's scale).
// The masked activations and the cross terms come from onnxruntime-node in chunks, the Gram matrix is added by one
// ssyrk per chunk in the solver addon, all summed in float64; the normal equations are solved by a Cholesky
// factorisation (LAPACK, calib/linalg.ts). λ is chosen on a held-out split of the tokens (the last
// `heldOutFraction` of them: tokens are ordered by sample, so this holds out whole sequences), then the
// weights are refitted on every token with that λ.
import { MoefyError } from '../errors';
import { gramAdd, quadForm, solveSpd } from './linalg';
import type { Value } from '../ir/graph';
import { GraphBuilder, activationOp, f32 } from './ort-graph';
import { DEFAULT_ROUTING, routeTokens, type ActivationKind as FfnActivation } from '../op';

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

export interface RepairOptions {
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
  /** New W2 [H, D] and B2 [D]; W1 and B1 are unchanged. */
  W2: Float32Array;
  B2: Float32Array;
  ridge: number;
  /** ‖MoE − dense‖ / ‖dense‖ on the held-out tokens, with the original and the refitted second layer, per ridge tried. */
  heldOut: { before: number; after: number; perRidge: { ridge: number; relErr: number }[] };
  /** The same on every token, after the final refit. */
  all: { before: number; after: number };
}

/** Sufficient statistics of the least squares: over the masked activations h̃ (augmented by a 1 for the bias). */
interface Moments {
  /** [(H+1)², ] Σ h̃ᵀh̃ with the bias row/column last; its upper triangle (i ≤ j) is what the solves read. */
  G: Float64Array;
  /** [(H+1), D] Σ h̃ᵀy. */
  C: Float64Array;
  /** Σ ‖y‖². */
  yy: number;
  n: number;
}

/** The FFN's two linears in a graph: x·W1 + b1 (before the activation) and h·W2 + b2. */
const fc1 = (b: GraphBuilder, x: Value, w: FfnWeights, D: number, H: number) => b.op('Add', [b.op('MatMul', [x, b.constF(w.W1, [D, H], 'W1')]), b.constF(w.B1, [H], 'B1')]);
const fc2 = (b: GraphBuilder, h: Value, w: FfnWeights, D: number, H: number) => b.op('Add', [b.op('MatMul', [h, b.constF(w.W2, [H, D], 'W2')]), b.constF(w.B2 ?? new Float32Array(D), [D], 'B2')]);

/** The moments graph; the target Y is an input, or with `dense` the dense FFN's output on X (sharing x·W1 + b1). */
function buildMoments(D: number, H: number, E: number, w: FfnWeights, activation: FfnActivation, dense?: FfnActivation): GraphBuilder {
  const S = H / E;
  const b = new GraphBuilder('repair_moments');
  const X = b.input('X', ['n', D]);
  const M = b.input('M', ['n', E]);
  const z = fc1(b, X, w, D, H);
  const h = activationOp(b, z, activation);
  const Y = dense ? fc2(b, activationOp(b, z, dense), w, D, H) : b.input('Y', ['n', D]);
  // The expert mask [n, E] widened to the neurons [n, H] (expert-contiguous).
  const m = b.op('Reshape', [b.op('Expand', [b.op('Unsqueeze', [M, b.constI64([2], [1], 'axes')]), b.constI64([1, 1, S])]), b.constI64([0, H])]);
  const hm = b.op('Mul', [h, m]);
  b.output(hm, 'hm'); // its Gram matrix is added in the solver addon (one ssyrk: half the products of a Gemm)
  b.output(b.op('ReduceSum', [hm, b.constI64([0])], { keepdims: 0 }), 's');
  b.output(b.op('Gemm', [hm, Y], { transA: 1 }), 'C');
  b.output(b.op('ReduceSum', [Y, b.constI64([0])], { keepdims: 0 }), 'ys');
  b.output(b.op('ReduceSumSquare', [Y], { keepdims: 0 }), 'yy');
  return b;
}

function emptyMoments(H: number, D: number): Moments {
  return { G: new Float64Array((H + 1) * (H + 1)), C: new Float64Array((H + 1) * D), yy: 0, n: 0 };
}

/**
 * Adds one chunk's ORT outputs into the float64 moments. G holds its upper triangle only (i ≤ j, what the solver
 * addon reads; the bias row is filled too).
 */
function accumulate(m: Moments, r: Record<string, { data: unknown }>, H: number, D: number, n: number): void {
  const s = r.s.data as Float32Array, C = r.C.data as Float32Array, ys = r.ys.data as Float32Array;
  const H1 = H + 1;
  gramAdd(m.G, r.hm.data as Float32Array, n, H, H1);
  for (let i = 0; i < H; i++) {
    m.G[i * H1 + H] += s[i];
    m.G[H * H1 + i] += s[i];
    for (let d = 0; d < D; d++) m.C[i * D + d] += C[i * D + d];
  }
  m.G[H * H1 + H] += n;
  for (let d = 0; d < D; d++) m.C[H * D + d] += ys[d];
  m.yy += (r.yy.data as Float32Array)[0];
  m.n += n;
}

function addMoments(a: Moments, b: Moments): Moments {
  return { G: a.G.map((v, i) => v + b.G[i]), C: a.C.map((v, i) => v + b.C[i]), yy: a.yy + b.yy, n: a.n + b.n };
}

/** ‖h̃·W − y‖² from the moments: tr(WᵀGW) − 2 tr(WᵀC) + Σ‖y‖². W [(H+1), D] float64. */
function residual(m: Moments, W: Float64Array, H1: number, D: number): number {
  let cross = 0;
  for (let i = 0; i < H1 * D; i++) cross += W[i] * m.C[i];
  return Math.max(0, quadForm(m.G, W, H1, D) - 2 * cross + m.yy);
}

/** Ridge solution toward W0 [(H+1), D] (the bias row gets a tiny ridge only, to keep the system definite). */
function solveRidge(m: Moments, W0: Float64Array, H: number, D: number, ridge: number): Float64Array {
  const H1 = H + 1;
  const A = Float64Array.from(m.G);
  const B = Float64Array.from(m.C);
  let meanDiag = 0;
  for (let j = 0; j < H; j++) meanDiag += m.G[j * H1 + j];
  meanDiag = meanDiag / H || 1;
  for (let j = 0; j < H1; j++) {
    // A neuron no token keeps (G_jj = 0) stays at its original row through the small floor.
    const r = j < H ? ridge * (m.G[j * H1 + j] + 1e-6 * meanDiag) : 1e-9 * Math.max(1, m.n);
    A[j * H1 + j] += r;
    for (let d = 0; d < D; d++) B[j * D + d] += r * W0[j * D + d];
  }
  solveSpd(A, B, H1, D, 'expert repair');
  return B;
}

/** The routing mask of a plan: the experts that run on each token at its threshold (the op's rule, src/op/routing.ts). */
export function routingMask(norms: Float32Array, N: number, E: number, thresholdOfToken: (n: number) => number): RoutingMask {
  if (norms.length !== N * E) throw new MoefyError(`routingMask: norms have ${norms.length} values, expected N·E = ${N}·${E}`);
  return { mask: routeTokens(norms, N, E, DEFAULT_ROUTING, thresholdOfToken).mask, E };
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

/** Refits W2 and B2 of one FFN's experts to the dense outputs under the routing mask (see the file comment). */
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

  const dense = given ? undefined : (target as { denseActivation: FfnActivation }).denseActivation;
  const sess = await buildMoments(D, H, E, w, inp.activation, dense).session(opts.threads ? { intraOpNumThreads: opts.threads } : {});
  const chunk = Math.max(1, opts.chunk ?? Math.min(4096, Math.floor((64 << 20) / 4 / (3 * H + 2 * D))));
  const fit = emptyMoments(H, D), held = emptyMoments(H, D);
  const mf = new Float32Array(chunk * E);
  try {
    // Chunks never straddle the split, so each lands in one set of moments.
    const run = async (a: number, b: number, into: Moments) => {
      for (let s = a; s < b; s += chunk) {
        const n = Math.min(chunk, b - s);
        for (let i = 0; i < n * E; i++) mf[i] = routing.mask[s * E + i];
        const feeds = { X: f32(X.subarray(s * D, (s + n) * D), [n, D]), M: f32(mf.subarray(0, n * E), [n, E]) };
        const r = await sess.run(given ? { ...feeds, Y: f32(given.subarray(s * D, (s + n) * D), [n, D]) } : feeds);
        accumulate(into, r as never, H, D, n);
      }
    };
    await run(0, nFit, fit);
    await run(nFit, N, held);
  } finally {
    await sess.release();
  }
  const H1 = H + 1;
  const W0 = new Float64Array(H1 * D);
  for (let i = 0; i < H * D; i++) W0[i] = w.W2[i];
  if (w.B2) for (let d = 0; d < D; d++) W0[H * D + d] = w.B2[d];
  const rel = (m: Moments, W: Float64Array) => Math.sqrt(residual(m, W, H1, D) / Math.max(m.yy, 1e-30));
  // From the weakest ridge up while the held-out error falls (it is U-shaped in the ridge; flat below 1e-3 on the
  // trained GELU model, where 1e-3 won 3 layers of 4): two solves where four were, each a Cholesky of the
  // (H+1)² system and a residual (~1.5 s per layer at d16 size).
  const order = [...ridges].sort((a, b) => a - b);
  const perRidge: { ridge: number; relErr: number }[] = [];
  for (const ridge of order) {
    perRidge.push({ ridge, relErr: rel(held, solveRidge(fit, W0, H, D, ridge)) });
    const n = perRidge.length;
    if (n >= 2 && perRidge[n - 1].relErr >= perRidge[n - 2].relErr) break;
  }
  const best = perRidge.reduce((a, b) => (b.relErr < a.relErr ? b : a));
  const all = addMoments(fit, held);
  const W = solveRidge(all, W0, H, D, best.ridge);
  return {
    W2: Float32Array.from(W.subarray(0, H * D)),
    B2: Float32Array.from(W.subarray(H * D)),
    ridge: best.ridge,
    heldOut: { before: rel(held, W0), after: best.relErr, perRidge },
    all: { before: rel(all, W0), after: rel(all, W) },
  };
}
