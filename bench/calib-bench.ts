// Calibration timings at VAR-d16 sizes on random data: balanced k-means (n 4096, k 32, dim 1024), expert norms and
// router training for one layer (D 1024, H 4096, E 32, N = 64·680 tokens). Run: node dist/bench/calib-bench.js [what]
import { balancedKMeans } from '../src/calib/kmeans';
import { computeExpertNorms } from '../src/calib/expert-norms';
import { trainRouter } from '../src/calib/router-train';
import { gaussian, rng } from '../src/calib/random';
import * as os from 'node:os';

/** Wall seconds and process CPU seconds (user + system) of an async call. */
async function timed<T>(f: () => Promise<T>): Promise<[T, string]> {
  const c0 = process.cpuUsage(), t0 = performance.now();
  const r = await f();
  const c = process.cpuUsage(c0);
  return [r, `${((performance.now() - t0) / 1000).toFixed(2)} s wall, ${((c.user + c.system) / 1e6).toFixed(2)} s CPU`];
}

function randn(n: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(rng(seed));
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = g() * scale;
  return a;
}

async function main(): Promise<void> {
  const what = process.argv[2] ?? 'all';
  console.log(`${os.cpus().length} CPUs, load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  const tokens = Number(process.argv[3] ?? 64 * 680);
  if (what === 'all' || what === 'kmeans') {
    const n = 4096, k = 32, dim = 1024;
    const pts = randn(n * dim, 1);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += pts[i * dim + d] ** 2;
      for (let d = 0; d < dim; d++) pts[i * dim + d] /= Math.sqrt(s);
    }
    for (const nInit of [1, 3]) {
      const [r, t] = await timed(() => balancedKMeans(pts, n, dim, k, { seed: 1, maxIter: 30, nInit }));
      console.log(`balancedKMeans n=${n} k=${k} dim=${dim} nInit=${nInit}: ${t}, ${r.iterations} iterations (converged), inertia ${r.inertia.toFixed(2)}`);
    }
    // Harder: 64 planted centres (noisy), so Lloyd runs longer.
    const g = gaussian(rng(7));
    const C = Float32Array.from({ length: 64 * dim }, () => g());
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += (pts[i * dim + d] = C[(i % 64) * dim + d] + 2 * g()) ** 2;
      for (let d = 0; d < dim; d++) pts[i * dim + d] /= Math.sqrt(s);
    }
    const [r, t] = await timed(() => balancedKMeans(pts, n, dim, k, { seed: 1, maxIter: 30 }));
    console.log(`balancedKMeans (64 planted centres) n=${n} k=${k} dim=${dim}: ${t}, ${r.iterations} iterations`);
  }
  if (what === 'all' || what === 'router') {
    const D = 1024, H = 4096, E = 32, N = tokens;
    const X = randn(N * D, 2);
    const W1 = randn(D * H, 3, 1 / Math.sqrt(D)), B1 = randn(H, 4, 0.1), W2 = randn(H * D, 5, 1 / Math.sqrt(H));
    const [norms, t1] = await timed(() => computeExpertNorms(X, N, D, W1, B1, W2, E, 'gelu_tanh'));
    console.log(`computeExpertNorms (gram) N=${N} D=${D} H=${H} E=${E}: ${t1}`);
    if (process.env.CALIB_BENCH_DIRECT) {
      const [, t2] = await timed(() => computeExpertNorms(X, N, D, W1, B1, W2, E, 'gelu_tanh', { method: 'direct' }));
      console.log(`computeExpertNorms (direct) N=${N}: ${t2}`);
    }
    const [r, t3] = await timed(() => trainRouter(X, norms, N, D, E, { seed: 1, epochs: Number(process.argv[4] ?? 3) }));
    console.log(`trainRouter N=${N} D=${D} E=${E} width 128, ${r.epochs} epochs, batch ${r.batchSize}, ${r.steps} steps: ${t3}; held-out R² ${r.heldOutR2.toFixed(3)} (random data: targets barely vary, R² is not meaningful here)`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
