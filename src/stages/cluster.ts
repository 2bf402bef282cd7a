// Stage cluster → ExpertClustering: balanced k-means of each FFN's hidden neurons into E equal experts (seeded), by
// the L2-normalised fc1 rows as DMoE-VAR does, or by co-activation on the captured data. Reports how concentrated
// activations are per expert. Layers run side by side in the layer pool (job kind 'cluster').
import { fc1Weights } from '../analysis/ffn-weights';
import type { FfnSite } from '../analysis/var-structure';
import { computeHiddenActivations } from '../calib/expert-norms';
import { clusterNeurons, ExpertLayout } from '../calib/kmeans';
import { layerJobKind } from '../calib/layer-pool';
import { deriveSeed } from '../calib/random';
import type { ClusterBy, Recipe } from '../convert-options';
import type { ActivationKind } from '../op';
import { stage } from './stage';
import { ExpertClustering, FfnInputSample } from './types';

export type ClusterOptions = Pick<Recipe, 'experts' | 'clusterBy' | 'seed'>;

export interface ClusterJob {
  /** fc1 [D, H] and its bias, in the original neuron order. */
  W1: Float32Array;
  B1: Float32Array;
  D: number;
  H: number;
  E: number;
  activation: ActivationKind;
  /** Calibration tokens [n, D] for clustering by co-activation and the concentration report. */
  Xs: Float32Array;
  n: number;
  by: ClusterBy;
  seed: number;
}

export interface ClusterJobResult {
  layout: ExpertLayout;
  /** Mean fraction of experts holding 90% of a token's activation mass. */
  concentration: number | null;
}

/** One layer's neurons split into experts. */
export const clusterJobs = layerJobKind<ClusterJob, ClusterJobResult>({
  name: 'cluster',
  module: __filename,
  async run(j, { threads }) {
    const acts = await computeHiddenActivations(j.Xs, j.n, j.D, j.W1, j.B1, j.activation, { threads });
    const r = await clusterNeurons(j.W1, j.D, j.H, j.E, { by: j.by, activations: acts, N: j.n, seed: j.seed, threads });
    return { layout: { experts: r.experts, expertSize: r.expertSize, order: r.order, labels: r.labels }, concentration: r.concentration?.expertsFor90 ?? null };
  },
  resultBuffers: (r) => [r.layout.order.buffer, r.layout.labels.buffer],
});

export const clusterStage = stage({
  name: 'cluster',
  needs: ['sites', 'activations', 'sample', 'recipe'],
  gives: 'clustering',
  steps: ({ sites }) => sites.length,
  run: ({ sites, activations, sample, recipe }, progress) => cluster(sites, activations.experts, sample, recipe, (k) => progress(k + 1)),
  summary: (c, { sites, recipe }) => {
    const conc = c.concentration.filter((x): x is number => x !== null);
    const mean = conc.length ? conc.reduce((a, b) => a + b, 0) / conc.length : NaN;
    return `${sites.length} FFNs split into ${recipe.experts} experts of ${sites[0].H / recipe.experts} by ${recipe.clusterBy}; a token needs ${(mean * 100).toFixed(1)}% of the experts for 90% of its activation mass (mean)`;
  },
  layerReport: (c, k, { recipe }) => ({ clusterBy: recipe.clusterBy, concentration: c.concentration[k] }),
});

/** Experts of every FFN; `activations` are the experts' activation per layer. */
export async function cluster(sites: FfnSite[], activations: ActivationKind[], sample: FfnInputSample, o: ClusterOptions, onLayer?: (k: number) => void): Promise<ExpertClustering> {
  const E = o.experts;
  const jobs: ClusterJob[] = sites.map((s, k) => {
    const { W1, B1 } = fc1Weights(s);
    const c = sample.layers[k];
    const X = c.X.data;
    // Activations on a seeded subsample of captured tokens: for clustering by activations and the concentration report.
    const n = Math.min(c.N, 2048);
    const stride = c.N / n;
    const Xs = new Float32Array(n * s.D);
    for (let i = 0; i < n; i++) Xs.set(X.subarray(Math.floor(i * stride) * s.D, (Math.floor(i * stride) + 1) * s.D), i * s.D);
    return { W1, B1, D: s.D, H: s.H, E, activation: activations[k], Xs, n, by: o.clusterBy, seed: deriveSeed(o.seed, k) };
  });
  // Layers side by side, one per core.
  const results = await clusterJobs.run(jobs, { onDone: (done) => onLayer?.(done - 1) });
  return { layouts: results.map((r) => r.layout), concentration: results.map((r) => r.concentration) };
}
