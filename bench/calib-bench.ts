// Calibration timings at VAR-d16 sizes on random data: balanced k-means (n 4096, k 32, dim 1024), expert norms and
// router training for one layer (D 1024, H 4096, E 32, N = 64·680 tokens). Run: node dist/bench/calib-bench.js [what]
import { balancedKMeans } from '../src/calib/kmeans';
import { computeExpertNorms } from '../src/calib/expert-norms';
import { trainRouter } from '../src/calib/router-train';
import { gaussian, rng } from '../src/calib/random';

function randn(n: number, seed: number, scale = 1): Float32Array {
  const g = gaussian(rng(seed));
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = g() * scale;
  return a;
}

async function main(): Promise<void> {
  const what = process.argv[2] ?? 'all';
  const tokens = Number(process.argv[3] ?? 64 * 680);
  if (what === 'all' || what === 'kmeans') {
    const n = 4096, k = 32, dim = 1024;
    const pts = randn(n * dim, 1);
    for (let i = 0; i < n; i++) {
      let s = 0;
      for (let d = 0; d < dim; d++) s += pts[i * dim + d] ** 2;
      for (let d = 0; d < dim; d++) pts[i * dim + d] /= Math.sqrt(s);
    }
    for (const maxIter of [30]) {
      const t0 = performance.now();
      const r = await balancedKMeans(pts, n, dim, k, { seed: 1, maxIter, tol: 0 });
      console.log(`balancedKMeans n=${n} k=${k} dim=${dim}: ${((performance.now() - t0) / 1000).toFixed(2)} s, ${r.iterations} iterations, inertia ${r.inertia.toFixed(2)}`);
    }
  }
  if (what === 'all' || what === 'router') {
    const D = 1024, H = 4096, E = 32, N = tokens;
    const X = randn(N * D, 2);
    const W1 = randn(D * H, 3, 1 / Math.sqrt(D)), B1 = randn(H, 4, 0.1), W2 = randn(H * D, 5, 1 / Math.sqrt(H));
    let t0 = performance.now();
    const norms = await computeExpertNorms(X, N, D, W1, B1, W2, E, 'gelu_tanh');
    console.log(`computeExpertNorms N=${N} D=${D} H=${H} E=${E}: ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    t0 = performance.now();
    const r = await trainRouter(X, norms, N, D, E, { seed: 1, epochs: Number(process.argv[4] ?? 3) });
    console.log(`trainRouter N=${N} D=${D} E=${E} width 128, ${r.epochs} epochs, batch ${r.batchSize}: ${((performance.now() - t0) / 1000).toFixed(2)} s, held-out R² ${r.heldOutR2.toFixed(3)}`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
