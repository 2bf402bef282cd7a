// Expert repair on small planted problems: the closed form must recover a known W2, B2 under a routing mask; the
// ridge must pull toward the original; the routing mask and the dense FFN outputs are checked against plain
// TypeScript; gradient fitting must lower the held-out error from its start and be byte-reproducible.
import { test } from 'node:test';
import assert from 'node:assert';
import { activate as act, ActivationKind as FfnActivation } from '../src/op';
import { trainExperts } from '../src/calib/expert-train';
import { rng } from '../src/calib/random';
import { gramAdd, quadForm, solveSpd } from '../src/calib/linalg';
import { ffnOutputs, repairExperts, routingMask } from '../src/calib/repair';
import { Lendable } from '../src/calib/layer-pool';
import { RepairJob, repairJobs } from '../src/stages/repair';

function rand(r: () => number, n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (r() * 2 - 1) * scale;
  return a;
}

/** (act(X·W1 + B1) ⊙ mask)·W2 + B2 in plain float64 TypeScript. */
function maskedFfn(X: Float32Array, N: number, D: number, W1: Float32Array, B1: Float32Array, W2: Float32Array, B2: Float32Array, mask: Uint8Array | null, E: number, activation: FfnActivation): Float32Array {
  const H = B1.length, S = H / E;
  const out = new Float32Array(N * D);
  for (let n = 0; n < N; n++) {
    const y = Float64Array.from(B2);
    for (let j = 0; j < H; j++) {
      if (mask && !mask[n * E + Math.floor(j / S)]) continue;
      let z = B1[j];
      for (let d = 0; d < D; d++) z += X[n * D + d] * W1[d * H + j];
      const h = act(z, activation);
      for (let d = 0; d < D; d++) y[d] += h * W2[j * D + d];
    }
    out.set(y, n * D);
  }
  return out;
}

test('solveSpd solves a symmetric positive definite system with many right-hand sides; quadForm is tr(WᵀGW)', () => {
  const r = rng(1);
  const n = 9, k = 3;
  const M = rand(r, n * n);
  const A = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
    let s = i === j ? 0.5 : 0;
    for (let p = 0; p < n; p++) s += M[i * n + p] * M[j * n + p];
    A[i * n + j] = s;
  }
  const Xtrue = Float64Array.from(rand(r, n * k));
  const B = new Float64Array(n * k);
  for (let i = 0; i < n; i++) for (let c = 0; c < k; c++) for (let p = 0; p < n; p++) B[i * k + c] += A[i * n + p] * Xtrue[p * k + c];
  // tr(XᵀAX) = Σ X ⊙ (A·X) = Σ X ⊙ B, from the products above.
  let q = 0;
  for (let i = 0; i < n * k; i++) q += Xtrue[i] * B[i];
  assert.ok(Math.abs(quadForm(A, Xtrue, n, k) - q) < 1e-9 * Math.abs(q), `quadForm ${quadForm(A, Xtrue, n, k)} vs ${q}`);
  solveSpd(Float64Array.from(A), B, n, k, 'test');
  for (let i = 0; i < n * k; i++) assert.ok(Math.abs(B[i] - Xtrue[i]) < 1e-8, `${i}: ${B[i]} vs ${Xtrue[i]}`);
  assert.throws(() => solveSpd(Float64Array.from([1, 2, 2, 1]), new Float64Array(2), 2, 1, 'test'), /test: the least-squares system is not positive definite/);
  assert.throws(() => solveSpd(new Float64Array(3), new Float64Array(2), 2, 1, 'test'), /A has 3 values, expected 4/);
});

test('gramAdd adds the upper triangle of AᵀA into a wider float64 matrix and leaves the rest alone', () => {
  const r = rng(2);
  const n = 37, h = 11, ld = 12;
  const A = rand(r, n * h);
  const G = Float64Array.from({ length: ld * ld }, (_, i) => i * 0.25);
  const before = Float64Array.from(G);
  gramAdd(G, A, n, h, ld);
  gramAdd(G, A, n, h, ld);
  for (let i = 0; i < ld; i++)
    for (let j = 0; j < ld; j++) {
      let want = before[i * ld + j];
      if (i < h && j < h && i <= j) for (let t = 0; t < n; t++) want += 2 * A[t * h + i] * A[t * h + j];
      assert.ok(Math.abs(G[i * ld + j] - want) < 1e-4 * (1 + Math.abs(want)), `(${i}, ${j}): ${G[i * ld + j]} vs ${want}`);
    }
  assert.throws(() => gramAdd(G, new Float32Array(5), n, h, ld), /A has 5 values/);
});

