// Stage permute → ExpertWeights: reorder W1 columns, B1 and W2 rows so that expert e owns a contiguous block; fc2's
// bias stays outside.
import { fc1Weights, fc2Weights } from '../analysis/ffn-weights';
import type { FfnSite } from '../analysis/var-structure';
import { permuteFfn } from '../calib/expert-norms';
import type { ActivationKind } from '../op';
import { stage } from './stage';
import { ExpertClustering, ExpertWeights } from './types';

export const permuteStage = stage({
  name: 'permute',
  needs: ['sites', 'clustering', 'activations'],
  gives: 'weights',
  steps: () => 1,
  run: ({ sites, clustering, activations }) => permute(sites, clustering, activations.experts),
  summary: (w) => `permuted ${w.length} FFNs into expert-contiguous layout`,
});

export function permute(sites: FfnSite[], clustering: ExpertClustering, activations: ActivationKind[]): ExpertWeights[] {
  return sites.map((s, k) => {
    const { W1, B1 } = fc1Weights(s);
    const { W2, B2 } = fc2Weights(s);
    const p = permuteFfn(W1, B1, W2, s.D, clustering.layouts[k].order);
    return { W1: p.W1, B1: p.B1, W2: p.W2, B2, activation: activations[k] };
  });
}
