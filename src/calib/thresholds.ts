// Per-scale thresholds. Which experts run at a threshold is the op's routing rule (src/op/routing.ts: relative,
// absolute or top-k; the argmax always).
// chooseThresholds picks one threshold per MoE scale, non-decreasing toward finer scales (DMoE-VAR's τ
// non-increasing), so that the token-weighted active fraction Σ_s tokens_s·f_s(t_s) / Σ_s tokens_s meets a FLOP
// budget, minimising the token-weighted share of true output-norm energy (Σ norm²) of the experts that are skipped.
// Solved exactly on a threshold grid by a DP over (scale, grid threshold, spent budget in 1/2000 buckets) with the
// monotone constraint as a prefix minimum (a knapsack rather than a Lagrangian, so budgets in the gaps of the
// convex hull are met too), then checked against the exact spend: least loss with spend in [budget − 0.02, budget].
// The grid is the rule's: relative, t in [0, 1] (linear, geometric near 0); top-k, one t per k (E−1 … 1 experts);
// absolute, quantiles of the pooled predicted norms (their scale is the router's, normalised per layer by the
// routers stage), so that every grid step moves the active fraction by about as much.
import { MoefyError } from '../errors';
import { DEFAULT_ROUTING, gridRunLimits, routeToken, type RoutingRule } from '../op';

export interface ScaleCalibration {
  /** Tokens of this scale per sample (pn²): the scale's weight in the budget. */
  tokensPerSample: number;
  /** Predicted norms per layer (or one pooled array), each [N_s, E]. */
  norms: Float32Array[];
  /** True norms, same shapes; used for the quality estimate when given, else the predictions are. */
  trueNorms?: Float32Array[];
  E: number;
}

export interface ChooseThresholdsOptions {
  /** Threshold grid step (default 0.0025; the grid always holds 0 and 1). */
  gridStep?: number;
  /** Largest allowed threshold (default 1; relative rule only). */
  maxThreshold?: number;
  /** The routing rule the thresholds are for (default relative). */
  routing?: RoutingRule;
}

export interface ThresholdChoice {
  /** One per scale, non-decreasing. */
  thresholds: number[];
  /** f_s(t_s) on the calibration data, per scale. */
  activeFractions: number[];
  /** Σ_s tokens_s·f_s / Σ_s tokens_s: the fraction of the dense FFN FLOPs the MoE scales spend. */
  spent: number;
  /** The budget asked for, and the one aimed at after clamping. */
  budget: number;
  target: number;
  /** Set when the budget could not be met: 'below-minimum' (argmax-only spends more) or 'dense' (budget ≥ 1). */
  clamped?: 'below-minimum' | 'dense';
  /** Estimated quality loss: token-weighted mean share of true output energy in skipped experts. */
  skippedEnergy: number;
  /** Per scale, the share of skipped energy. */
  skippedEnergyPerScale: number[];
  /** Human-readable note on clamping (empty when none). */
  note: string;
}

function checkThreshold(t: number, what = 'threshold', max = 1): void {
  if (!(t >= 0 && t <= max)) throw new MoefyError(`${what} ${t} is outside [0, ${max}]`);
}

/** Mean over tokens of (#experts that run at threshold t)/E. norms [N, E]. */
export function activeFraction(norms: Float32Array, N: number, E: number, t: number, rule: RoutingRule = DEFAULT_ROUTING): number {
  // An absolute threshold is in the norms' unit: any t >= 0 (above every norm, the argmax alone runs).
  checkThreshold(t, 'threshold', rule === 'absolute' ? Infinity : 1);
  if (norms.length !== N * E) throw new MoefyError(`activeFraction: norms have ${norms.length} values, expected N·E = ${N}·${E}`);
  if (N === 0) return NaN;
  let on = 0;
  for (let n = 0; n < N; n++) on += routeToken(norms, n * E, E, rule, t);
  return on / (N * E);
}

/** DMoE-VAR's τ → moefy's threshold: 1 − τ. */
export function thresholdsFromTau(tau: number[]): number[] {
  return tau.map((x) => {
    checkThreshold(x, 'τ');
    return 1 - x;
  });
}

