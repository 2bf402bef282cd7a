// moefy's library entry: what the CLI does, as functions.
import './files/ort-telemetry'; // before any ONNX Runtime session
export { MoefyError } from './errors';
export { loadModel, saveModel, decodeModel, encodeModel } from './onnx/io';
export type { SaveOptions } from './onnx/io';
export { Tensor as OnnxTensor } from './onnx/tensor';
export { Graph, Node, Value, attr } from './ir/graph';
export { Model } from './ir/model';
export { P, match, matchAny, describeFailure } from './ir/match';
export { analyseVar } from './analysis/var-structure';
export { VAR_PATCH_NUMS, THRESHOLD_INPUT, MOE_DOMAIN, MOE_OP } from './op';
export type { VarStructure, FfnSite, MoeSite, Block, PatchLayout, Linear } from './analysis/var-structure';
export { countFlops } from './analysis/flops';
export type { FlopReport, ScaleFlops, FlopKind } from './analysis/flops';
export { inspectModel } from './inspect';
export type { InspectReport } from './inspect';
export { convert, defaultOutput } from './pipeline';
export type { ConversionReport, ProgressUi } from './pipeline';
export { CONVERT_DEFAULTS } from './convert-options';
export type { ConvertOptions } from './convert-options';
export type { ExpertLayout, FfnInputSample, ExpertClustering, ExpertWeights, RouterSet, ThresholdPlan } from './stages/types';
export * as op from './op';
export { createSession, libPath, dynamicMoeReference, summarizeActive } from './runtime';
export type { MoefySession, MoefySessionOptions } from './runtime';
export { readTensorSet, writeTensorSet } from './io';
