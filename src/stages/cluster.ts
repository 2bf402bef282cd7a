// Stage cluster → ExpertClustering: balanced k-means of each FFN's hidden neurons into E equal experts (seeded), by
// the L2-normalised fc1 rows as DMoE-VAR does, or by co-activation on the captured data. Reports how concentrated
// activations are per expert.
import { fc1Weights } from '../analysis/ffn-weights';
import type { FfnSite } from '../analysis/var-structure';
import { ClusterJob, runClusterJobs } from '../calib/layer-pool';
import { deriveSeed } from '../calib/random';
import type { ClusterBy } from '../convert-options';
import { MoefyError } from '../errors';
import type { ActivationKind } from '../op';
import { ExpertClustering, FfnInputSample } from './types';

export interface ClusterOptions {
  experts: number;
  clusterBy: ClusterBy;
  seed: number;
}

/** Experts of every FFN; `activations` are the experts' activation per layer (after relufy). */
export async function cluster(sites: FfnSite[], activations: ActivationKind[], sample: FfnInputSample, o: ClusterOptions, onLayer?: (k: number) => void): Promise<ExpertClustering> {
  const E = o.experts;
  const jobs: ClusterJob[] = sites.map((s, k) => {
    if (s.H % E !== 0) throw new MoefyError(`--experts ${E} does not divide the FFN hidden size H = ${s.H} of block ${s.block}`);
    const { W1, B1 } = fc1Weights(s);
    const c = sample.layers[k];
    // Activations on a seeded subsample of captured tokens: for clustering by activations and the concentration report.
    const n = Math.min(c.N, 2048);
    const stride = c.N / n;
    const Xs = new Float32Array(n * s.D);
    for (let i = 0; i < n; i++) Xs.set(c.X.subarray(Math.floor(i * stride) * s.D, (Math.floor(i * stride) + 1) * s.D), i * s.D);
    return { W1, B1, D: s.D, H: s.H, E, activation: activations[k], Xs, n, by: o.clusterBy, seed: deriveSeed(o.seed, k) };
  });
  // Layers side by side, one per core.
  const results = await runClusterJobs(jobs, { onDone: (done) => onLayer?.(done - 1) });
  const layouts = results.map((r) => r.layout);
  const concentration = results.map((r) => r.concentration);
  const conc = concentration.filter((x): x is number => x !== null);
  const mean = conc.length ? conc.reduce((a, b) => a + b, 0) / conc.length : NaN;
  return { layouts, concentration, summary: `${sites.length} FFNs split into ${E} experts of ${sites[0].H / E} by ${o.clusterBy}; a token needs ${(mean * 100).toFixed(1)}% of the experts for 90% of its activation mass (mean)` };
}
