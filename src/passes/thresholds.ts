// Pass: per-scale thresholds for scales from-scale…last: given (--threshold), from DMoE-VAR's τ (--tau, threshold =
// 1 − τ), or chosen on the calibration data for a FLOP budget (--budget, default 0.6), non-decreasing toward finer
// scales as the paper found best. Scales before from-scale get 0 (every expert: the dense FFN).
import { MoefyError } from '../errors';
import { formatThreshold } from '../format';
import { activeFraction, chooseThresholds, thresholdsFromTau } from '../calib/thresholds';
import type { LayerNorms } from './routers';
import { ConversionState, PassResult } from './types';

export const DEFAULT_BUDGET = 0.6;

/** Checks the threshold options against the model before any work is done. */
export function validateThresholdOptions(st: ConversionState): void {
  const o = st.options;
  const n = st.structure.layout.patchNums.length - o.fromScale + 1;
  const given = [o.thresholds && '--threshold', o.tau && '--tau', o.budget !== undefined && '--budget'].filter(Boolean);
  if (given.length > 1) throw new MoefyError(`give one of --threshold, --tau and --budget, not ${given.join(' and ')}`);
  for (const [flag, list] of [['threshold', o.thresholds], ['tau', o.tau]] as const) {
    if (!list) continue;
    if (list.length !== n && list.length !== 1) throw new MoefyError(`--${flag} has ${list.length} values; scales ${o.fromScale}…${st.structure.layout.patchNums.length} need ${n} (or 1 for all)`);
    const bad = list.find((x) => !(x >= 0 && x <= 1));
    if (bad !== undefined) throw new MoefyError(`--${flag} value ${bad} is outside [0, 1]`);
  }
  if (o.budget !== undefined && !(o.budget > 0 && o.budget <= 1)) throw new MoefyError(`--budget ${o.budget} is outside (0, 1]`);
}

export function thresholds(st: ConversionState, norms: LayerNorms[]): PassResult {
  const o = st.options;
  const S = st.structure.layout.patchNums.length;
  const first = o.fromScale - 1;
  const E = o.experts;
  const n = S - first;
  let chosen: number[];
  let how: string;
  const expand = (l: number[]) => (l.length === 1 ? Array(n).fill(l[0]) : l);
  // Scales that have captured tokens.
  const scaleRows = (s: number, k: number) => {
    const c = st.captures[k];
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
    const rows = st.sites.map((_, k) => scaleRows(s, k));
    return {
      scale: s,
      tokensPerSample: st.structure.layout.tokens[s],
      norms: norms.map((l, k) => pick(l.predicted, rows[k])),
      trueNorms: norms.map((l, k) => pick(l.trueNorms, rows[k])),
      E,
      count: rows[0].length,
    };
  });
  if (o.thresholds) {
    chosen = expand(o.thresholds);
    how = 'given';
  } else if (o.tau) {
    chosen = thresholdsFromTau(expand(o.tau));
    how = `from τ ${expand(o.tau).join(',')} (threshold = 1 − τ)`;
  } else {
    const budget = o.budget ?? DEFAULT_BUDGET;
    const withData = perScale.filter((p) => p.count > 0);
    if (withData.length === 0) throw new MoefyError(`the calibration data holds no tokens of scales ${o.fromScale}…${S}; cannot choose thresholds for a budget (give --threshold)`);
    const r = chooseThresholds(withData, budget);
    // Scales without calibration tokens take the nearest coarser scale's threshold (monotone).
    chosen = [];
    let last = 0;
    for (const p of perScale) {
      const k = withData.indexOf(p);
      last = k >= 0 ? r.thresholds[k] : last;
      chosen.push(last);
    }
    how = `chosen for a budget of ${budget} of the dense FFN FLOPs on scales ${o.fromScale}…${S}`;
  }
  st.thresholds = [...Array(first).fill(0), ...chosen];
  st.activeFractions = st.thresholds.map((t, s) => {
    if (s < first) return 1;
    const p = perScale[s - first];
    if (p.count === 0) return NaN;
    const f = p.norms.map((a) => activeFraction(a, a.length / E, E, t));
    return f.reduce((x, y) => x + y, 0) / f.length;
  });
  for (let k = 0; k < st.sites.length; k++) {
    for (let j = 0; j < n; j++) {
      const p = perScale[j];
      if (p.count) st.layers[k].activeFractionPerScale[String(first + j + 1)] = activeFraction(p.norms[k], p.norms[k].length / E, E, st.thresholds[first + j]);
    }
  }
  return { name: 'thresholds', summary: `thresholds ${chosen.map(formatThreshold).join(',')} for scales ${o.fromScale}…${S}, ${how}` };
}
