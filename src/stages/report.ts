// The conversion report beside a converted model (`out.json`): the options as resolved, a row per layer (each stage
// gives its fields), a row per scale with the FLOPs dense against MoE, the totals, the stages' lines and the
// warnings.
import { countFlops, moeFfnFlops, routerFlopsPerToken } from '../analysis/flops';
import type { Conversion, LayerRepair } from './types';
import { costWarnings } from './warnings';

export interface ScaleReport {
  scale: number;
  patch: number;
  tokens: number;
  threshold: number;
  moe: boolean;
  activeFraction: number | null;
  ffnFlopsDense: number;
  ffnFlopsMoe: number;
  routerFlops: number;
}

export interface LayerReport {
  block: number;
  relufyRelChange: number | null;
  clusterBy: string;
  concentration: number | null;
  routerR2: number | null;
  routerRecall: number | null;
  activeFractionPerScale: Record<string, number>;
  D: number;
  H: number;
  experts: number;
  expertSize: number;
  activation: string;
  originalActivation: string;
  /** Set when the experts were repaired or a skip_bias fitted. */
  repair: LayerRepair | null;
}

/** A layer row's keys in the order the report has written them; the fields of a stage added later follow. */
const LAYER_KEYS: (keyof LayerReport)[] = [
  'block', 'relufyRelChange', 'clusterBy', 'concentration', 'routerR2', 'routerRecall', 'activeFractionPerScale',
  'D', 'H', 'experts', 'expertSize', 'activation', 'originalActivation', 'repair',
];

/** A stage's line in the report. */
export interface PassResult {
  name: string;
  summary: string;
}

export interface ConversionReport {
  moefy: string;
  input: string;
  output: string;
  options: Record<string, unknown>;
  graph: { kind: string; stepScale: number | null; patchNums: number[] };
  layers: LayerReport[];
  scales: ScaleReport[];
  /**
   * Per sample. FFN FLOPs of the MoE model include its routers; `moeScalesBudgetSpent` is what --budget bounds: the MoE
   * scales' FFN FLOPs, routers included, over their dense FFN FLOPs. `flopsDense`/`flopsMoe`: the whole model.
   */
  totals: { ffnFlopsDense: number; ffnFlopsMoe: number; moeScalesBudgetSpent: number | null; flopsDense: number; flopsMoe: number };
  passes: PassResult[];
  warnings: string[];
}

/** A layer's row from the stages' fields (keys in the report's order). */
export function layerRow(fields: Record<string, unknown>): LayerReport {
  const row: Record<string, unknown> = {};
  for (const k of LAYER_KEYS) if (k in fields) row[k] = fields[k];
  for (const [k, v] of Object.entries(fields)) if (!(k in row)) row[k] = v;
  return row as unknown as LayerReport;
}

/** FFN FLOPs per scale, dense against MoE (expected from the calibration active fractions, plus the routers), and the totals. */
export function flopReport(c: Pick<Conversion, 'model' | 'structure' | 'sites' | 'recipe' | 'routers' | 'plan'>): Pick<ConversionReport, 'scales' | 'totals'> & { warnings: string[] } {
  const { structure, sites, recipe, routers, plan } = c;
  const dense = countFlops(c.model, structure, 1);
  const rows = structure.rowsPerSample;
  const routerPerToken = routers.routers.reduce((a, r, k) => a + routerFlopsPerToken(sites[k].D, r.width, recipe.experts), 0);
  const scales: ScaleReport[] = dense.scales.map((sc) => {
    const s = sc.scale - 1;
    const moe = s >= recipe.fromScale - 1;
    const f = plan.activeFractions[s];
    const af = moe ? (Number.isNaN(f) ? null : f) : 1;
    // The routers run on every token of every scale (the graph computes them before the op), so they count everywhere.
    const m = moeFfnFlops(sc.flops.ffn, af ?? 1, routerPerToken, sc.tokens, rows);
    return {
      scale: sc.scale, patch: sc.patch, tokens: sc.tokens, threshold: plan.thresholds[s], moe, activeFraction: af,
      ffnFlopsDense: sc.flops.ffn, ffnFlopsMoe: m.ffn, routerFlops: m.router,
    };
  });
  const moeScales = scales.filter((x) => x.moe && x.activeFraction !== null);
  // What --budget bounds: the MoE scales' FFN FLOPs with their routers, over the same scales' dense FFN FLOPs.
  const spent = moeScales.length ? moeScales.reduce((a, x) => a + x.ffnFlopsMoe, 0) / moeScales.reduce((a, x) => a + x.ffnFlopsDense, 0) : null;
  const ffnDenseTotal = scales.reduce((a, x) => a + x.ffnFlopsDense, 0), ffnMoeTotal = scales.reduce((a, x) => a + x.ffnFlopsMoe, 0);
  const totals = { ffnFlopsDense: ffnDenseTotal, ffnFlopsMoe: ffnMoeTotal, moeScalesBudgetSpent: spent, flopsDense: dense.total, flopsMoe: dense.total - ffnDenseTotal + ffnMoeTotal };
  return { scales, totals, warnings: costWarnings(scales, totals) };
}
