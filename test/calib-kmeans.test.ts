import { test } from 'node:test';
import assert from 'node:assert';
import { balancedAssign, balancedKMeans, clusterNeurons, layoutFromLabels } from '../src/calib/kmeans';
import { MoefyError } from '../src/errors';
import { gaussian, permutation, rng } from '../src/calib/random';
import { computeHiddenActivations } from '../src/calib/expert-norms';
import { ClusterJob, clusterJobs } from '../src/stages/cluster';

/** Brute-force optimal balanced assignment for tiny cases (all permutations of slot assignments). */
function bruteBalanced(cost: Float64Array, n: number, k: number): number {
  const cap = n / k;
  let best = Infinity;
  const cnt = new Array(k).fill(0);
  const rec = (p: number, acc: number) => {
    if (acc >= best) return;
    if (p === n) {
      best = acc;
      return;
    }
    for (let c = 0; c < k; c++) {
      if (cnt[c] >= cap) continue;
      cnt[c]++;
      rec(p + 1, acc + cost[p * k + c]);
      cnt[c]--;
    }
  };
  rec(0, 0);
  return best;
}

test('balancedAssign is optimal and balanced (vs brute force)', () => {
  const r = rng(3);
  for (let trial = 0; trial < 40; trial++) {
    const k = 2 + (trial % 3), cap = 1 + (trial % 4), n = k * cap;
    const cost = new Float64Array(n * k);
    for (let i = 0; i < cost.length; i++) cost[i] = Math.floor(r() * 20) / 2 - (trial % 2 ? 3 : 0);
    const labels = balancedAssign(cost, n, k);
    const cnt = new Array(k).fill(0);
    let total = 0;
    for (let p = 0; p < n; p++) {
      cnt[labels[p]]++;
      total += cost[p * k + labels[p]];
    }
    assert.deepStrictEqual(cnt, new Array(k).fill(cap));
    const shifted = cost.map((c) => c + 3); // the brute force prunes on partial sums: costs must be >= 0
    const want = bruteBalanced(shifted, n, k) - 3 * n;
    assert.ok(Math.abs(total - want) < 1e-9, `trial ${trial}: ${total} vs ${want}`);
  }
});

/** E groups of S points, each a noisy copy of one of E random centres; returned shuffled with their group. */
function planted(E: number, S: number, dim: number, noise: number, seed: number): { points: Float32Array; group: Int32Array } {
  const r = rng(seed), g = gaussian(r);
  const centres = Float32Array.from({ length: E * dim }, () => g());
  const n = E * S;
  const perm = permutation(n, r);
  const points = new Float32Array(n * dim), group = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    const p = perm[i], e = Math.floor(i / S);
    group[p] = e;
    for (let d = 0; d < dim; d++) points[p * dim + d] = centres[e * dim + d] + noise * g();
  }
  return { points, group };
}

function samePartition(a: Int32Array, b: Int32Array): boolean {
  const map = new Map<number, number>(), inv = new Map<number, number>();
  for (let i = 0; i < a.length; i++) {
    if (map.has(a[i]) && map.get(a[i]) !== b[i]) return false;
    if (inv.has(b[i]) && inv.get(b[i]) !== a[i]) return false;
    map.set(a[i], b[i]);
    inv.set(b[i], a[i]);
  }
  return true;
}

test('balancedKMeans recovers planted equal clusters exactly; sizes equal; deterministic', async () => {
  const E = 8, S = 16, dim = 24;
  const { points, group } = planted(E, S, dim, 0.3, 11);
  const res = await balancedKMeans(points, E * S, dim, E, { seed: 5 });
  const cnt = new Array(E).fill(0);
  for (const l of res.labels) cnt[l]++;
  assert.deepStrictEqual(cnt, new Array(E).fill(S));
  assert.ok(samePartition(res.labels, group));
  const again = await balancedKMeans(points, E * S, dim, E, { seed: 5 });
  assert.deepStrictEqual(Buffer.from(again.labels.buffer), Buffer.from(res.labels.buffer));
  assert.deepStrictEqual(Buffer.from(again.centroids.buffer), Buffer.from(res.centroids.buffer));
  assert.strictEqual(again.inertia, res.inertia);
});

test('balancedKMeans keeps sizes equal on unstructured data and never beats brute force balance', async () => {
  const r = rng(9);
  const n = 96, dim = 5, k = 6;
  const pts = Float32Array.from({ length: n * dim }, () => r());
  const res = await balancedKMeans(pts, n, dim, k, { seed: 1, nInit: 2 });
  const cnt = new Array(k).fill(0);
  for (const l of res.labels) cnt[l]++;
  assert.deepStrictEqual(cnt, new Array(k).fill(n / k));
  assert.ok(res.iterations >= 1 && Number.isFinite(res.inertia));
});

