// Stage trainRouters → RouterSet: per layer a router MLP D → width → E (GELU, no biases, Abs; the graph form is
// src/analysis/router-graph.ts) trained on the captured tokens to regress each expert's true output L2 norm (fc2
// bias excluded), MSE + Adam, seeded, with a held-out split. Layers run side by side in the layer pool (job kind
// 'router'; the captures are lent to the workers).
// For the absolute routing rule each router's norms are normalised (the factor folded into its last MatMul): divided
// by the layer's RMS expert energy √(mean over the MoE scales' tokens of Σ_e norm_e²), so that one threshold skips
// experts of the same share of their layer's output in every layer (the smallest contributions of all layers first).
// The relative and top-k rules compare a token's norms with each other: a per-layer factor changes nothing there.
import { computeExpertNorms } from '../calib/expert-norms';
import { layerJobKind } from '../calib/layer-pool';
import { deriveSeed } from '../calib/random';
import { predictNorms, trainRouter, TrainRouterOptions, TrainRouterResult } from '../calib/router-train';
import { scaledNormsW2 } from '../analysis/router-graph';
import type { Recipe } from '../convert-options';
import { stage } from './stage';
import { ExpertWeights, FfnInputSample, LayerFfn, RouterSet } from './types';

export type RouterOptions = Pick<Recipe, 'experts' | 'routerWidth' | 'routerEpochs' | 'routerTarget' | 'seed'>;

export interface RouterJob extends LayerFfn {
  /** Regress √norm (squared back for `predicted`). */
  sqrt: boolean;
  train: Omit<TrainRouterOptions, 'onProgress' | 'threads'>;
}

export interface RouterJobResult {
  router: TrainRouterResult;
  /** True expert norms [N, E]. */
  trueNorms: Float32Array;
  /** The router's predicted norms [N, E] (squared when sqrt). */
  predicted: Float32Array;
}

/** One layer's router: norms, training and predictions. */
export const routerJobs = layerJobKind<RouterJob, RouterJobResult>({
  name: 'router',
  module: __filename,
  async run(j, { threads, checkStop }) {
    const trueNorms = await computeExpertNorms(j.X, j.N, j.D, j.W1, j.B1, j.W2, j.E, j.activation, { threads });
    checkStop();
    // Fitting √norm weighs the small norms near the threshold more than MSE on raw norms does (measured: better
    // routing at equal active fraction); the emitted router squares its output back into a norm.
    const fit = j.sqrt ? trueNorms.map(Math.sqrt) : trueNorms;
    const router = await trainRouter(j.X, fit, j.N, j.D, j.E, { ...j.train, threads, onProgress: checkStop });
    const p = await predictNorms(j.X, j.N, j.D, router.W1, router.W2, j.E, router.width, threads);
    return { router, trueNorms, predicted: j.sqrt ? p.map((x) => x * x) : p };
  },
  resultBuffers: (r) => [r.trueNorms.buffer, r.predicted.buffer, r.router.W1.buffer, r.router.W2.buffer],
});

/** √(mean over the tokens of scales ≥ `first` (0-based; every token when none is) of Σ_e norm_e²) of norms [N, E]; 1 when all are 0. */
export function rmsExpertEnergy(norms: Float32Array, E: number, scaleOfToken: Int32Array, first: number): number {
  const all = !scaleOfToken.some((s) => s >= first);
  let sum = 0, n = 0;
  for (let t = 0; t < scaleOfToken.length; t++) {
    if (!all && scaleOfToken[t] < first) continue;
    n++;
    for (let e = 0; e < E; e++) sum += norms[t * E + e] ** 2;
  }
  return Math.sqrt(sum / Math.max(1, n)) || 1;
}

/**
 * The routers with their norms in units of their layer's RMS expert energy on the MoE scales (the absolute rule's
 * normalisation, folded into each router's last MatMul): new weights, true norms scaled, predictions made again.
 */
export async function normaliseRouters(set: RouterSet, sample: FfnInputSample, fromScale: number): Promise<RouterSet> {
  const out: RouterSet = { routers: [], norms: [] };
  for (const [k, r] of set.routers.entries()) {
    const c = sample.layers[k];
    const f = 1 / rmsExpertEnergy(set.norms[k].trueNorms, r.E, c.scaleOfToken, fromScale - 1);
    const W2 = scaledNormsW2(r.W2, r.squared, f);
    const p = await predictNorms(c.X.data, c.N, c.D, r.W1, W2, r.E, r.width);
    out.routers.push({ ...r, W2 });
    out.norms.push({ trueNorms: set.norms[k].trueNorms.map((v) => v * f), predicted: r.squared ? p.map((x) => x * x) : p });
  }
  return out;
}

export const routersStage = stage({
  name: 'routers',
  needs: ['sample', 'weights', 'recipe'],
  gives: 'routers',
  steps: ({ sample }) => sample.layers.length,
  // Routers learn the permuted experts' norms, so expert e of the router is expert e of the op.
  run: async ({ sample, weights, recipe }, progress) => {
    const set = await trainRouters(sample, weights, recipe, (k) => progress(k + 1));
    return recipe.routing === 'absolute' ? normaliseRouters(set, sample, recipe.fromScale) : set;
  },
  summary: (set) => {
    const r2 = set.routers.map((r) => r.heldOutR2);
    return `trained ${set.routers.length} routers (width ${set.routers[0].width}); held-out R² ${Math.min(...r2).toFixed(3)}–${Math.max(...r2).toFixed(3)}${set.routers[0].squared ? ' (of √norm)' : ''}`;
  },
  layerReport: (set, k) => ({ routerR2: set.routers[k].heldOutR2, routerRecall: set.routers[k].recall }),
});

export async function trainRouters(sample: FfnInputSample, weights: ExpertWeights[], o: RouterOptions, onLayer?: (k: number) => void): Promise<RouterSet> {
  const E = o.experts;
  const sqrt = o.routerTarget === 'sqrt';
  const width = o.routerWidth;
  const jobs: RouterJob[] = sample.layers.map((c, k) => {
    const w = weights[k];
    return {
      X: c.X, N: c.N, D: c.D, W1: w.W1, B1: w.B1, W2: w.W2, E, activation: w.activation, sqrt,
      train: { width, epochs: o.routerEpochs, seed: deriveSeed(o.seed, 100 + k) },
    };
  });
  // Layers side by side, one per core.
  const results = await routerJobs.run(jobs, { onDone: (done) => onLayer?.(done - 1) });
  const set: RouterSet = { routers: [], norms: [] };
  for (const [k, { router: r, trueNorms, predicted }] of results.entries()) {
    set.norms.push({ trueNorms, predicted });
    set.routers.push({ D: sample.layers[k].D, width, E, W1: r.W1, W2: r.W2, squared: sqrt, heldOutR2: r.heldOutR2, recall: r.recall });
  }
  return set;
}
