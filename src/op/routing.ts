// The routing rules of ai.moefy::DynamicMoE (the `routing` attribute, docs/dynamic-moe.md "Routing"): which experts
// run for a token, given its E norms and the threshold t of its scale. The one TypeScript statement of the rule:
// the reference, the calibration (active fractions, threshold curves, repair masks) and the router replay call it.
// Thresholds and the products with them are float32, as in the kernels (kernels/src/routing_rule.h).
//
//   t <= 0 or NaN   every expert runs
//   relative        e runs iff norms[e] >= t · max_k norms[k]
//   absolute        e runs iff norms[e] >= t
//   topk            the k = clamp(E − floor(t·E), 1, E) largest norms run, ties at the k-th largest value too
//   every rule      the argmax (the first largest norm; a NaN yields to any number) always runs

export type RoutingRule = 'relative' | 'absolute' | 'topk';
export const ROUTING_RULES: readonly RoutingRule[] = ['relative', 'absolute', 'topk'];
/** The attribute's default: DMoE-VAR's τ rule, the meaning of every model made before the attribute existed. */
export const DEFAULT_ROUTING: RoutingRule = 'relative';

/** The number of experts top-k keeps at a threshold t > 0: clamp(E − floor(t·E), 1, E), t·E in float32. */
export function topkCount(t: number, E: number): number {
  const f = Math.floor(Math.fround(Math.fround(t) * E));
  return f >= E ? 1 : E - f;
}

/** A token's norms as the rules read them: the largest, the first expert holding it, and (top-k) all, largest first. */
export interface TokenNorms {
  max: number;
  argmax: number;
  /** Descending, NaN counted as −∞; only for top-k. */
  sorted?: Float32Array;
}

/** The norms of the token at norms[o … o+E). */
export function tokenNorms(norms: ArrayLike<number>, o: number, E: number, rule: RoutingRule): TokenNorms {
  let m = norms[o];
  let argmax = 0;
  for (let e = 1; e < E; e++) {
    const v = norms[o + e];
    if (v > m || (Number.isNaN(m) && !Number.isNaN(v))) {
      m = v;
      argmax = e;
    }
  }
  if (rule !== 'topk') return { max: m, argmax };
  const sorted = new Float32Array(E);
  for (let e = 0; e < E; e++) sorted[e] = Number.isNaN(norms[o + e]) ? -Infinity : norms[o + e];
  sorted.sort().reverse();
  return { max: m, argmax, sorted };
}

/** The value a norm must reach at threshold t (besides the argmax), or null when every expert runs. */
export function routingCut(tok: TokenNorms, rule: RoutingRule, t: number): number | null {
  const tf = Math.fround(t);
  if (!(tf > 0)) return null;
  if (rule === 'absolute') return tf;
  if (rule === 'topk') return tok.sorted![topkCount(tf, tok.sorted!.length) - 1];
  return Math.fround(tf * tok.max);
}

/** Whether expert e with norm v runs, given its token's cut (routingCut) and argmax. */
export function expertRuns(cut: number | null, argmax: number, e: number, v: number): boolean {
  return cut === null || e === argmax || v >= cut;
}

/**
 * Routes the token at norms[o … o+E): marks the experts that run in mask[o … o+E) when a mask is given (1 = runs)
 * and returns how many run.
 */
export function routeToken(norms: ArrayLike<number>, o: number, E: number, rule: RoutingRule, t: number, mask?: Uint8Array): number {
  const tok = tokenNorms(norms, o, E, rule);
  const cut = routingCut(tok, rule, t);
  let on = 0;
  for (let e = 0; e < E; e++) {
    const r = expertRuns(cut, tok.argmax, e, norms[o + e]);
    if (mask) mask[o + e] = r ? 1 : 0;
    if (r) on++;
  }
  return on;
}

/** The experts that run for each of the N tokens of norms [N, E], at one threshold or one per token. */
export function routeTokens(norms: ArrayLike<number>, N: number, E: number, rule: RoutingRule, threshold: number | ((n: number) => number)): { mask: Uint8Array; active: Int32Array } {
  const mask = new Uint8Array(N * E);
  const active = new Int32Array(N);
  for (let n = 0; n < N; n++) active[n] = routeToken(norms, n * E, E, rule, typeof threshold === 'number' ? threshold : threshold(n), mask);
  return { mask, active };
}

/**
 * For every (token, expert) of norms [N, E], the largest index j of an ascending threshold grid (grid[0] ≤ 0) at which
 * the expert runs: it runs at grid[i] for every i ≤ j (each rule selects fewer experts as t grows, for norms ≥ 0).
 * Calibration counts the experts that run at every grid threshold from these in one pass: visit(n, e, j).
 */
export function gridRunLimits(norms: ArrayLike<number>, N: number, E: number, rule: RoutingRule, grid: Float32Array, visit: (n: number, e: number, j: number) => void): void {
  const G = grid.length;
  for (let n = 0; n < N; n++) {
    const o = n * E;
    const tok = tokenNorms(norms, o, E, rule);
    for (let e = 0; e < E; e++) {
      const v = norms[o + e];
      let lo = 0, hi = G - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (expertRuns(routingCut(tok, rule, grid[mid]), tok.argmax, e, v)) lo = mid;
        else hi = mid - 1;
      }
      visit(n, e, lo);
    }
  }
}
