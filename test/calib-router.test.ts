import { test } from 'node:test';
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { repoRoot } from './helpers/fixtures';
import assert from 'node:assert';
import * as ort from 'onnxruntime-node';
import { buildTrainSteps, predictNorms, trainRouter, kaimingUniform } from '../src/calib/router-train';
import { buildTrainStep } from './helpers/router-train-step';
import { Lendable } from '../src/calib/layer-pool';
import { RouterJob, routerJobs } from '../src/stages/routers';
import { computeExpertNorms } from '../src/calib/expert-norms';
import { expertNormsReference } from './helpers/expert-norms-reference';
import { erf } from '../src/op';
import { f32, f32Scalar } from '../src/calib/ort-graph';
import { gaussian, rng } from '../src/calib/random';
import { MoefyError } from '../src/errors';

const gelu = (a: number) => 0.5 * a * (1 + erf(a / Math.SQRT2));

/** Float64 forward loss of the router: mean((|gelu(X·W1)·W2| − T)²). */
function lossJS(X: Float32Array, T: Float32Array, W1: Float64Array, W2: Float64Array, B: number, D: number, Wd: number, E: number): number {
  let s = 0;
  for (let b = 0; b < B; b++) {
    const g = new Float64Array(Wd);
    for (let j = 0; j < Wd; j++) {
      let a = 0;
      for (let d = 0; d < D; d++) a += X[b * D + d] * W1[d * Wd + j];
      g[j] = gelu(a);
    }
    for (let e = 0; e < E; e++) {
      let p = 0;
      for (let j = 0; j < Wd; j++) p += g[j] * W2[j * E + e];
      s += (Math.abs(p) - T[b * E + e]) ** 2;
    }
  }
  return s / (B * E);
}

test('training step: backward matches finite differences; Adam update matches the formula', async () => {
  const B = 7, D = 5, Wd = 4, E = 3;
  const r = rng(12), g = gaussian(r);
  const X = Float32Array.from({ length: B * D }, () => g());
  const T = Float32Array.from({ length: B * E }, () => Math.abs(g()));
  const W1 = Float32Array.from({ length: D * Wd }, () => g() * 0.7);
  const W2 = Float32Array.from({ length: Wd * E }, () => g() * 0.7);
  const M1 = Float32Array.from({ length: D * Wd }, () => g() * 0.01), V1 = Float32Array.from({ length: D * Wd }, () => Math.abs(g()) * 0.01);
  const M2 = Float32Array.from({ length: Wd * E }, () => g() * 0.01), V2 = Float32Array.from({ length: Wd * E }, () => Math.abs(g()) * 0.01);
  const betas: [number, number] = [0.9, 0.95];
  const sess = await buildTrainStep(D, E, Wd, betas, 1e-8, true).session();
  const c1 = 0.01, c2 = 1.3;
  const out = await sess.run({
    X: f32(X, [B, D]), T: f32(T, [B, E]), W1: f32(W1, [D, Wd]), W2: f32(W2, [Wd, E]),
    M1: f32(M1, [D, Wd]), V1: f32(V1, [D, Wd]), M2: f32(M2, [Wd, E]), V2: f32(V2, [Wd, E]),
    c1: f32Scalar(c1), c2: f32Scalar(c2), gscale: f32Scalar(2 / (B * E)), clip: f32Scalar(3e38),
  });
  await sess.release();
  const w1 = Float64Array.from(W1), w2 = Float64Array.from(W2);
  const loss0 = lossJS(X, T, w1, w2, B, D, Wd, E);
  assert.ok(Math.abs((out.loss.data as Float32Array)[0] - loss0) < 1e-5 * (1 + loss0));
  const h = 1e-5;
  const check = (w: Float64Array, grad: Float32Array, what: string) => {
    let maxG = 0;
    for (const v of grad) maxG = Math.max(maxG, Math.abs(v));
    for (let i = 0; i < w.length; i++) {
      const keep = w[i];
      w[i] = keep + h;
      const lp = lossJS(X, T, w1, w2, B, D, Wd, E);
      w[i] = keep - h;
      const lm = lossJS(X, T, w1, w2, B, D, Wd, E);
      w[i] = keep;
      const fd = (lp - lm) / (2 * h);
      assert.ok(Math.abs(fd - grad[i]) <= 2e-3 * maxG + 1e-6, `${what}[${i}]: analytic ${grad[i]} vs finite difference ${fd}`);
    }
  };
  check(w1, out.gW1.data as Float32Array, 'dW1');
  check(w2, out.gW2.data as Float32Array, 'dW2');
  // Adam: m' = β1 m + (1−β1) g, v' = β2 v + (1−β2) g², w' = w − c1·m'/(sqrt(v')·c2 + eps).
  const adam = (W: Float32Array, M: Float32Array, V: Float32Array, G: Float32Array, Wo: Float32Array, Mo: Float32Array, Vo: Float32Array) => {
    for (let i = 0; i < W.length; i++) {
      const m = betas[0] * M[i] + (1 - betas[0]) * G[i];
      const v = betas[1] * V[i] + (1 - betas[1]) * G[i] * G[i];
      const w = W[i] - (c1 * m) / (Math.sqrt(v) * c2 + 1e-8);
      assert.ok(Math.abs(Mo[i] - m) < 1e-6 && Math.abs(Vo[i] - v) < 1e-6 && Math.abs(Wo[i] - w) < 1e-5, `adam ${i}`);
    }
  };
  adam(W1, M1, V1, out.gW1.data as Float32Array, out.W1_out.data as Float32Array, out.M1_out.data as Float32Array, out.V1_out.data as Float32Array);
  adam(W2, M2, V2, out.gW2.data as Float32Array, out.W2_out.data as Float32Array, out.M2_out.data as Float32Array, out.V2_out.data as Float32Array);
});