/** f(t) and skipped-energy share at every grid threshold for one scale (means over layers and tokens). */
function scaleCurves(sc: ScaleCalibration, grid: Float64Array, rule: RoutingRule): { f: Float64Array; loss: Float64Array } {
  const G = grid.length, E = sc.E;
  const onCount = new Float64Array(G + 1); // experts whose highest satisfied grid index is j
  const energyAt = new Float64Array(G + 1); // their energy share
  let tokens = 0;
  const gridF = Float32Array.from(grid);
  sc.norms.forEach((norms, l) => {
    const truth = sc.trueNorms?.[l] ?? norms;
    const N = norms.length / E;
    if (!Number.isInteger(N) || truth.length !== norms.length) throw new MoefyError(`chooseThresholds: layer ${l} norms have ${norms.length} values, not a multiple of E = ${E} (or true norms differ in size)`);
    tokens += N;
    let tot = 0;
    // j: the largest grid index at which the expert runs (grid[0] = 0: every expert runs there).
    gridRunLimits(norms, N, E, rule, gridF, (n, e, j) => {
      const o = n * E;
      if (e === 0) {
        tot = 0;
        for (let k = 0; k < E; k++) tot += truth[o + k] * truth[o + k];
      }
      onCount[j] += 1;
      if (tot > 0) energyAt[j] += (truth[o + e] * truth[o + e]) / tot;
    });
  });
  // Expert active at grid j iff its index >= j: suffix sums.
  const f = new Float64Array(G), loss = new Float64Array(G);
  let c = 0, en = 0, totalEnergy = 0;
  for (let j = 0; j < G; j++) totalEnergy += energyAt[j];
  for (let j = G - 1; j >= 0; j--) {
    c += onCount[j];
    en += energyAt[j];
    f[j] = tokens ? c / (tokens * E) : 0;
    loss[j] = tokens ? (totalEnergy - en) / tokens : 0;
  }
  return { f, loss };
}

/** The ascending threshold grid of a rule, from 0 (every expert) to its least spend (see the file comment). */
function thresholdGrid(perScale: ScaleCalibration[], rule: RoutingRule, step: number, maxT: number): Float64Array {
  const list: number[] = [0];
  if (rule === 'topk') {
    // k = E − floor(t·E): t = (E − k + 0.5)/E is k in float32 whatever the rounding of t·E.
    const E = perScale[0].E;
    for (let k = E - 1; k >= 1; k--) list.push(Math.fround((E - k + 0.5) / E));
  } else if (rule === 'absolute') {
    const arrays = perScale.flatMap((sc) => sc.norms);
    const pooled = new Float32Array(arrays.reduce((a, x) => a + x.length, 0));
    arrays.reduce((o, x) => (pooled.set(x, o), o + x.length), 0);
    pooled.sort();
    const levels = Math.round(1 / step);
    for (let q = 1; q <= levels; q++) {
      const v = pooled[Math.min(pooled.length - 1, Math.floor((q / levels) * pooled.length))];
      if (v > list[list.length - 1]) list.push(v);
    }
  } else {
    for (let k = 1; k * step < maxT - 1e-12; k++) list.push(k * step);
    list.push(maxT);
    // Very sparse models put most experts' predicted norms a hair above 0: between 0 (every expert) and the first
    // linear step the active fraction falls off a cliff, so the grid is also geometric there (1e-7 … step).
    for (let t = 1e-7; t < step; t *= 2) if (t < maxT) list.push(t, t * 1.5);
    list.sort((a, b) => a - b);
  }
  return Float64Array.from(list);
}

/**
 * Chooses one threshold per scale (coarse → fine, non-decreasing) for a budget in (0, 1]: the fraction of the dense
 * FFN FLOPs that the MoE scales may spend. Met within ±0.02 on the calibration data when feasible; budgets below
 * the argmax-only spend clamp to threshold 1 everywhere, budget 1 gives 0 everywhere (both said in `clamped`/`note`).
 */
