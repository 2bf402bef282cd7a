// Stage repair → RepairedExperts: each FFN's experts refitted to the dense FFN's outputs on the calibration tokens,
// under the routing of the chosen routers and thresholds (experts a token does not run are zeroed in the fit).
// First the closed form (W2, B2 by ridge least squares, calib/repair.ts), then, with repairEpochs, gradient fitting
// of all four tensors from there (calib/expert-train.ts). The routers and thresholds are kept: fitting them again on
// the repaired experts measured worse (the experts were fitted for the routing they saw).
import { trainExperts } from '../calib/expert-train';
import { deriveSeed } from '../calib/random';
import { ffnOutputs, repairExperts, routingMask } from '../calib/repair';
import type { ActivationKind } from '../op';
import { ExpertWeights, FfnInputSample, LayerRepair, RepairedExperts, RouterSet, ThresholdPlan } from './types';

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
  const out: RepairedExperts = { weights: [], layers: [], summary: '' };
  for (let k = 0; k < sample.layers.length; k++) {
    const c = sample.layers[k];
    const w = weights[k];
    const target = await ffnOutputs(c.X, c.N, c.D, w, original[k]);
    const routing = routingMask(routers.norms[k].predicted, c.N, E, (n) => plan.thresholds[c.scaleOfToken[n]]);
    const fit = await repairExperts({ X: c.X, N: c.N, D: c.D, target, weights: w, activation: w.activation, routing });
    let repaired: ExpertWeights = { ...w, W2: fit.W2, B2: fit.B2 };
    const rep: LayerRepair = { ridge: fit.ridge, heldOutRelErrBefore: fit.heldOut.before, heldOutRelErrClosedForm: fit.heldOut.after, heldOutRelErrAfter: fit.heldOut.after, epochs: 0 };
    if (o.repairEpochs > 0) {
      const t = await trainExperts({ X: c.X, N: c.N, D: c.D, target, weights: repaired, activation: w.activation, routing }, { epochs: o.repairEpochs, seed: deriveSeed(o.seed, 300 + k) });
      repaired = { ...repaired, ...t.weights };
      rep.heldOutRelErrAfter = t.heldOutAfter;
      rep.epochs = t.bestEpoch;
    }
    out.weights.push(repaired);
    out.layers.push(rep);
    onLayer?.(k);
  }
  const errs = out.layers.map((r) => `${(100 * r.heldOutRelErrBefore).toFixed(1)}→${(100 * r.heldOutRelErrAfter).toFixed(1)}%`);
  out.summary = `refitted the experts of ${out.layers.length} FFNs to the dense outputs under the routing (${o.repairEpochs > 0 ? `closed form + up to ${o.repairEpochs} epochs` : 'closed form'}); FFN error on held-out calibration tokens ${errs.join(', ')}`;
  return out;
}