test('gradient clipping scales the update direction to the clip norm', async () => {
  const B = 4, D = 3, Wd = 2, E = 2;
  const r = rng(2);
  const X = Float32Array.from({ length: B * D }, () => r() * 4), T = new Float32Array(B * E).fill(5);
  const W1 = kaimingUniform(D * Wd, D, r), W2 = kaimingUniform(Wd * E, Wd, r);
  const sess = await buildTrainStep(D, E, Wd, [0.9, 0.999], 1e-8, true).session();
  const feeds = (clip: number) => ({
    X: f32(X, [B, D]), T: f32(T, [B, E]), W1: f32(W1, [D, Wd]), W2: f32(W2, [Wd, E]),
    M1: f32(new Float32Array(D * Wd), [D, Wd]), V1: f32(new Float32Array(D * Wd), [D, Wd]), M2: f32(new Float32Array(Wd * E), [Wd, E]), V2: f32(new Float32Array(Wd * E), [Wd, E]),
    c1: f32Scalar(0), c2: f32Scalar(1), gscale: f32Scalar(2 / (B * E)), clip: f32Scalar(clip),
  });
  const a = await sess.run(feeds(3e38)), b = await sess.run(feeds(0.01));
  await sess.release();
  const g = [...(a.gW1.data as Float32Array), ...(a.gW2.data as Float32Array)];
  const norm = Math.sqrt(g.reduce((s, v) => s + v * v, 0));
  const m = [...(b.M1_out.data as Float32Array), ...(b.M2_out.data as Float32Array)];
  const mnorm = Math.sqrt(m.reduce((s, v) => s + v * v, 0));
  assert.ok(norm > 0.01);
  assert.ok(Math.abs(mnorm - 0.1 * 0.01) < 1e-5, `${mnorm}`);
});

/** A planted layer: tokens from a mixture of E Gaussians; component c drives expert group c's neurons. */
function plantedLayer(N: number, seed: number) {
  const E = 4, S = 8, H = E * S, D = 24;
  const r = rng(seed), g = gaussian(r);
  const r0 = rng(99), g0 = gaussian(r0); // the layer itself does not depend on the token seed
  const mu = Float32Array.from({ length: E * D }, () => g0() * 1.5);
  const W1 = new Float32Array(D * H), B1 = new Float32Array(H), W2 = new Float32Array(H * D);
  for (let e = 0; e < E; e++) for (let s = 0; s < S; s++) {
    const h = e * S + s;
    let nn = 0;
    for (let d = 0; d < D; d++) nn += mu[e * D + d] ** 2;
    for (let d = 0; d < D; d++) W1[d * H + h] = mu[e * D + d] / Math.sqrt(nn) + 0.2 * g0();
    B1[h] = -2;
    for (let d = 0; d < D; d++) W2[h * D + d] = g0() * 0.5;
  }
  const X = new Float32Array(N * D);
  for (let n = 0; n < N; n++) {
    const c = Math.floor(r() * E), amp = 0.5 + r();
    for (let d = 0; d < D; d++) X[n * D + d] = amp * mu[c * D + d] + 0.5 * g();
  }
  return { E, S, H, D, X, W1, B1, W2 };
}

