// Router targets: the L2 norm of each expert's output, ‖act(x·W1_e + b1_e)·W2_e‖₂ (fc2 bias excluded), computed in
// onnxruntime-node on chunks of tokens. Also the FFN's hidden activations, for clustering neurons by co-activation.
import { MoefyError } from '../errors';
import { ActivationKind as FfnActivation } from '../op';
import { GraphBuilder, activationOp, f32 } from './ort-graph';

export interface ExpertNormOptions {
  /** Tokens per ORT run (bounds memory). Default: about 64 MiB of intermediates. */
  chunk?: number;
  /**
   * 'gram' (default): ‖h_e·W2_e‖² = h_e·(W2_e·W2_eᵀ)·h_eᵀ with the per-expert Gram matrices [E,S,S] folded once by
   * ORT: H·S instead of H·D multiply-adds per token for the second half (8× fewer at d16), float32 with the
   * square clamped at 0. 'direct': the expert outputs [E,n,D] themselves, then ReduceL2.
   */
  method?: 'gram' | 'direct';
  /** ORT intra-op threads (default: ORT's). */
  threads?: number;
}

function checkFfn(X: Float32Array, N: number, D: number, W1: Float32Array, B1: Float32Array, H: number, W2?: Float32Array): void {
  if (!(N >= 0 && D > 0 && H > 0) || !Number.isInteger(N) || !Number.isInteger(D) || !Number.isInteger(H)) throw new MoefyError(`bad FFN sizes N=${N} D=${D} H=${H}`);
  if (X.length !== N * D) throw new MoefyError(`X has ${X.length} values, expected N·D = ${N}·${D}`);
  if (W1.length !== D * H) throw new MoefyError(`W1 has ${W1.length} values, expected D·H = ${D}·${H}`);
  if (B1.length !== H) throw new MoefyError(`B1 has ${B1.length} values, expected H = ${H}`);
  if (W2 && W2.length !== H * D) throw new MoefyError(`W2 has ${W2.length} values, expected H·D = ${H}·${D}`);
}

/**
 * Per-token, per-expert output norms [N, E] of an FFN whose hidden neurons are already permuted so that expert e
 * owns columns e·S … e·S+S−1 of W1 (rows of W2), S = H/E. W1 [D,H], B1 [H], W2 [H,D], all row-major.
 */
export async function computeExpertNorms(
  X: Float32Array, N: number, D: number,
  W1: Float32Array, B1: Float32Array, W2: Float32Array,
  E: number, activation: FfnActivation, opts: ExpertNormOptions = {},
): Promise<Float32Array> {
  const H = B1.length;
  checkFfn(X, N, D, W1, B1, H, W2);
  if (!(E > 0) || H % E !== 0) throw new MoefyError(`${E} experts do not divide the FFN hidden size ${H}`);
  const S = H / E;
  const b = new GraphBuilder('expert_norms');
  const x = b.input('X', ['n', D]);
  const w1 = b.constF(W1, [D, H], 'W1');
  const b1 = b.constF(B1, [H], 'B1');
  const w2 = b.constF(W2, [E, S, D], 'W2'); // rows e·S.. of W2 [H,D] are expert e's [S,D] block: a plain reshape
  const h = activationOp(b, b.op('Add', [b.op('MatMul', [x, w1]), b1]), activation); // [n,H]
  const he = b.op('Transpose', [b.op('Reshape', [h, b.constI64([0, E, S])])], { perm: [1, 0, 2] }); // [E,n,S]
  const gram = (opts.method ?? 'gram') === 'gram';
  let nrm;
  if (gram) {
    const G = b.op('MatMul', [w2, b.op('Transpose', [w2], { perm: [0, 2, 1] })]); // [E,S,S], constant-folded
    const q = b.op('ReduceSum', [b.op('Mul', [b.op('MatMul', [he, G]), he]), b.constI64([2])], { keepdims: 0 }); // [E,n]
    nrm = b.op('Sqrt', [b.op('Max', [q, b.scalar(0)])]);
  } else {
    const ye = b.op('MatMul', [he, w2]); // [E,n,D]
    nrm = b.op('ReduceL2', [ye, b.constI64([2])], { keepdims: 0 }); // [E,n]
  }
  b.output(b.op('Transpose', [nrm], { perm: [1, 0] }), 'norms');
  const sess = await b.session(opts.threads ? { intraOpNumThreads: opts.threads } : {});
  const perToken = gram ? 3 * H + E : E * D + 2 * H;
  const chunk = Math.max(1, opts.chunk ?? Math.min(4096, Math.floor((64 << 20) / 4 / perToken)));
  const out = new Float32Array(N * E);
  try {
    for (let s = 0; s < N; s += chunk) {
      const n = Math.min(chunk, N - s);
      const r = await sess.run({ X: f32(X.subarray(s * D, (s + n) * D), [n, D]) });
      out.set(r.norms.data as Float32Array, s * E);
    }
  } finally {
    await sess.release();
  }
  return out;
}

/** Hidden activations act(x·W1 + b1), [N, H]. Callers subsample tokens first: this is N·H floats. */
export async function computeHiddenActivations(
  X: Float32Array, N: number, D: number, W1: Float32Array, B1: Float32Array, activation: FfnActivation, opts: ExpertNormOptions = {},
): Promise<Float32Array> {
  const H = B1.length;
  checkFfn(X, N, D, W1, B1, H);
  const b = new GraphBuilder('hidden');
  const x = b.input('X', ['n', D]);
  const h = activationOp(b, b.op('Add', [b.op('MatMul', [x, b.constF(W1, [D, H], 'W1')]), b.constF(B1, [H], 'B1')]), activation);
  b.output(h, 'hidden');
  const sess = await b.session(opts.threads ? { intraOpNumThreads: opts.threads } : {});
  const chunk = Math.max(1, opts.chunk ?? 1024);
  const out = new Float32Array(N * H);
  try {
    for (let s = 0; s < N; s += chunk) {
      const n = Math.min(chunk, N - s);
      const r = await sess.run({ X: f32(X.subarray(s * D, (s + n) * D), [n, D]) });
      out.set(r.hidden.data as Float32Array, s * H);
    }
  } finally {
    await sess.release();
  }
  return out;
}

/** Reorders an FFN's hidden neurons: new neuron j is old neuron order[j]. W1 [D,H] columns, B1, W2 [H,D] rows. */
export function permuteFfn(W1: Float32Array, B1: Float32Array, W2: Float32Array, D: number, order: Int32Array): { W1: Float32Array; B1: Float32Array; W2: Float32Array } {
  const H = order.length;
  if (W1.length !== D * H || B1.length !== H || W2.length !== H * D) throw new MoefyError(`permuteFfn: sizes do not match D=${D}, H=${H}`);
  const seen = new Uint8Array(H);
  for (let j = 0; j < H; j++) {
    const o = order[j];
    if (!(o >= 0 && o < H) || seen[o]) throw new MoefyError('permuteFfn: order is not a permutation');
    seen[o] = 1;
  }
  const w1 = new Float32Array(D * H), b1 = new Float32Array(H), w2 = new Float32Array(H * D);
  for (let d = 0; d < D; d++) {
    const row = d * H;
    for (let j = 0; j < H; j++) w1[row + j] = W1[row + order[j]];
  }
  for (let j = 0; j < H; j++) {
    b1[j] = B1[order[j]];
    w2.set(W2.subarray(order[j] * D, order[j] * D + D), j * D);
  }
  return { W1: w1, B1: b1, W2: w2 };
}
