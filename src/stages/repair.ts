// Stage repair → RepairedExperts: each FFN's experts refitted to the dense FFN's outputs on the calibration tokens,
// under the routing of the chosen routers and thresholds (experts a token does not run are zeroed in the fit).
// First the closed form (W2, B2 by ridge least squares, calib/repair.ts), then, with repairEpochs, gradient fitting
// of all four tensors from there (calib/expert-train.ts); layers side by side in the layer pool (job kind 'repair').
// With skipBias the skipped-expert vectors (the op's skip_bias) are fitted too: jointly with W2, B2 in the closed form
// and trained with the rest in the epochs, or, without the repair, alone on the experts as they are (then the
// experts, the dense scales and threshold 0 stay exactly the dense model's).
// The routers and thresholds are kept: fitting them again on the repaired experts measured worse (the experts were
// fitted for the routing they saw). It runs when the recipe asks (convert-options.ts: resolveForModel).
import { layerJobKind } from '../calib/layer-pool';
import type { Recipe } from '../convert-options';
import { trainExperts } from '../calib/expert-train';
import { deriveSeed } from '../calib/random';
import { ffnOutputs, repairExperts, routingMask, type RepairFit } from '../calib/repair';
import type { ActivationKind } from '../op';
import { stage } from './stage';
import { ExpertWeights, FfnInputSample, LayerFfn, RepairedExperts, RouterSet, ThresholdPlan } from './types';

export type RepairOptions = Pick<Recipe, 'experts' | 'repair' | 'repairEpochs' | 'skipBias' | 'seed'>;

/** The FFN's weights before the repair; X holds the dense model's FFN inputs. */
export interface RepairJob extends LayerFfn {
  B2: Float32Array | null;
  /** The activation of the dense FFN that is the fit's target (the model's own when repairing). */
  original: ActivationKind;
  /** What the closed form fits. */
  fit: RepairFit;
  /** [N, E] 1 where the routing runs the expert on the token. */
  mask: Uint8Array;
  /** Gradient epochs after the closed form (0: closed form only). */
  epochs: number;
  seed: number;
}

export interface RepairJobResult {
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  B2: Float32Array;
  /** [E, D], or null when not fitted. */
  skipBias: Float32Array | null;
  ridge: number;
  heldOutRelErrBefore: number;
  heldOutRelErrClosedForm: number;
  heldOutRelErrAfter: number;
  /** Best epoch of the gradient fit (0: closed form only). */
  epochs: number;
}

/** One layer's experts refitted to the dense FFN under the routing: the closed form, then the gradient epochs. */
export const repairJobs = layerJobKind<RepairJob, RepairJobResult>({
  name: 'repair',
  module: __filename,
  async run(j, { threads, checkStop }) {
    const w = { W1: j.W1, B1: j.B1, W2: j.W2, B2: j.B2 };
    // The gradient epochs need the dense outputs as an array; the closed form alone computes them in its moments.
    const target = j.epochs > 0 ? await ffnOutputs(j.X, j.N, j.D, w, j.original, 4096, threads) : null;
    checkStop();
    const routing = { mask: j.mask, E: j.E };
    const fit = await repairExperts({ X: j.X, N: j.N, D: j.D, target: target ?? { denseActivation: j.original }, weights: w, activation: j.activation, routing }, { threads, fit: j.fit });
    const out: RepairJobResult = {
      W1: j.W1, B1: j.B1, W2: fit.W2, B2: fit.B2, skipBias: fit.skipBias, ridge: fit.ridge,
      heldOutRelErrBefore: fit.heldOut.before, heldOutRelErrClosedForm: fit.heldOut.after, heldOutRelErrAfter: fit.heldOut.after, epochs: 0,
    };
    if (target) {
      checkStop();
      const t = await trainExperts({ X: j.X, N: j.N, D: j.D, target, weights: { ...w, W2: fit.W2, B2: fit.B2 }, skipBias: fit.skipBias, activation: j.activation, routing }, { epochs: j.epochs, seed: j.seed, threads, onEpoch: checkStop });
      const { SB, ...ffn } = t.weights;
      Object.assign(out, ffn);
      if (SB) out.skipBias = SB;
      out.heldOutRelErrAfter = t.heldOutAfter;
      out.epochs = t.bestEpoch;
    }
    return out;
  },
  resultBuffers: (r) => [r.W1.buffer, r.B1.buffer, r.W2.buffer, r.B2.buffer, ...(r.skipBias ? [r.skipBias.buffer] : [])],
});

