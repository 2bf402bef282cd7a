// Stage trainRouters → RouterSet: per layer a router MLP D → width → E (GELU, no biases, Abs) trained on the captured
// tokens to regress each expert's true output L2 norm (fc2 bias excluded), MSE + Adam, seeded, with a held-out split.
import { deriveSeed } from '../calib/random';
import { RouterJob, runRouterJobs } from '../calib/layer-pool';
import { defaultRouterWidth, type RouterTarget } from '../convert-options';
import { ExpertWeights, FfnInputSample, RouterSet } from './types';

export interface RouterOptions {
  experts: number;
  /** Default: defaultRouterWidth(D). */
  routerWidth?: number;
  routerEpochs: number;
  routerTarget: RouterTarget;
  seed: number;
}

export async function trainRouters(sample: FfnInputSample, weights: ExpertWeights[], o: RouterOptions, onLayer?: (k: number) => void): Promise<RouterSet> {
  const E = o.experts;
  const sq = o.routerTarget === 'sqrt';
  const width = o.routerWidth ?? defaultRouterWidth(sample.layers[0]?.D ?? 0);
  const jobs: RouterJob[] = sample.layers.map((c, k) => {
    const w = weights[k];
    return {
      X: c.X, N: c.N, D: c.D, W1: w.W1, B1: w.B1, W2: w.W2, E, activation: w.activation, sqrt: sq,
      train: { width, epochs: o.routerEpochs, seed: deriveSeed(o.seed, 100 + k) },
    };
  });
  // Layers side by side, one per core (the captures are lent to the workers and given back).
  const results = await runRouterJobs(jobs, { onDone: (done) => onLayer?.(done - 1) });
  jobs.forEach((j, k) => (sample.layers[k].X = j.X));
  const set: RouterSet = { routers: [], norms: [], summary: '' };
  for (const [k, { router: r, trueNorms, predicted }] of results.entries()) {
    set.norms.push({ trueNorms, predicted });
    set.routers.push({ D: sample.layers[k].D, width, E, W1: r.W1, W2: r.W2, squared: sq, heldOutR2: r.heldOutR2, recall: r.recall });
  }
  const r2 = set.routers.map((r) => r.heldOutR2);
  set.summary = `trained ${set.routers.length} routers (width ${width}); held-out R² ${Math.min(...r2).toFixed(3)}–${Math.max(...r2).toFixed(3)}${sq ? ' (of √norm)' : ''}`;
  return set;
}