test('router trained on a planted layer reaches held-out R² ≥ 0.9; deterministic; predictNorms agrees', async () => {
  const N = 2400;
  const L = plantedLayer(N, 5);
  const targets = await computeExpertNorms(L.X, N, L.D, L.W1, L.B1, L.W2, L.E, 'relu');
  const opts = { seed: 3, epochs: 25, batchSize: 64, width: 64 };
  const res = await trainRouter(L.X, targets, N, L.D, L.E, opts);
  assert.ok(res.heldOutR2 >= 0.9, `held-out R² ${res.heldOutR2}`);
  if (process.env.MOEFY_CALIB_VERBOSE) console.log(JSON.stringify({ r2: res.heldOutR2, r2e: res.heldOutR2PerExpert, recall: res.recallAt, s: res.seconds }));
  assert.ok(res.heldOutR2PerExpert >= 0.85, `per-expert R² ${res.heldOutR2PerExpert}`);
  assert.strictEqual(res.heldOutTokens, 240);
  assert.ok(res.recallAt.length === 3 && res.recall >= 0.8, `recall ${res.recall}`);
  assert.ok(res.trainMse > 0 && res.heldOutMse > 0);
  const again = await trainRouter(L.X, targets, N, L.D, L.E, opts);
  assert.deepStrictEqual(Buffer.from(again.W1.buffer), Buffer.from(res.W1.buffer));
  assert.deepStrictEqual(Buffer.from(again.W2.buffer), Buffer.from(res.W2.buffer));
  // predictNorms = |gelu(x·W1)·W2| on raw inputs.
  const p = await predictNorms(L.X.subarray(0, 10 * L.D), 10, L.D, res.W1, res.W2, L.E, res.width);
  for (let n = 0; n < 10; n++) {
    const W1 = Float64Array.from(res.W1), W2 = Float64Array.from(res.W2);
    for (let e = 0; e < L.E; e++) {
      let s = 0;
      for (let j = 0; j < res.width; j++) {
        let a = 0;
        for (let d = 0; d < L.D; d++) a += L.X[n * L.D + d] * W1[d * res.width + j];
        s += gelu(a) * W2[j * L.E + e];
      }
      assert.ok(Math.abs(Math.abs(s) - p[n * L.E + e]) < 1e-4 * (1 + Math.abs(s)));
    }
  }
});

test('trainRouter rejects bad inputs', async () => {
  await assert.rejects(trainRouter(new Float32Array(10), new Float32Array(9), 5, 2, 2, { seed: 1 }), MoefyError);
  await assert.rejects(trainRouter(new Float32Array(10), new Float32Array(10), 5, 2, 2, { seed: NaN }), MoefyError);
  await assert.rejects(trainRouter(new Float32Array(10), new Float32Array(5), 5, 2, 1, { seed: 1, heldOutFraction: 1 }), MoefyError);
});

