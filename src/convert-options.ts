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
   * FFN is not ReLU (a stock GELU checkpoint), the thresholds are chosen for a budget and H ≤ 1024 (the
   * closed form's solve is O(H³) in JavaScript), or when repairEpochs > 0; off otherwise.
   */
  repair?: boolean;
  /** With repair: then train W1, B1, W2, B2 for up to this many epochs (default 0: the closed form only). */
  repairEpochs?: number;
}

/** Largest FFN hidden size for which repair is on by default (ConvertOptions.repair). */
export const REPAIR_DEFAULT_MAX_HIDDEN = 1024;

/** The defaults: the recipe measured best on the trained model (README, "What to expect"). */
export const CONVERT_DEFAULTS = {
  activation: 'relu',
  clusterBy: 'activations',
  seed: 0,
  routerWidth: 128,
  routerEpochs: 25,
  routerTarget: 'sqrt',
  synthSamples: 16,
  maxTokens: 65536,
  repairEpochs: 0,
  /** Used when neither thresholds nor tau are given. */
  budget: 0.6,
} as const satisfies Required<Pick<ConvertOptions, 'activation' | 'clusterBy' | 'seed' | 'routerWidth' | 'routerEpochs' | 'routerTarget' | 'synthSamples' | 'maxTokens' | 'repairEpochs' | 'budget'>>;

/** Options with every default filled in; `budget` stays as given (undefined unless the caller chose one). */
export type ResolvedOptions = ConvertOptions & Required<Pick<ConvertOptions, 'activation' | 'clusterBy' | 'seed' | 'routerWidth' | 'routerEpochs' | 'routerTarget' | 'synthSamples' | 'maxTokens' | 'repairEpochs'>>;

export function resolveOptions(o: ConvertOptions): ResolvedOptions {
  const d = CONVERT_DEFAULTS;
  return {
    ...o,
    activation: o.activation ?? d.activation,
    clusterBy: o.clusterBy ?? d.clusterBy,
    seed: o.seed ?? d.seed,
    routerWidth: o.routerWidth ?? d.routerWidth,
    routerEpochs: o.routerEpochs ?? d.routerEpochs,
    routerTarget: o.routerTarget ?? d.routerTarget,
    synthSamples: o.synthSamples ?? d.synthSamples,
    maxTokens: o.maxTokens ?? d.maxTokens,
    repairEpochs: o.repairEpochs ?? d.repairEpochs,
  };
}
