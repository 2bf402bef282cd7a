// Stage repair → RepairedExperts: each FFN's experts refitted to the dense FFN's outputs on the calibration tokens,
// under the routing of the chosen routers and thresholds (experts a token does not run are zeroed in the fit).
// First the closed form (W2, B2 by ridge least squares, calib/repair.ts), then, with repairEpochs, gradient fitting
// of all four tensors from there (calib/expert-train.ts); layers side by side in the layer pool. The routers and
// thresholds are kept: fitting them again on the repaired experts measured worse (the experts were fitted for the
// routing they saw).
import { RepairJob, runRepairJobs } from '../calib/layer-pool';
import { deriveSeed } from '../calib/random';
import { routingMask } from '../calib/repair';
import type { ActivationKind } from '../op';
import { ExpertWeights, FfnInputSample, RepairedExperts, RouterSet, ThresholdPlan } from './types';

export interface RepairOptions {
  experts: number;
  repairEpochs: number;
  seed: number;
}

/**
 * `sample` holds the dense model's FFN inputs; `original[k]` is layer k's own activation (the dense FFN is the
 * permuted weights with it, every expert on); `routers` and `plan` give the routing the experts are fitted under.
 */
export async function repair(sample: FfnInputSample, weights: ExpertWeights[], original: ActivationKind[], routers: RouterSet, plan: ThresholdPlan, o: RepairOptions, onLayer?: (k: number) => void): Promise<RepairedExperts> {
  const E = o.experts;
  const jobs: RepairJob[] = sample.layers.map((c, k) => {
    const w = weights[k];
    const routing = routingMask(routers.norms[k].predicted, c.N, E, (n) => plan.thresholds[c.scaleOfToken[n]]);
    return { X: c.X, N: c.N, D: c.D, W1: w.W1, B1: w.B1, W2: w.W2, B2: w.B2, activation: w.activation, original: original[k], mask: routing.mask, E, epochs: o.repairEpochs, seed: deriveSeed(o.seed, 300 + k) };
  });
  // Layers side by side, one per core, each single-threaded (the captures are lent to the workers and given back).
  const results = await runRepairJobs(jobs, { onDone: (done) => onLayer?.(done - 1) });
  jobs.forEach((j, k) => (sample.layers[k].X = j.X));
  const out: RepairedExperts = { weights: [], layers: [], summary: '' };
  results.forEach((r, k) => {
    out.weights.push({ ...weights[k], W1: r.W1, B1: r.B1, W2: r.W2, B2: r.B2 });
    out.layers.push({ ridge: r.ridge, heldOutRelErrBefore: r.heldOutRelErrBefore, heldOutRelErrClosedForm: r.heldOutRelErrClosedForm, heldOutRelErrAfter: r.heldOutRelErrAfter, epochs: r.epochs });
  });
  const errs = out.layers.map((r) => `${(100 * r.heldOutRelErrBefore).toFixed(1)}→${(100 * r.heldOutRelErrAfter).toFixed(1)}%`);
  out.summary = `refitted the experts of ${out.layers.length} FFNs to the dense outputs under the routing (${o.repairEpochs > 0 ? `closed form + up to ${o.repairEpochs} epochs` : 'closed form'}); FFN error on held-out calibration tokens ${errs.join(', ')}`;
  return out;
}