test('the Loop graph (K steps in one run, batches gathered by index) equals K runs of the single-step graph', async () => {
  const N = 37, D = 6, Wd = 5, E = 3, K = 4;
  const r = rng(21), g = gaussian(r);
  const X = Float32Array.from({ length: N * D }, () => g()), T = Float32Array.from({ length: N * E }, () => Math.abs(g()));
  const order = Array.from({ length: N }, (_, i) => (i * 11) % N); // a permutation (11 and 37 are coprime)
  const bounds = [[0, 10], [10, 20], [20, 30], [30, 37]]; // the last batch is short
  const c1 = [0.01, 0.009, 0.008, 0.007], c2 = [3.1, 2.2, 1.9, 1.7];
  const betas: [number, number] = [0.9, 0.95];
  let st: Record<string, ort.Tensor> = {
    W1: f32(kaimingUniform(D * Wd, D, r), [D, Wd]), W2: f32(kaimingUniform(Wd * E, Wd, r), [Wd, E]),
    M1: f32(new Float32Array(D * Wd), [D, Wd]), V1: f32(new Float32Array(D * Wd), [D, Wd]), M2: f32(new Float32Array(Wd * E), [Wd, E]), V2: f32(new Float32Array(Wd * E), [Wd, E]),
  };
  const init = { ...st };
  // Reference: one run of the step graph per batch, rows gathered in JS.
  const one = await buildTrainStep(D, E, Wd, betas).session();
  const losses: number[] = [];
  for (let k = 0; k < K; k++) {
    const [a, b] = bounds[k], B = b - a;
    const xb = new Float32Array(B * D), tb = new Float32Array(B * E);
    for (let j = 0; j < B; j++) {
      xb.set(X.subarray(order[a + j] * D, order[a + j] * D + D), j * D);
      tb.set(T.subarray(order[a + j] * E, order[a + j] * E + E), j * E);
    }
    const o = await one.run({ X: f32(xb, [B, D]), T: f32(tb, [B, E]), ...st, c1: f32Scalar(c1[k]), c2: f32Scalar(c2[k]), gscale: f32Scalar(2 / (B * E)), clip: f32Scalar(3e38) });
    st = { W1: o.W1_out, W2: o.W2_out, M1: o.M1_out, V1: o.V1_out, M2: o.M2_out, V2: o.V2_out };
    losses.push((o.loss.data as Float32Array)[0]);
  }
  await one.release();
  const loop = await buildTrainSteps(D, E, Wd, betas).session();
  const i64 = (a: number[]) => new ort.Tensor('int64', BigInt64Array.from(a, (v) => BigInt(v)), [a.length]);
  const out = await loop.run({
    X: f32(X, [N, D]), T: f32(T, [N, E]), order: i64(order), starts: i64(bounds.map((b) => b[0])), ends: i64(bounds.map((b) => b[1])),
    c1: f32(Float32Array.from(c1), [K]), c2: f32(Float32Array.from(c2), [K]), gscale: f32(Float32Array.from(bounds, ([a, b]) => 2 / ((b - a) * E)), [K]),
    clip: f32Scalar(3e38), K: new ort.Tensor('int64', BigInt64Array.of(BigInt(K)), []), ...init,
  });
  await loop.release();
  for (const n of ['W1', 'W2', 'M1', 'V1', 'M2', 'V2']) {
    const a = st[n].data as Float32Array, b = out[`${n}_out`].data as Float32Array;
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(a[i] - b[i]) <= 1e-6 * (1 + Math.abs(a[i])), `${n}[${i}]: step by step ${a[i]}, loop ${b[i]}`);
  }
  const l = out.losses.data as Float32Array;
  assert.strictEqual(l.length, K);
  for (let k = 0; k < K; k++) assert.ok(Math.abs(l[k] - losses[k]) <= 1e-6 * (1 + losses[k]), `loss ${k}`);
});

test('early stopping: stops once the held-out error stops falling and returns the best epoch', async () => {
  // Targets that are noise: nothing generalises, so the held-out error is lowest early and training stops.
  const N = 600, D = 16, E = 4;
  const r = rng(8), g = gaussian(r);
  const X = Float32Array.from({ length: N * D }, () => g());
  const T = Float32Array.from({ length: N * E }, () => Math.abs(g()));
  const res = await trainRouter(X, T, N, D, E, { seed: 2, epochs: 60, batchSize: 32, width: 64, lr: 1e-2, patience: 3 });
  assert.ok(res.epochs < 60, `ran ${res.epochs} epochs`);
  assert.strictEqual(res.epochs, res.bestEpoch + 3);
  // The returned weights are the best epoch's: their held-out error is the final metric.
  const full = await trainRouter(X, T, N, D, E, { seed: 2, epochs: 60, batchSize: 32, width: 64, lr: 1e-2 });
  assert.strictEqual(full.epochs, 60);
  assert.ok(res.heldOutMse < full.heldOutMse, `best ${res.heldOutMse} vs last ${full.heldOutMse}`);
});