test('clusterNeurons by weights recovers planted neuron groups; order is contiguous and ascending', async () => {
  const E = 8, S = 16, D = 32, H = E * S;
  const { points, group } = planted(E, S, D, 0.4, 21); // rows = neurons
  const W1 = new Float32Array(D * H); // [D,H]: neuron h is column h
  for (let h = 0; h < H; h++) for (let d = 0; d < D; d++) W1[d * H + h] = points[h * D + d] * (0.5 + (h % 3)); // scale must not matter
  const res = await clusterNeurons(W1, D, H, E, { by: 'weights', seed: 2 });
  assert.ok(samePartition(res.labels, group));
  const again = await clusterNeurons(W1, D, H, E, { by: 'weights', seed: 2 });
  assert.deepStrictEqual(Buffer.from(again.order.buffer), Buffer.from(res.order.buffer));
  assert.strictEqual(res.expertSize, S);
  for (let e = 0; e < E; e++) {
    for (let j = 0; j < S; j++) {
      const o = res.order[e * S + j];
      assert.strictEqual(res.labels[o], e);
      if (j > 0) assert.ok(o > res.order[e * S + j - 1]);
    }
  }
  assert.strictEqual(res.concentration, undefined);
});

test('clusterNeurons by activations recovers planted co-activation groups; concentration reported', async () => {
  const E = 4, S = 16, H = E * S, N = 600;
  const r = rng(33), g = gaussian(r);
  const group = permutation(H, r).map((p) => p % E);
  const acts = new Float32Array(N * H);
  for (let t = 0; t < N; t++) {
    const active = Math.floor(r() * E);
    for (let h = 0; h < H; h++) acts[t * H + h] = Math.max(0, (group[h] === active ? 1.5 : -0.5) + 0.5 * g());
  }
  for (const feature of ['normalized', 'binary'] as const) {
    const res = await clusterNeurons(new Float32Array(8 * H), 8, H, E, { by: 'activations', activations: acts, N, seed: 4, activationFeature: feature, maxTokens: 400 });
    assert.ok(samePartition(res.labels, group), feature);
    const c = res.concentration!;
    assert.strictEqual(c.tokens, 400);
    assert.ok(Math.abs(c.massShare.reduce((a, b) => a + b, 0) - 1) < 1e-9);
    assert.ok(c.expertsFor90 <= 0.5, `expertsFor90 ${c.expertsFor90}`);
  }
});

test('bad inputs throw MoefyError', async () => {
  await assert.rejects(balancedKMeans(new Float32Array(10 * 2), 10, 2, 3, { seed: 1 }), MoefyError);
  await assert.rejects(balancedKMeans(new Float32Array(9 * 2), 10, 2, 5, { seed: 1 }), MoefyError);
  await assert.rejects(clusterNeurons(new Float32Array(4 * 10), 4, 10, 4, { by: 'weights', seed: 1 }), MoefyError);
  await assert.rejects(clusterNeurons(new Float32Array(4 * 8), 4, 8, 4, { by: 'activations', seed: 1 }), MoefyError);
  assert.throws(() => balancedAssign(new Float64Array(10 * 3), 10, 3), MoefyError);
  assert.throws(() => layoutFromLabels(Int32Array.from([0, 0, 0, 1]), 2), MoefyError);
});

test('cluster jobs on worker threads: the same layouts as in one thread and as clusterNeurons called directly', async () => {
  const D = 12, H = 48, E = 4, n = 300;
  const jobs: ClusterJob[] = [1, 2, 3].map((seed) => {
    const g = gaussian(rng(seed));
    const W1 = Float32Array.from({ length: D * H }, () => g()), B1 = Float32Array.from({ length: H }, () => g() * 0.1);
    const Xs = Float32Array.from({ length: n * D }, () => g());
    return { W1, B1, D, H, E, activation: 'relu', Xs, n, by: 'activations', seed };
  });
  const serial = await clusterJobs.run(jobs, { workers: 1 });
  const pooled = await clusterJobs.run(jobs, { workers: 2 });
  for (let k = 0; k < jobs.length; k++) {
    assert.deepStrictEqual([...pooled[k].layout.order], [...serial[k].layout.order], `job ${k}`);
    assert.strictEqual(pooled[k].concentration, serial[k].concentration);
    const j = jobs[k];
    const acts = await computeHiddenActivations(j.Xs, n, D, j.W1, j.B1, 'relu', { threads: 1 });
    const direct = await clusterNeurons(j.W1, D, H, E, { by: 'activations', activations: acts, N: n, seed: j.seed, threads: 1 });
    assert.deepStrictEqual([...pooled[k].layout.order], [...direct.order]);
    assert.deepStrictEqual([...pooled[k].layout.labels], [...direct.labels]);
  }
});
