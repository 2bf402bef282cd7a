// The data the conversion passes hand each other. The analysis (VarStructure) is computed once, up front.
import type { ActivationKind } from '../op';
import type { FfnSite, VarStructure } from '../analysis/var-structure';
import type { Model } from '../ir/model';
import type { ExpertLayout } from '../calib/kmeans';

export interface ConvertOptions {
  experts: number;
  /** First MoE scale, 1-based as in the paper. */
  fromScale: number;
  /** 'relu' (default, as DMoE-VAR) or 'keep' the model's own activation inside the experts. */
  activation: 'relu' | 'keep';
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
  /** Fraction of dense FFN FLOPs the MoE scales may spend (default 0.6). */
  budget?: number;
  clusterBy: 'weights' | 'activations';
  seed: number;
  patchNums?: number[];
  routerWidth: number;
  routerEpochs: number;
  /** What the router regresses: the expert norm (DMoE-VAR) or its square root (default), squared back in the graph. */
  routerTarget?: 'norm' | 'sqrt';
  /** Samples to synthesise when no calibration data is given. */
  synthSamples: number;
  /** Cap on captured tokens per layer (router training data). */
  maxTokens: number;
}

/** Experts of one FFN: expert e owns neurons order[e·S … e·S+S−1] of the original hidden layer. */
export type { ExpertLayout };

/** Captured calibration data of one FFN: its inputs, and the scale (0-based) of each captured token. */
export interface LayerCapture {
  X: Float32Array;
  N: number;
  D: number;
  scaleOfToken: Int32Array;
}

export interface ExpertWeights {
  W1: Float32Array; // [D, H], expert-contiguous columns
  B1: Float32Array; // [H]
  W2: Float32Array; // [H, D], expert-contiguous rows
  B2: Float32Array | null; // [D]
  activation: ActivationKind;
}

export interface RouterWeights {
  W1: Float32Array; // [D, width]
  W2: Float32Array; // [width, E]
  width: number;
  heldOutR2: number;
  recall: number;
  /** The MLP predicts √norm; the graph squares it. */
  squared: boolean;
}

export interface LayerReport {
  block: number;
  relufyRelChange: number | null;
  clusterBy: string;
  concentration: number | null;
  routerR2: number | null;
  routerRecall: number | null;
  activeFractionPerScale: Record<string, number>;
}

export interface ConversionState {
  model: Model;
  structure: VarStructure;
  options: ConvertOptions;
  sites: FfnSite[];
  /** Activation of the original FFNs (before relufy), per block. */
  originalActivation: ActivationKind[];
  /** Activation the experts use. */
  expertActivation: ActivationKind[];
  captures: LayerCapture[];
  layouts: ExpertLayout[];
  weights: ExpertWeights[];
  routers: RouterWeights[];
  /** One threshold per scale (0 before fromScale). */
  thresholds: number[];
  /** Active fraction per scale measured on the calibration data with the chosen thresholds. */
  activeFractions: number[];
  layers: LayerReport[];
  warnings: string[];
  notes: string[];
}

export interface PassResult {
  name: string;
  summary: string;
}