export const repairStage = stage({
  name: 'repair',
  needs: ['sample', 'weights', 'activations', 'routers', 'plan', 'recipe'],
  gives: 'repaired',
  runs: ({ recipe }) => recipe.repair || recipe.skipBias,
  steps: ({ sample }) => sample.layers.length,
  run: ({ sample, weights, activations, routers, plan, recipe }, progress) => repair(sample, weights, activations.original, routers, plan, recipe, (k) => progress(k + 1)),
  summary: (out, { recipe }) => {
    const errs = out.layers.map((r) => `${(100 * r.heldOutRelErrBefore).toFixed(1)}→${(100 * r.heldOutRelErrAfter).toFixed(1)}%`);
    const what = !recipe.repair ? `fitted the skipped-expert compensation (skip_bias) of ${out.layers.length} FFNs to the dense outputs under the routing (closed form, experts kept)`
      : `refitted the experts of ${out.layers.length} FFNs${recipe.skipBias ? ' and their skip_bias' : ''} to the dense outputs under the routing (${recipe.repairEpochs > 0 ? `closed form + up to ${recipe.repairEpochs} epochs` : 'closed form'})`;
    return `${what}; FFN error on held-out calibration tokens ${errs.join(', ')}`;
  },
  layerReport: (out, k) => ({ repair: out?.layers[k] ?? null }),
});

/**
 * `sample` holds the dense model's FFN inputs when repairing; `original[k]` is layer k's own activation (the dense FFN
 * is the permuted weights with it, every expert on; without the repair, the experts' own FFN is the target);
 * `routers` and `plan` give the routing the experts are fitted under.
 */
export async function repair(sample: FfnInputSample, weights: ExpertWeights[], original: ActivationKind[], routers: RouterSet, plan: ThresholdPlan, o: RepairOptions, onLayer?: (k: number) => void): Promise<RepairedExperts> {
  const E = o.experts;
  const fit: RepairFit = { experts: o.repair, skipBias: o.skipBias };
  const jobs: RepairJob[] = sample.layers.map((c, k) => {
    const w = weights[k];
    const routing = routingMask(routers.norms[k].predicted, c.N, E, plan.routing, (n) => plan.thresholds[c.scaleOfToken[n]]);
    return {
      X: c.X, N: c.N, D: c.D, W1: w.W1, B1: w.B1, W2: w.W2, B2: w.B2, activation: w.activation, original: o.repair ? original[k] : w.activation,
      fit, mask: routing.mask, E, epochs: o.repair ? o.repairEpochs : 0, seed: deriveSeed(o.seed, 300 + k),
    };
  });
  // Layers side by side, one per core, each single-threaded.
  const results = await repairJobs.run(jobs, { onDone: (done) => onLayer?.(done - 1) });
  return {
    // Without the repair the experts are the given ones (the same arrays), with their skip_bias.
    weights: results.map((r, k) => ({
      ...weights[k],
      ...(o.repair ? { W1: r.W1, B1: r.B1, W2: r.W2, B2: r.B2 } : {}),
      ...(r.skipBias ? { skipBias: r.skipBias } : {}),
    })),
    layers: results.map((r) => ({ ridge: r.ridge, heldOutRelErrBefore: r.heldOutRelErrBefore, heldOutRelErrClosedForm: r.heldOutRelErrClosedForm, heldOutRelErrAfter: r.heldOutRelErrAfter, epochs: r.epochs, skipBias: r.skipBias !== null })),
  };
}
