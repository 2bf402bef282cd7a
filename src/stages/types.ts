// The typed data the calibration stages hand each other (pipeline.ts wires them in order). Every stage is a function
// of its inputs; none of them rewrites the model (only passes/relufy and passes/insert do).
import type { RouterWeights } from '../analysis/router-graph';
import type { ExpertLayout } from '../calib/kmeans';
import type { ActivationKind } from '../op';

export type { ExpertLayout };

/** Captured calibration data of one FFN: its inputs [N, D], and the scale (0-based) of each captured token. */
export interface LayerCapture {
  X: Float32Array;
  N: number;
  D: number;
  scaleOfToken: Int32Array;
}

/** capture → the FFN inputs of every layer on the calibration data (one seeded token subsample shared by all layers). */
export interface FfnInputSample {
  layers: LayerCapture[];
  warnings: string[];
  summary: string;
}

/** cluster → each FFN's neurons split into experts (a permutation), and how concentrated activations are. */
export interface ExpertClustering {
  layouts: ExpertLayout[];
  /** Per layer: mean fraction of experts holding 90% of a token's activation mass (null when not measured). */
  concentration: (number | null)[];
  summary: string;
}

/** permute → each FFN's weights in expert-contiguous order, as the op takes them. */
export interface ExpertWeights {
  W1: Float32Array; // [D, H], expert-contiguous columns
  B1: Float32Array; // [H]
  W2: Float32Array; // [H, D], expert-contiguous rows
  B2: Float32Array | null; // [D]
  activation: ActivationKind;
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
  summary: string;
}

/** chooseThresholds → one threshold per scale (0 before from-scale) and the active fractions they give. */
export interface ThresholdPlan {
  thresholds: number[];
  /** Per scale, mean over layers on the calibration data (1 on dense scales, NaN where no tokens were captured). */
  activeFractions: number[];
  /** Per layer: scale (1-based, as a string) → active fraction, for the MoE scales with captured tokens. */
  activeFractionPerLayer: Record<string, number>[];
  /** A budget not met, said with what was reached. */
  warnings: string[];
  summary: string;
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
}

/** repair → the experts refitted to the dense FFN outputs under the plan's routing (W1, B1 changed only by the gradient fit). */
export interface RepairedExperts {
  weights: ExpertWeights[];
  layers: LayerRepair[];
  summary: string;
}