test('routingMask: expert e runs iff norm ≥ t·max (the argmax always runs)', () => {
  const norms = Float32Array.from([1, 0.5, 0.2, 0.49, /**/ 0, 0, 3, 1, /**/ 2, 2, 2, 2]);
  const m = routingMask(norms, 3, 4, 'relative', (n) => [0.5, 1, 0][n]);
  assert.deepStrictEqual([...m.mask], [1, 1, 0, 0, /**/ 0, 0, 1, 0, /**/ 1, 1, 1, 1]);
});

for (const activation of ['relu', 'gelu_tanh'] as FfnActivation[]) {
  test(`ffnOutputs equals a plain TS FFN (${activation})`, async () => {
    const r = rng(2);
    const N = 50, D = 6, H = 16;
    const X = rand(r, N * D), W1 = rand(r, D * H, 0.6), B1 = rand(r, H, 0.3), W2 = rand(r, H * D, 0.5), B2 = rand(r, D, 0.2);
    const got = await ffnOutputs(X, N, D, { W1, B1, W2, B2 }, activation, 7);
    const want = maskedFfn(X, N, D, W1, B1, W2, B2, null, 4, activation);
    for (let i = 0; i < got.length; i++) assert.ok(Math.abs(got[i] - want[i]) < 1e-5, `${i}: ${got[i]} vs ${want[i]}`);
  });

  test(`repairExperts recovers a planted W2, B2 under a routing mask (${activation})`, async () => {
    const r = rng(3);
    const N = 1200, D = 5, H = 12, E = 4;
    const X = rand(r, N * D), W1 = rand(r, D * H, 0.8), B1 = rand(r, H, 0.3);
    const W2true = rand(r, H * D, 0.5), B2true = rand(r, D, 0.4);
    const mask = new Uint8Array(N * E);
    for (let n = 0; n < N; n++) {
      mask[n * E + Math.floor(r() * E)] = 1; // at least one expert, as the op's argmax
      for (let e = 0; e < E; e++) if (r() < 0.5) mask[n * E + e] = 1;
    }
    // The target: what the masked experts with the planted second layer give; the fit starts elsewhere.
    const target = maskedFfn(X, N, D, W1, B1, W2true, B2true, mask, E, activation);
    const start = { W1, B1, W2: rand(r, H * D, 0.5), B2: new Float32Array(D) };
    const fit = await repairExperts({ X, N, D, target, weights: start, activation, routing: { mask, E } }, { ridge: [0, 1e-3, 1] });
    assert.strictEqual(fit.ridge, 0, 'the exact problem prefers no ridge on held-out tokens');
    for (let i = 0; i < H * D; i++) assert.ok(Math.abs(fit.W2[i] - W2true[i]) < 2e-3, `W2[${i}]: ${fit.W2[i]} vs ${W2true[i]}`);
    for (let d = 0; d < D; d++) assert.ok(Math.abs(fit.B2[d] - B2true[d]) < 2e-3, `B2[${d}]: ${fit.B2[d]} vs ${B2true[d]}`);
    assert.ok(fit.heldOut.after < 1e-3 && fit.heldOut.before > 0.3, `held-out error ${fit.heldOut.before} → ${fit.heldOut.after}`);
    assert.ok(fit.all.after < 1e-3);
    // A strong ridge keeps the rows near the starting W2.
    const tight = await repairExperts({ X, N, D, target, weights: start, activation, routing: { mask, E } }, { ridge: [1e4] });
    let far = 0;
    for (let i = 0; i < H * D; i++) far = Math.max(far, Math.abs(tight.W2[i] - start.W2[i]));
    assert.ok(far < 1e-2, `ridge 1e4 moved W2 by ${far}`);
  });
}

