// Stage trainRouters → RouterSet: per layer a router MLP D → width → E (GELU, no biases, Abs) trained on the captured
// tokens to regress each expert's true output L2 norm (fc2 bias excluded), MSE + Adam, seeded, with a held-out split.
import { computeExpertNorms } from '../calib/expert-norms';
import { deriveSeed } from '../calib/random';
import { predictNorms, trainRouter } from '../calib/router-train';
import type { RouterTarget } from '../convert-options';
import { ExpertWeights, FfnInputSample, RouterSet } from './types';

export interface RouterOptions {
  experts: number;
  routerWidth: number;
  routerEpochs: number;
  routerTarget: RouterTarget;
  seed: number;
}

export async function trainRouters(sample: FfnInputSample, weights: ExpertWeights[], o: RouterOptions, onLayer?: (k: number) => void): Promise<RouterSet> {
  const E = o.experts;
  const set: RouterSet = { routers: [], norms: [], summary: '' };
  for (let k = 0; k < sample.layers.length; k++) {
    const c = sample.layers[k];
    const w = weights[k];
    const targets = await computeExpertNorms(c.X, c.N, c.D, w.W1, w.B1, w.W2, E, w.activation);
    // Fitting √norm weighs the small norms near the threshold more than MSE on raw norms does (measured: better
    // routing at equal active fraction); the emitted router squares its output back into a norm.
    const sq = o.routerTarget === 'sqrt';
    const fit = sq ? targets.map(Math.sqrt) : targets;
    const r = await trainRouter(c.X, fit, c.N, c.D, E, { width: o.routerWidth, epochs: o.routerEpochs, seed: deriveSeed(o.seed, 100 + k) });
    const p = await predictNorms(c.X, c.N, c.D, r.W1, r.W2, E, o.routerWidth);
    const predicted = sq ? p.map((x) => x * x) : p;
    set.norms.push({ trueNorms: targets, predicted });
    set.routers.push({ W1: r.W1, W2: r.W2, width: o.routerWidth, heldOutR2: r.heldOutR2, recall: r.recall, squared: sq });
    onLayer?.(k);
  }
  const r2 = set.routers.map((r) => r.heldOutR2);
  set.summary = `trained ${set.routers.length} routers (width ${o.routerWidth}); held-out R² ${Math.min(...r2).toFixed(3)}–${Math.max(...r2).toFixed(3)}${o.routerTarget === 'sqrt' ? ' (of √norm)' : ''}`;
  return set;
}