export function chooseThresholds(perScale: ScaleCalibration[], budget: number, opts: ChooseThresholdsOptions = {}): ThresholdChoice {
  if (!(budget > 0 && budget <= 1)) throw new MoefyError(`budget ${budget} is outside (0, 1]`);
  if (perScale.length === 0) throw new MoefyError('chooseThresholds: no scales');
  const step = opts.gridStep ?? 0.0025;
  const maxT = opts.maxThreshold ?? 1;
  checkThreshold(maxT, 'maxThreshold');
  if (!(step >= 1e-4 && step <= 0.5)) throw new MoefyError(`chooseThresholds: grid step ${step} is not in [1e-4, 0.5]`);
  for (const sc of perScale) {
    if (!(sc.tokensPerSample > 0)) throw new MoefyError(`chooseThresholds: tokensPerSample ${sc.tokensPerSample} must be > 0`);
    if (!(sc.E >= 1) || !Number.isInteger(sc.E)) throw new MoefyError(`chooseThresholds: bad E ${sc.E}`);
    if (sc.norms.length === 0) throw new MoefyError('chooseThresholds: a scale has no norms');
    if (sc.trueNorms && sc.trueNorms.length !== sc.norms.length) throw new MoefyError('chooseThresholds: trueNorms and norms have different layer counts');
  }
  const rule = opts.routing ?? DEFAULT_ROUTING;
  const grid = thresholdGrid(perScale, rule, step, maxT);
  const G = grid.length, S = perScale.length;
  const wsum = perScale.reduce((a, s) => a + s.tokensPerSample, 0);
  const w = perScale.map((s) => s.tokensPerSample / wsum);
  const curves = perScale.map((sc) => scaleCurves(sc, grid, rule));
  const spendOf = (idx: number[]) => idx.reduce((a, j, s) => a + w[s] * curves[s].f[j], 0);
  const lossOf = (idx: number[]) => idx.reduce((a, j, s) => a + w[s] * curves[s].loss[j], 0);
  const finish = (idx: number[], target: number, clamped?: ThresholdChoice['clamped'], note = ''): ThresholdChoice => ({
    thresholds: idx.map((j) => grid[j]),
    activeFractions: idx.map((j, s) => curves[s].f[j]),
    spent: spendOf(idx),
    budget,
    target,
    clamped,
    skippedEnergy: lossOf(idx),
    skippedEnergyPerScale: idx.map((j, s) => curves[s].loss[j]),
    note,
  });
  const minIdx = new Array(S).fill(G - 1);
  const minSpend = spendOf(minIdx);
  if (budget >= 1) return finish(new Array(S).fill(0), 1, 'dense', 'budget 1: every expert runs (thresholds 0)');
  if (budget <= minSpend) {
    return finish(minIdx, minSpend, budget < minSpend - 1e-12 ? 'below-minimum' : undefined,
      budget < minSpend - 1e-12 ? `budget ${budget} is below the least achievable spend ${minSpend.toFixed(4)} (threshold ${grid[G - 1]} on every scale; argmax-only is 1/E); clamped` : '');
  }

  // DP: best[j][b] = least loss of scales 0..s with t_s = grid[j] and spend bucket b (spend ≤ budget).
  const BUCKETS = 2000;
  const cap = Math.floor(Math.min(1, budget + 0.02) * BUCKETS + 1e-9);
  const B = cap + 1;
  const bucketOf = (x: number) => Math.round(x * BUCKETS);
  let prev = new Float64Array(G * B).fill(Infinity);
  const back: Int16Array[] = []; // back[s][j*B+b] = previous scale's grid index
  for (let s = 0; s < S; s++) {
    const cur = new Float64Array(G * B).fill(Infinity);
    const bk = new Int16Array(G * B).fill(-1);
    const { f, loss } = curves[s];
    if (s === 0) {
      for (let j = 0; j < G; j++) {
        const c = bucketOf(w[0] * f[j]);
        if (c <= cap) {
          cur[j * B + c] = w[0] * loss[j];
          bk[j * B + c] = -1;
        }
      }
    } else {
      // Prefix minimum over previous grid indices j' <= j, per bucket.
      const pm = new Float64Array(B).fill(Infinity);
      const pmArg = new Int16Array(B).fill(-1);
      for (let j = 0; j < G; j++) {
        const row = j * B;
        for (let b = 0; b < B; b++) {
          const v = prev[row + b];
          if (v < pm[b]) {
            pm[b] = v;
            pmArg[b] = j;
          }
        }
        const c = bucketOf(w[s] * f[j]);
        const l = w[s] * loss[j];
        for (let b = c; b < B; b++) {
          const v = pm[b - c];
          if (v === Infinity) continue;
          if (v + l < cur[row + b]) {
            cur[row + b] = v + l;
            bk[row + b] = pmArg[b - c];
          }
        }
      }
    }
    back.push(bk);
    prev = cur;
  }
  // Candidates: the least-loss state per final bucket. Exact spends decide: least loss among spend in
  // [budget − 0.02, budget]; failing that, the spend closest to the budget.
  let best: { idx: number[]; loss: number; spend: number } | null = null;
  let closest: { idx: number[]; loss: number; spend: number } | null = null;
  for (let b = B - 1; b >= 0; b--) {
    let j = -1, v = Infinity;
    for (let q = 0; q < G; q++) if (prev[q * B + b] < v) {
      v = prev[q * B + b];
      j = q;
    }
    if (j < 0) continue;
    const idx = new Array(S);
    let bb = b;
    for (let s = S - 1; s >= 0; s--) {
      idx[s] = j;
      const pj = back[s][j * B + bb];
      bb -= bucketOf(w[s] * curves[s].f[j]);
      j = pj;
    }
    const spend = spendOf(idx), l = lossOf(idx);
    const cand = { idx, loss: l, spend };
    if (spend <= budget + 1e-9 && spend >= budget - 0.02 && (!best || l < best.loss)) best = cand;
    if (!closest || Math.abs(spend - budget) < Math.abs(closest.spend - budget)) closest = cand;
  }
  const pick = best ?? closest!;
  return finish(pick.idx, budget, undefined, best ? '' : `no monotone threshold choice spends within 0.02 of ${budget}; closest spends ${pick.spend.toFixed(4)}`);
}
