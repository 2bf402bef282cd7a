// The conversion's options and their one set of defaults: the library's convert(), the CLI's option definitions,
// the tests and the benches all read CONVERT_DEFAULTS, so `convert(model, {experts, fromScale})` and
// `moefy model --experts N --from-scale S` do the same thing.

export type ClusterBy = 'weights' | 'activations';
export type RouterTarget = 'norm' | 'sqrt';
export type ExpertActivationOption = 'relu' | 'keep';

export interface ConvertOptions {
  experts: number;
  /** First MoE scale, 1-based as in the paper. */
  fromScale: number;
  /** 'relu' (default, as DMoE-VAR) or 'keep' the model's own activation inside the experts. */
  activation?: ExpertActivationOption;
  calib?: string;
  /**
   * Step graphs: ONNX graphs that compute the earlier scales (scale 1 first), run in a chain to build the KV cache
   * from full-sequence calibration data. A dynamic step graph is reused for the scales after the list.
   */
  kvPrefix?: string[];
  /** Explicit thresholds for scales fromScale…last. */
  thresholds?: number[];
  /** DMoE-VAR's τ for scales fromScale…last (threshold = 1 − τ). */
  tau?: number[];
  /** Fraction of the dense FFN FLOPs the MoE scales may spend, routers included (default 0.6; only without thresholds or tau). */
  budget?: number;
  /** Cluster neurons by co-activation on the calibration data (default) or by fc1 weights (DMoE-VAR). */
  clusterBy?: ClusterBy;
  seed?: number;
  patchNums?: number[];
  /** Router hidden width; default defaultRouterWidth(D). */
  routerWidth?: number;
  routerEpochs?: number;
  /** What the router regresses: its square root (default), squared back in the graph, or the norm (DMoE-VAR). */
  routerTarget?: RouterTarget;
  /** Samples to synthesise when no calibration data is given. */
  synthSamples?: number;
  /** Cap on captured tokens per layer (router training data). */
  maxTokens?: number;
  /**
   * Refit the experts to the dense FFN's outputs under the chosen routing (stages/repair.ts). Default: on when an
   * FFN is not ReLU (a stock GELU checkpoint) and the thresholds are chosen for a budget, or when repairEpochs is
   * given above 0; off otherwise (on a ReLU model it would make the dense scales and threshold 0 inexact).
   */
  repair?: boolean;
  /**
   * With repair: then train W1, B1, W2, B2 for up to this many epochs (0: the closed form only). Default
   * CONVERT_DEFAULTS.repairEpochs for FFNs with H ≤ REPAIR_EPOCHS_MAX_HIDDEN, 0 for larger ones. Given above 0, it
   * asks for the repair.
   */
  repairEpochs?: number;
}

/**
 * Largest FFN hidden size whose repair trains the experts by default (repairEpochs): an epoch costs about 8.5 s per
 * layer at VAR-d16's H 4096 on 2 cores, so 30 epochs would take over an hour there; the closed form alone takes
 * about 30 CPU-seconds per layer (README, expert repair).
 */
export const REPAIR_EPOCHS_MAX_HIDDEN = 1024;

/** The defaults: the recipe measured best on the trained model (README, "What to expect"). */
export const CONVERT_DEFAULTS = {
  activation: 'relu',
  clusterBy: 'activations',
  seed: 0,
  routerEpochs: 25,
  routerTarget: 'sqrt',
  synthSamples: 16,
  maxTokens: 65536,
  /** For FFNs up to REPAIR_EPOCHS_MAX_HIDDEN: measured better than the closed form alone on the trained GELU model. */
  repairEpochs: 30,
  /** Used when neither thresholds nor tau are given. */
  budget: 0.6,
} as const satisfies Required<Pick<ConvertOptions, 'activation' | 'clusterBy' | 'seed' | 'routerEpochs' | 'routerTarget' | 'synthSamples' | 'maxTokens' | 'repairEpochs' | 'budget'>>;

/**
 * The default router width: D/4 within 16…128. 128 is DMoE-VAR's (VAR-d16's D 1024 and up); on small models a router
 * that wide costs a large share of the FFN (15.6% at D 128, H 512, 32 experts), which the budget takes from the
 * experts: width 32 there measured better on the trained D 128 models (README, "What to expect").
 */
export const ROUTER_WIDTH = { perD: 0.25, min: 16, max: 128 } as const;

export function defaultRouterWidth(D: number): number {
  return Math.min(ROUTER_WIDTH.max, Math.max(ROUTER_WIDTH.min, Math.round(D * ROUTER_WIDTH.perD)));
}

/**
 * Options with every default filled in; `budget` stays as given (undefined unless the caller chose one), and so does
 * `repairEpochs` (its default depends on the FFN size, pipeline.ts).
 */
export type ResolvedOptions = ConvertOptions & Required<Pick<ConvertOptions, 'activation' | 'clusterBy' | 'seed' | 'routerEpochs' | 'routerTarget' | 'synthSamples' | 'maxTokens'>>;

export function resolveOptions(o: ConvertOptions): ResolvedOptions {
  const d = CONVERT_DEFAULTS;
  return {
    ...o,
    activation: o.activation ?? d.activation,
    clusterBy: o.clusterBy ?? d.clusterBy,
    seed: o.seed ?? d.seed,
    routerEpochs: o.routerEpochs ?? d.routerEpochs,
    routerTarget: o.routerTarget ?? d.routerTarget,
    synthSamples: o.synthSamples ?? d.synthSamples,
    maxTokens: o.maxTokens ?? d.maxTokens,
  };
}