test('repairExperts with the dense target computed in its moments equals the fit to a given target array', async () => {
  // The dense FFN (GELU) is the target; the experts are ReLU under a mask. The in-graph target (shared x·W1) must
  // give the fit of the explicit one: the same ridge, W2 within float32 rounding. A plain TS FFN is the reference target.
  const r = rng(4);
  const N = 900, D = 6, H = 16, E = 4;
  const X = rand(r, N * D), W1 = rand(r, D * H, 0.7), B1 = rand(r, H, 0.3), W2 = rand(r, H * D, 0.5), B2 = rand(r, D, 0.2);
  const mask = new Uint8Array(N * E);
  for (let n = 0; n < N; n++) for (let e = 0; e < E; e++) mask[n * E + e] = e === n % E || r() < 0.4 ? 1 : 0;
  const target = maskedFfn(X, N, D, W1, B1, W2, B2, null, E, 'gelu_tanh');
  const inp = { X, N, D, weights: { W1, B1, W2, B2 }, activation: 'relu' as FfnActivation, routing: { mask, E } };
  const a = await repairExperts({ ...inp, target });
  const b = await repairExperts({ ...inp, target: { denseActivation: 'gelu_tanh' } });
  assert.strictEqual(b.ridge, a.ridge);
  for (let i = 0; i < H * D; i++) assert.ok(Math.abs(a.W2[i] - b.W2[i]) < 1e-4 * (1 + Math.abs(a.W2[i])), `W2[${i}]: ${b.W2[i]} vs ${a.W2[i]}`);
  assert.ok(Math.abs(a.heldOut.before - b.heldOut.before) < 1e-5 && Math.abs(a.heldOut.after - b.heldOut.after) < 1e-5);
  assert.ok(b.heldOut.after < b.heldOut.before * 0.9, `the fit helps: ${b.heldOut.before} → ${b.heldOut.after}`);
});

/** Σ over the experts a token skips of C[e] [E, D], added to out [N, D] (plain TypeScript). */
function addSkipped(out: Float32Array, mask: Uint8Array, C: Float32Array, N: number, D: number, E: number): Float32Array {
  const y = Float32Array.from(out);
  for (let n = 0; n < N; n++) for (let e = 0; e < E; e++) if (!mask[n * E + e]) for (let d = 0; d < D; d++) y[n * D + d] += C[e * D + d];
  return y;
}

test('repairExperts with skip_bias: recovers a planted W2, B2 and skipped-expert vectors jointly, or the vectors alone with W2, B2 kept', async () => {
  const r = rng(12);
  const N = 1500, D = 5, H = 12, E = 4;
  const X = rand(r, N * D), W1 = rand(r, D * H, 0.8), B1 = rand(r, H, 0.3);
  const W2true = rand(r, H * D, 0.5), B2true = rand(r, D, 0.4), Ctrue = rand(r, E * D, 0.6);
  const mask = new Uint8Array(N * E);
  for (let n = 0; n < N; n++) {
    mask[n * E + Math.floor(r() * E)] = 1;
    for (let e = 0; e < E; e++) if (r() < 0.5) mask[n * E + e] = 1;
  }
  // Every expert on for a quarter of the tokens (as the dense scales): the indicators are 0 there.
  for (let n = 0; n < N / 4; n++) mask.fill(1, n * E, (n + 1) * E);
  const target = addSkipped(maskedFfn(X, N, D, W1, B1, W2true, B2true, mask, E, 'relu'), mask, Ctrue, N, D, E);
  const start = { W1, B1, W2: rand(r, H * D, 0.5), B2: new Float32Array(D) };
  const joint = await repairExperts({ X, N, D, target, weights: start, activation: 'relu', routing: { mask, E } }, { ridge: [0, 1e-3], fit: { experts: true, skipBias: true } });
  for (let i = 0; i < H * D; i++) assert.ok(Math.abs(joint.W2[i] - W2true[i]) < 2e-3, `W2[${i}]: ${joint.W2[i]} vs ${W2true[i]}`);
  for (let d = 0; d < D; d++) assert.ok(Math.abs(joint.B2[d] - B2true[d]) < 2e-3, `B2[${d}]`);
  for (let i = 0; i < E * D; i++) assert.ok(Math.abs(joint.skipBias![i] - Ctrue[i]) < 2e-3, `skipBias[${i}]: ${joint.skipBias![i]} vs ${Ctrue[i]}`);
  assert.ok(joint.heldOut.after < 1e-3, `joint held-out error ${joint.heldOut.after}`);
  // Without the indicator columns the same problem cannot be fitted exactly.
  const plain = await repairExperts({ X, N, D, target, weights: start, activation: 'relu', routing: { mask, E } }, { ridge: [0, 1e-3] });
  assert.strictEqual(plain.skipBias, null);
  assert.ok(plain.heldOut.after > 0.05, `without skip_bias ${plain.heldOut.after}`);

  // Alone: the experts are the planted ones and stay; only the vectors are fitted (to the residual).
  const planted = { W1, B1, W2: W2true, B2: B2true };
  const alone = await repairExperts({ X, N, D, target, weights: planted, activation: 'relu', routing: { mask, E } }, { ridge: [0, 1e-3], fit: { experts: false, skipBias: true } });
  assert.deepStrictEqual([...alone.W2], [...W2true]);
  assert.deepStrictEqual([...alone.B2], [...B2true]);
  for (let i = 0; i < E * D; i++) assert.ok(Math.abs(alone.skipBias![i] - Ctrue[i]) < 2e-3, `alone skipBias[${i}]: ${alone.skipBias![i]} vs ${Ctrue[i]}`);
  // Its errors are relative to the dense output (not to the residual): before = the experts without the vectors.
  const moe = maskedFfn(X, N, D, W1, B1, W2true, B2true, mask, E, 'relu');
  const held = Math.max(1, Math.floor(N * 0.125));
  let num = 0, den = 0;
  for (let i = (N - held) * D; i < N * D; i++) {
    num += (moe[i] - target[i]) ** 2;
    den += target[i] ** 2;
  }
  assert.ok(Math.abs(alone.heldOut.before - Math.sqrt(num / den)) < 1e-4, `before ${alone.heldOut.before} vs ${Math.sqrt(num / den)}`);
  assert.ok(alone.heldOut.after < 1e-3);
});

