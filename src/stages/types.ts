// The data of a conversion, as the stages hand it on (src/stages/stage.ts; pipeline.ts runs them in order): each
// stage reads some of it and adds one thing. No stage changes what it reads; the insert stage writes a new model.
import type { RouterWeights } from '../analysis/router-graph';
import type { FfnSite, VarStructure } from '../analysis/var-structure';
import type { Lendable } from '../calib/layer-pool';
import type { ExpertLayout } from '../calib/kmeans';
import type { Recipe } from '../convert-options';
import type { Model } from '../ir/model';
import type { ActivationKind, RoutingRule } from '../op';

export type { ExpertLayout };

/** What a conversion starts from: the dense model, its analysis, its FFNs and the options resolved for it. */
export interface ConversionInput {
  model: Model;
  structure: VarStructure;
  sites: FfnSite[];
  recipe: Recipe;
}

/** The data flow of one conversion: the input, then what each stage gives, under its name. */
export interface Conversion extends ConversionInput {
  /** capture */
  sample: FfnInputSample;
  /** relufy */
  activations: Activations;
  /** cluster */
  clustering: ExpertClustering;
  /** permute */
  weights: ExpertWeights[];
  /** routers */
  routers: RouterSet;
  /** thresholds */
  plan: ThresholdPlan;
  /** repair; null when the experts are not repaired */
  repaired: RepairedExperts | null;
  /** insert: the converted model */
  output: Model;
}

/** Captured calibration data of one FFN: its inputs [N, D], and the scale (0-based) of each captured token. */
export interface LayerCapture {
  /** [N, D]: `X.data`; the layer pool lends it to a worker for a job and gives it back. */
  X: Lendable;
  N: number;
  D: number;
  scaleOfToken: Int32Array;
}

/** capture → the FFN inputs of every layer on the calibration data (one seeded token subsample shared by all layers). */
export interface FfnInputSample {
  layers: LayerCapture[];
  /** Samples run. */
  samples: number;
  /** Where the inputs came from: --calib, synthesised from the model's signature, or --calib through a KV-cache chain. */
  source: 'calibration' | 'synthesised' | { chain: { firstScale: number; lastScale: number; steps: number } };
}

/** relufy → each FFN's own activation, the experts' one, and how much the change moves the FFN's output. */
export interface Activations {
  original: ActivationKind[];
  experts: ActivationKind[];
  /** Per layer: ‖FFN_experts(x) − FFN(x)‖/‖FFN(x)‖ on the captured inputs; null where the activation is kept. */
  change: (number | null)[];
}

/** cluster → each FFN's neurons split into experts (a permutation), and how concentrated activations are. */
export interface ExpertClustering {
  layouts: ExpertLayout[];
  /** Per layer: mean fraction of experts holding 90% of a token's activation mass (null when not measured). */
  concentration: (number | null)[];
}

/** A layer's captured FFN inputs and its expert-contiguous FFN: what router and repair jobs start from. */
export interface LayerFfn {
  /** Captured FFN inputs [N, D], lent to the job's worker. */
  X: Lendable;
  N: number;
  D: number;
  W1: Float32Array;
  B1: Float32Array;
  W2: Float32Array;
  E: number;
  /** The experts' activation. */
  activation: ActivationKind;
}

/** permute → each FFN's weights in expert-contiguous order, as the op takes them. */
export interface ExpertWeights {
  W1: Float32Array; // [D, H], expert-contiguous columns
  B1: Float32Array; // [H]
  W2: Float32Array; // [H, D], expert-contiguous rows
  B2: Float32Array | null; // [D]
  activation: ActivationKind;
  /** [E, D]: the vector a token adds for each expert it skips (the op's skip_bias), when the repair stage fitted one. */
  skipBias?: Float32Array;
}

/** A router trained for one layer (`squared`: it predicts √norm, the graph squares it). */
export interface TrainedRouter extends RouterWeights {
  heldOutR2: number;
  recall: number;
}

/** True and predicted expert norms [N, E] of one layer on the captured tokens, for choosing thresholds. */
export interface LayerNorms {
  trueNorms: Float32Array;
  predicted: Float32Array;
}

/** trainRouters → one router per layer, and its predictions on the captured tokens. */
export interface RouterSet {
  routers: TrainedRouter[];
  norms: LayerNorms[];
}

/** chooseThresholds → the routing rule, one threshold per scale (0 before from-scale) and the active fractions they give. */
export interface ThresholdPlan {
  routing: RoutingRule;
  thresholds: number[];
  /** Per scale, mean over layers on the calibration data (1 on dense scales, NaN where no tokens were captured). */
  activeFractions: number[];
  /** Per layer: scale (1-based, as a string) → active fraction, for the MoE scales with captured tokens. */
  activeFractionPerLayer: Record<string, number>[];
  /** How the thresholds of the MoE scales were set. */
  basis: { given: number[] } | { tau: number[] } | { budget: number; reached: number; experts: number; routers: number };
  /** A budget not met, said with what was reached. */
  warnings: string[];
}

/** Per layer, what the expert repair did (stages/repair.ts). */
export interface LayerRepair {
  /** Ridge strength chosen on the held-out calibration tokens. */
  ridge: number;
  /** ‖MoE − dense‖/‖dense‖ of the FFN output on held-out calibration tokens under the plan's routing. */
  heldOutRelErrBefore: number;
  heldOutRelErrClosedForm: number;
  heldOutRelErrAfter: number;
  /** Best epoch of the gradient fit (0: closed form only). */
  epochs: number;
  /** Whether a skip_bias was fitted (with the experts, or alone when they were kept). */
  skipBias: boolean;
}

/**
 * repair → the experts refitted to the dense FFN outputs under the plan's routing (W1, B1 changed only by the gradient
 * fit), with their skip_bias when fitted; or the experts as they were with a skip_bias fitted alone.
 */
export interface RepairedExperts {
  weights: ExpertWeights[];
  layers: LayerRepair[];
}