test('router jobs on worker threads: the same bytes as in one thread, captures given back whole', async () => {
  const jobs = (): RouterJob[] => [5, 6, 7].map((seed) => {
    const L = plantedLayer(600, seed);
    return { X: new Lendable(L.X), N: 600, D: L.D, W1: L.W1, B1: L.B1, W2: L.W2, E: L.E, activation: 'relu', sqrt: true, train: { seed, epochs: 3, batchSize: 64, width: 16 } };
  });
  const a = jobs(), b = jobs();
  const keep = b.map((j) => Float32Array.from(j.X.data));
  const serial = await routerJobs.run(a, { workers: 1 });
  const done: number[] = [];
  const pooled = await routerJobs.run(b, { workers: 2, onDone: (d) => done.push(d) });
  assert.deepStrictEqual(done, [1, 2, 3]);
  for (let k = 0; k < 3; k++) {
    assert.deepStrictEqual(Buffer.from(b[k].X.data.buffer), Buffer.from(keep[k].buffer), `job ${k}: X given back`);
    for (const f of ['trueNorms', 'predicted'] as const) assert.deepStrictEqual(Buffer.from(pooled[k][f].buffer), Buffer.from(serial[k][f].buffer), `job ${k} ${f}`);
    assert.deepStrictEqual(Buffer.from(pooled[k].router.W1.buffer), Buffer.from(serial[k].router.W1.buffer));
    assert.deepStrictEqual(Buffer.from(pooled[k].router.W2.buffer), Buffer.from(serial[k].router.W2.buffer));
    // The true norms are the plain reference's; the predictions are the router's squared.
    const ref = expertNormsReference(keep[k], 600, b[k].D, b[k].W1, b[k].B1, b[k].W2, b[k].E, 'relu');
    for (let i = 0; i < ref.length; i++) assert.ok(Math.abs(ref[i] - pooled[k].trueNorms[i]) <= 1e-4 * (1 + ref[i]));
    const p = await predictNorms(keep[k], 600, b[k].D, pooled[k].router.W1, pooled[k].router.W2, b[k].E, 16);
    for (let i = 0; i < p.length; i++) assert.ok(Math.abs(p[i] * p[i] - pooled[k].predicted[i]) <= 1e-5 * (1 + p[i] * p[i]));
  }
});

test('a failing job rejects with its error once the running jobs finish; no job starts after it; inputs given back', async () => {
  const L = plantedLayer(2000, 1);
  const good: RouterJob = { X: new Lendable(L.X), N: 2000, D: L.D, W1: L.W1, B1: L.B1, W2: L.W2, E: L.E, activation: 'relu', sqrt: false, train: { seed: 1, epochs: 20, batchSize: 32 } };
  const bad: RouterJob = { ...good, X: new Lendable(L.X.slice()), train: { seed: NaN } };
  const jobs = [bad, { ...good, X: new Lendable(L.X.slice()) }, { ...good, X: new Lendable(L.X.slice()) }];
  const done: number[] = [];
  // The second job is still training in the other worker when the first fails (terminating it there would abort).
  await assert.rejects(routerJobs.run(jobs, { workers: 2, onDone: (d) => done.push(d) }), (e: Error) => e instanceof MoefyError && /numeric seed/.test(e.message));
  assert.deepStrictEqual(done, [1], 'the running job finished, the third never started');
  for (const j of jobs) assert.deepStrictEqual(Buffer.from(j.X.data.buffer), Buffer.from(L.X.buffer));
});

test('stopLayerJobs: running jobs stop at the next epoch and the pool rejects, so the process can exit cleanly', () => {
  // In a child process (the stop is for shutting down: every later pool in that process rejects too).
  const script = `
    const { Lendable, stopLayerJobs } = require(${JSON.stringify(path.join(repoRoot, 'dist/src/calib/layer-pool.js'))});
    const { routerJobs } = require(${JSON.stringify(path.join(repoRoot, 'dist/src/stages/routers.js'))});
    const { rng, gaussian } = require(${JSON.stringify(path.join(repoRoot, 'dist/src/calib/random.js'))});
    const D = 32, H = 64, E = 4, N = 20000, g = gaussian(rng(1));
    const mk = () => ({ X: new Lendable(Float32Array.from({ length: N * D }, () => g())), N, D, W1: Float32Array.from({ length: D * H }, () => g() / 6), B1: new Float32Array(H), W2: Float32Array.from({ length: H * D }, () => g() / 8), E, activation: 'relu', sqrt: true, train: { seed: 1, epochs: 200, batchSize: 16 } });
    const t0 = Date.now();
    routerJobs.run([mk(), mk(), mk()], { workers: 2 }).then(() => process.exit(3), (e) => { console.log(e.message, Date.now() - t0 < 60000); process.exit(130); });
    setTimeout(stopLayerJobs, 1500);
  `;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 });
  assert.strictEqual(r.status, 130, `exit ${r.status} ${r.signal}: ${r.stderr}`);
  assert.match(r.stdout, /calibration stopped true/);
  assert.doesNotMatch(r.stderr, /terminate called/);
});