test('trainExperts trains a skip_bias with the experts: lowers the held-out error, byte-reproducible', async () => {
  const r = rng(13);
  const N = 2000, D = 6, H = 16, E = 4;
  const X = rand(r, N * D), W1 = rand(r, D * H, 0.8), B1 = rand(r, H, 0.3), W2 = rand(r, H * D, 0.5), B2 = rand(r, D, 0.2), C = rand(r, E * D, 0.5);
  const mask = new Uint8Array(N * E).fill(1);
  for (let n = 0; n < N; n++) mask[n * E + Math.floor(r() * E)] = 0;
  const target = addSkipped(maskedFfn(X, N, D, W1, B1, W2, B2, mask, E, 'relu'), mask, C, N, D, E);
  // The vectors start away from the planted ones (steps are relative to each tensor's RMS, as the closed form's start has).
  const inp = { X, N, D, target, weights: { W1, B1, W2, B2 }, skipBias: C.map((v) => v + (r() - 0.5)), activation: 'relu' as const, routing: { mask, E } };
  const a = await trainExperts(inp, { epochs: 10, seed: 3, lr: 1e-2, weightDecay: 0, batchSize: 64 });
  assert.ok(a.weights.SB, 'the skip_bias is returned');
  assert.ok(a.heldOutAfter < 0.5 * a.heldOutBefore, `held-out error ${a.heldOutBefore} → ${a.heldOutAfter}`);
  // The reported error is the plain reference's with the trained vectors.
  const w = a.weights;
  const moe = addSkipped(maskedFfn(X, N, D, w.W1, w.B1, w.W2, w.B2, mask, E, 'relu'), mask, w.SB!, N, D, E);
  const held = Math.max(1, Math.floor(N * 0.125));
  let num = 0, den = 0;
  for (let i = (N - held) * D; i < N * D; i++) {
    num += (moe[i] - target[i]) ** 2;
    den += target[i] ** 2;
  }
  assert.ok(Math.abs(Math.sqrt(num / den) - a.heldOutAfter) < 1e-4, `reported ${a.heldOutAfter}, reference ${Math.sqrt(num / den)}`);
  const b = await trainExperts(inp, { epochs: 10, seed: 3, lr: 1e-2, weightDecay: 0, batchSize: 64 });
  for (const p of ['W1', 'B1', 'W2', 'B2', 'SB'] as const) assert.deepStrictEqual(Buffer.from(b.weights[p]!.buffer), Buffer.from(a.weights[p]!.buffer), p);
});

test('repairExperts: bad sizes are one clear error', async () => {
  const w = { W1: new Float32Array(8), B1: new Float32Array(4), W2: new Float32Array(8), B2: null };
  await assert.rejects(repairExperts({ X: new Float32Array(6), N: 3, D: 2, target: new Float32Array(6), weights: w, activation: 'relu', routing: { mask: new Uint8Array(5), E: 2 } }), /routing mask/);
});

