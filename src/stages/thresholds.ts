// Stage chooseThresholds → ThresholdPlan: the routing rule (--routing) and per-scale thresholds for scales
// from-scale…last: given (--threshold), from DMoE-VAR's τ (--tau, threshold = 1 − τ), or chosen under the rule on the
// calibration data for a FLOP budget (--budget, default 0.6; routers included: what the user pays), non-decreasing
// toward finer scales as the paper found best (top-k: k non-increasing). Scales before from-scale get 0 (every
// expert: the dense FFN).
import { routerFlopsPerToken } from '../analysis/flops';
import type { PatchLayout } from '../analysis/var-structure';
import { activeFraction, chooseThresholds as chooseForBudget, thresholdsFromTau } from '../calib/thresholds';
import type { Recipe } from '../convert-options';
import { MoefyError } from '../errors';
import { formatThreshold, scaleRange } from '../format';
import { topkCount } from '../op';
import { stage } from './stage';
import { FfnInputSample, RouterSet, ThresholdPlan } from './types';

export interface ThresholdOptions extends Pick<Recipe, 'experts' | 'fromScale' | 'thresholds' | 'tau' | 'budget' | 'routing'> {
  /**
   * The routers' FLOPs over the dense FFN's, per token (the same on every scale): the budget is what the user pays,
   * so the experts get the budget less this.
   */
  routerShare?: number;
}

export const thresholdsStage = stage({
  name: 'thresholds',
  needs: ['structure', 'sites', 'sample', 'routers', 'recipe'],
  gives: 'plan',
  steps: () => 1,
  run: ({ structure, sites, sample, routers, recipe }) => {
    // The budget is what the user pays: the routers' share of the FFN FLOPs comes off the experts' part.
    const routerShare = routers.routers.reduce((a, r, k) => a + routerFlopsPerToken(sites[k].D, r.width, recipe.experts), 0) / sites.reduce((a, s) => a + 4 * s.D * s.H, 0);
    return chooseThresholds(structure.layout, sample, routers, { ...recipe, routerShare });
  },
  summary: (plan, { structure, recipe }) => {
    const S = structure.layout.patchNums.length;
    const b = plan.basis;
    const how = 'given' in b ? 'given'
      : 'tau' in b ? `from τ ${b.tau.join(',')} (threshold = 1 − τ)`
      : `chosen for a budget of ${b.budget} of the dense FFN FLOPs on ${scaleRange(recipe.fromScale, S)}, routers included (reached ${b.reached.toFixed(3)}: experts ${b.experts.toFixed(3)} + routers ${b.routers.toFixed(3)})`;
    const k = plan.routing === 'topk' ? ` (k ${plan.thresholds.slice(recipe.fromScale - 1).map((t) => topkCount(t, recipe.experts)).join(',')} of ${recipe.experts})` : '';
    return `${plan.routing} thresholds ${plan.thresholds.slice(recipe.fromScale - 1).map(formatThreshold).join(',')}${k} for ${scaleRange(recipe.fromScale, S)}, ${how}`;
  },
  warnings: (plan) => plan.warnings,
  layerReport: (plan, k) => ({ activeFractionPerScale: plan.activeFractionPerLayer[k] }),
});

export function chooseThresholds(layout: PatchLayout, sample: FfnInputSample, routers: RouterSet, o: ThresholdOptions): ThresholdPlan {
  const S = layout.patchNums.length;
  const first = o.fromScale - 1;
  const E = o.experts;
  const n = S - first;
  const layers = sample.layers;
  let chosen: number[];
  let basis: ThresholdPlan['basis'];
  const warnings: string[] = [];
  const expand = (l: number[]) => (l.length === 1 ? Array(n).fill(l[0]) : l);
  // Scales that have captured tokens.
  const scaleRows = (s: number, k: number) => {
    const c = layers[k];
    const rows: number[] = [];
    for (let i = 0; i < c.N; i++) if (c.scaleOfToken[i] === s) rows.push(i);
    return rows;
  };
  const pick = (a: Float32Array, rows: number[]) => {
    const out = new Float32Array(rows.length * E);
    rows.forEach((r, i) => out.set(a.subarray(r * E, (r + 1) * E), i * E));
    return out;
  };
  const perScale = Array.from({ length: n }, (_, j) => {
    const s = first + j;
    const rows = layers.map((_, k) => scaleRows(s, k));
    return {
      scale: s,
      tokensPerSample: layout.tokens[s],
      norms: routers.norms.map((l, k) => pick(l.predicted, rows[k])),
      trueNorms: routers.norms.map((l, k) => pick(l.trueNorms, rows[k])),
      E,
      count: rows[0].length,
    };
  });
  if (o.thresholds) {
    chosen = expand(o.thresholds);
    basis = { given: chosen };
  } else if (o.tau) {
    chosen = thresholdsFromTau(expand(o.tau));
    basis = { tau: expand(o.tau) };
  } else {
    const budget = o.budget;
    if (budget === null) throw new Error('thresholds: no budget, thresholds or tau');
    const withData = perScale.filter((p) => p.count > 0);
    if (withData.length === 0) throw new MoefyError(`the calibration data holds no tokens of ${scaleRange(o.fromScale, S)}; cannot choose thresholds for a budget (give --threshold)`);
    const share = o.routerShare ?? 0;
    const r = chooseForBudget(withData, Math.max(budget - share, 1e-9), { routing: o.routing });
    const reached = r.spent + share;
    if (r.clamped === 'below-minimum' || budget - share <= 0)
      warnings.push(`--budget ${budget} cannot be met: the least ${scaleRange(o.fromScale, S)} can spend is ${reached.toFixed(3)} of their dense FFN FLOPs (one expert per token: ${r.spent.toFixed(3)}, routers: ${share.toFixed(3)}); converted at that`);
    else if (r.note) warnings.push(`--budget ${budget}: ${r.note.replace(/spends (\d\.\d+)/, () => `reaches ${reached.toFixed(3)} with the routers`)}`);
    // Scales without calibration tokens take the nearest coarser scale's threshold (monotone).
    chosen = [];
    let last = 0;
    for (const p of perScale) {
      const k = withData.indexOf(p);
      last = k >= 0 ? r.thresholds[k] : last;
      chosen.push(last);
    }
    basis = { budget, reached, experts: r.spent, routers: share };
  }
  const thresholds = [...Array(first).fill(0), ...chosen];
  const activeFractions = thresholds.map((t, s) => {
    if (s < first) return 1;
    const p = perScale[s - first];
    if (p.count === 0) return NaN;
    const f = p.norms.map((a) => activeFraction(a, a.length / E, E, t, o.routing));
    return f.reduce((x, y) => x + y, 0) / f.length;
  });
  const activeFractionPerLayer = layers.map((_, k) => {
    const m: Record<string, number> = {};
    for (let j = 0; j < n; j++) {
      const p = perScale[j];
      if (p.count) m[String(first + j + 1)] = activeFraction(p.norms[k], p.norms[k].length / E, E, thresholds[first + j], o.routing);
    }
    return m;
  });
  return { routing: o.routing, thresholds, activeFractions, activeFractionPerLayer, basis, warnings };
}