test('trainExperts lowers the held-out error of a perturbed FFN, and is byte-reproducible', async () => {
  const r = rng(4);
  const N = 2000, D = 6, H = 16, E = 4;
  const X = rand(r, N * D), W1 = rand(r, D * H, 0.8), B1 = rand(r, H, 0.3), W2 = rand(r, H * D, 0.5), B2 = rand(r, D, 0.2);
  const mask = new Uint8Array(N * E).fill(1);
  for (let n = 0; n < N; n++) mask[n * E + Math.floor(r() * E)] = 0;
  const target = maskedFfn(X, N, D, W1, B1, W2, B2, mask, E, 'gelu_tanh');
  // Start from perturbed first-layer weights: no closed form of W2 alone reaches the target.
  const start = { W1: W1.map((v) => v + (r() - 0.5) * 0.4), B1: B1.map((v) => v + (r() - 0.5) * 0.2), W2, B2 };
  const inp = { X, N, D, target, weights: start, activation: 'gelu_tanh' as const, routing: { mask, E } };
  const a = await trainExperts(inp, { epochs: 15, seed: 5, lr: 5e-3, weightDecay: 0 });
  assert.ok(a.heldOutAfter < 0.5 * a.heldOutBefore, `held-out error ${a.heldOutBefore} → ${a.heldOutAfter}`);
  assert.ok(a.bestEpoch >= 1);
  const b = await trainExperts(inp, { epochs: 15, seed: 5, lr: 5e-3, weightDecay: 0 });
  for (const p of ['W1', 'B1', 'W2', 'B2'] as const) assert.deepStrictEqual(Buffer.from(b.weights[p].buffer), Buffer.from(a.weights[p].buffer), p);
  // Starting at the answer, nothing gets worse (early stopping keeps the start).
  const exact = await trainExperts({ ...inp, weights: { W1, B1, W2, B2 } }, { epochs: 3, seed: 5 });
  assert.ok(exact.heldOutAfter <= exact.heldOutBefore && exact.heldOutBefore < 1e-5, `${exact.heldOutBefore} → ${exact.heldOutAfter}`);
});

test('repair jobs on worker threads: the same bytes as in one thread, captures given back, the fit lowers the error', async () => {
  const N = 1500, D = 6, H = 16, E = 4;
  const jobs = (): RepairJob[] => [1, 2, 3].map((seed) => {
    const r = rng(seed);
    const mask = new Uint8Array(N * E).fill(1);
    for (let n = 0; n < N; n++) mask[n * E + Math.floor(r() * E)] = 0;
    return { X: new Lendable(rand(r, N * D)), N, D, W1: rand(r, D * H, 0.8), B1: rand(r, H, 0.3), W2: rand(r, H * D, 0.5), B2: rand(r, D, 0.2), activation: 'relu', original: 'gelu_tanh', fit: { experts: true, skipBias: false }, mask, E, epochs: 4, seed };
  });
  const a = jobs(), b = jobs();
  const keep = b.map((j) => Float32Array.from(j.X.data));
  const serial = await repairJobs.run(a, { workers: 1 });
  const done: number[] = [];
  const pooled = await repairJobs.run(b, { workers: 2, onDone: (d) => done.push(d) });
  assert.deepStrictEqual(done, [1, 2, 3]);
  for (let k = 0; k < 3; k++) {
    assert.ok(Buffer.from(b[k].X.data.buffer).equals(Buffer.from(keep[k].buffer)), `job ${k}: X given back`);
    for (const p of ['W1', 'B1', 'W2', 'B2'] as const) assert.ok(Buffer.from(pooled[k][p].buffer).equals(Buffer.from(serial[k][p].buffer)), `job ${k} ${p}`);
    assert.ok(pooled[k].heldOutRelErrAfter < pooled[k].heldOutRelErrBefore, `job ${k}: ${pooled[k].heldOutRelErrBefore} → ${pooled[k].heldOutRelErrAfter}`);
    // The error it reports is the plain reference's: the masked ReLU FFN of the returned weights against the dense GELU one.
    const w = pooled[k];
    const dense = maskedFfn(keep[k], N, D, b[k].W1, b[k].B1, b[k].W2, b[k].B2!, null, E, 'gelu_tanh');
    const moe = maskedFfn(keep[k], N, D, w.W1, w.B1, w.W2, w.B2, b[k].mask, E, 'relu');
    const held = Math.max(1, Math.floor(N * 0.125));
    let num = 0, den = 0;
    for (let i = (N - held) * D; i < N * D; i++) {
      num += (moe[i] - dense[i]) ** 2;
      den += dense[i] ** 2;
    }
    assert.ok(Math.abs(Math.sqrt(num / den) - w.heldOutRelErrAfter) < 1e-4, `job ${k}: reported ${w.heldOutRelErrAfter}, reference ${Math.sqrt(num / den)}`);
  }
});
