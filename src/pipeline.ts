// The main job: a dense VAR in, a dynamic-MoE VAR out. Validation first (so bad input leaves no output), then the
// stages in order, each a function of what the earlier ones returned, then the model and its report written
// atomically. Only relufy and insert rewrite the model; the stages between them read it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkConvertible } from './analysis/exporter-styles';
import { analyseVar } from './analysis/var-structure';
import { countFlops, moeFfnFlops, routerFlopsPerToken } from './analysis/flops';
import { CONVERT_DEFAULTS, ConvertOptions, REPAIR_EPOCHS_MAX_HIDDEN, resolveOptions } from './convert-options';
import { MoefyError } from './errors';
import { scaleRange } from './format';
import { withPath } from './files/env-errors';
import { checkConvertOutputs } from './io/output-paths';
import { checkKvPrefix } from './calib/check-inputs';
import { commitTemp, removeTemp, tempSibling } from './files/temp';
import { loadModel, saveModel } from './onnx/io';
import { METADATA } from './op';
import { insert } from './passes/insert';
import { relufy, relufyReport } from './passes/relufy';
import { capture } from './stages/capture';
import { cluster } from './stages/cluster';
import { permute } from './stages/permute';
import { repair } from './stages/repair';
import type { LayerRepair } from './stages/types';
import { trainRouters } from './stages/routers';
import { chooseThresholds, validateThresholdOptions } from './stages/thresholds';
import { activationChangeWarning, costWarnings } from './stages/warnings';

export const MOEFY_VERSION: string = require('../../package.json').version;

export interface ProgressUi {
  stage(name: string, total: number): { tick(done: number, total?: number): void; stop(): void };
  log(line: string): void;
  /** A warning as soon as it is known (it also goes into the report's `warnings`). */
  warn?(line: string): void;
}

const quietUi: ProgressUi = { stage: () => ({ tick: () => {}, stop: () => {} }), log: () => {} };

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
  /** Set when the experts were repaired. */
  repair: LayerRepair | null;
}

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

/** The report beside a model: `out.onnx` → `out.json`. */
export function reportPath(output: string): string {
  return output.replace(/\.onnx$/, '') + '.json';
}

export function defaultOutput(input: string): string {
  const ext = path.extname(input);
  return path.join(path.dirname(input), `${path.basename(input, ext)}.moe.onnx`);
}

export async function convert(input: string, given: ConvertOptions & { output?: string; externalData?: boolean }, ui: ProgressUi = quietUi): Promise<ConversionReport> {
  const opts = resolveOptions(given);
  const output = given.output ?? defaultOutput(input);
  const reportFile = reportPath(output);
  const model = loadModel(input);
  checkConvertOutputs(input, model, opts, output, reportFile);
  const structure = analyseVar(model, { patchNums: opts.patchNums });
  if (opts.kvPrefix) checkKvPrefix(opts.kvPrefix, structure);
  checkConvertible(structure.blocks.filter((b) => b.ffn).map((b) => b.ffn!.precision));
  const S = structure.layout.patchNums.length;
  if (!Number.isInteger(opts.experts) || opts.experts < 1) throw new MoefyError(`--experts ${opts.experts} must be a positive integer`);
  for (const b of structure.blocks) {
    if (b.moe) throw new MoefyError(`${input} is already converted (block ${b.index} holds a DynamicMoE node)`);
    if (b.ffn!.H % opts.experts !== 0) throw new MoefyError(`--experts ${opts.experts} does not divide the FFN hidden size H = ${b.ffn!.H} (block ${b.index})`);
  }
  if (opts.repairEpochs !== undefined && !(Number.isInteger(opts.repairEpochs) && opts.repairEpochs >= 0)) throw new MoefyError(`--repair-epochs ${opts.repairEpochs} must be a non-negative integer`);
  if ((opts.repairEpochs ?? 0) > 0 && opts.repair === false) throw new MoefyError('--repair-epochs needs the repair (it was turned off with --no-repair)');
  if (!Number.isInteger(opts.fromScale) || opts.fromScale < 1 || opts.fromScale > S) throw new MoefyError(`--from-scale ${opts.fromScale} is out of range: the model has scales 1…${S}`);
  const sites = structure.blocks.map((b) => b.ffn!);
  validateThresholdOptions(opts, S);
  if (structure.kind === 'step' && structure.stepScale !== null && structure.stepScale < opts.fromScale)
    throw new MoefyError(`this step graph computes scale ${structure.stepScale}, before --from-scale ${opts.fromScale}: it has nothing to run as MoE (convert only the step graphs of ${scaleRange(opts.fromScale, S)})`);
  const dense = countFlops(model, structure, 1);

  const passes: PassResult[] = [];
  const timed = async <T>(name: string, total: number, f: (tick: (d: number, t?: number) => void) => Promise<T> | T, summary: (r: T) => string): Promise<T> => {
    const bar = ui.stage(name, total);
    const t0 = Date.now();
    try {
      const r = await f((d, t) => bar.tick(d, t));
      const line = summary(r);
      passes.push({ name, summary: line });
      bar.stop();
      ui.log(`${name.padEnd(10)} ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${line}`);
      return r;
    } catch (e) {
      bar.stop();
      throw e;
    }
  };
  const L = sites.length;
  const E = opts.experts;
  // Repair is the default for models whose FFNs are not ReLU (stock GELU checkpoints) when the thresholds are chosen
  // for a budget: measured far better there. On ReLU-fine-tuned models it gains too, but a refitted W2 serves every
  // scale, so the dense scales and `moe_threshold` 0 would no longer be the dense model: there it is asked for
  // (--repair). With given thresholds (--threshold/--tau) the experts stay the model's own. The gradient fit after
  // the closed form is the default only for FFNs up to REPAIR_EPOCHS_MAX_HIDDEN (its cost).
  const doRepair = opts.repair ?? ((opts.repairEpochs ?? 0) > 0 || (!opts.thresholds && !opts.tau && sites.some((s) => s.activation.kind !== 'relu')));
  const repairEpochs = opts.repairEpochs ?? (sites.every((s) => s.H <= REPAIR_EPOCHS_MAX_HIDDEN) ? CONVERT_DEFAULTS.repairEpochs : 0);
  // Without repair the experts are the ReLUfied FFNs: relufy first, so the captured FFN inputs, the clustering and
  // the router targets are those of the ReLU model. Repaired experts reproduce the dense FFNs, so a repaired MoE
  // sees the dense model's stream: then capture comes first.
  const captureStage = () => timed('capture', opts.calib ? 1 : opts.synthSamples, (tick) => capture(model, structure, sites, opts, (d, t) => tick(d, t)), (r) => r.summary);
  const early = doRepair ? await captureStage() : null;
  const acts = await timed('relufy', 1, () => relufy(model, sites, opts.activation), (r) => r.summary);
  const warnings: string[] = [];
  let warned = 0;
  const warn = (...w: string[]) => {
    warnings.push(...w);
    for (; warned < warnings.length; warned++) (ui.warn ?? ((x: string) => ui.log(`warning: ${x}`)))(warnings[warned]);
  };
  // The bar counts samples; capture reports (done, total) with the total it actually runs.
  const sample = early ?? (await captureStage());
  warn(...sample.warnings);
  const changes = await relufyReport(sites, acts, sample);
  if (changes.some((c) => c !== null)) ui.log(`relufy: FFN output change on calibration data per layer: ${changes.map((c) => (c === null ? '-' : (c * 100).toFixed(1) + '%')).join(', ')}`);
  // Repaired experts are fitted to the model's own FFN: the activation change is what the repair undoes.
  const big = doRepair ? null : activationChangeWarning(changes, acts.original, acts.experts);
  if (big) warn(big);
  const clustering = await timed('cluster', L, (tick) => cluster(sites, acts.experts, sample, opts, (k) => tick(k + 1)), (r) => r.summary);
  const weights = await timed('permute', 1, () => permute(sites, clustering, acts.experts), () => `permuted ${L} FFNs into expert-contiguous layout`);
  // Routers learn the permuted experts' norms, so expert e of the router is expert e of the op.
  const routers = await timed('routers', L, (tick) => trainRouters(sample, weights, opts, (k) => tick(k + 1)), (r) => r.summary);
  // The budget is what the user pays: the routers' share of the FFN FLOPs comes off the experts' part.
  const routerShare = routers.routers.reduce((a, r, k) => a + routerFlopsPerToken(sites[k].D, r.width, E), 0) / sites.reduce((a, s) => a + 4 * s.D * s.H, 0);
  const plan = await timed('thresholds', 1, () => chooseThresholds(structure.layout, sample, routers, { ...opts, routerShare }), (r) => r.summary);
  warn(...plan.warnings);
  const repaired = doRepair ? await timed('repair', L, (tick) => repair(sample, weights, acts.original, routers, plan, { ...opts, repairEpochs }, (k) => tick(k + 1)), (r) => r.summary) : null;
  await timed('insert', 1, () => insert(model, structure.layout, sites, E, repaired?.weights ?? weights, routers, plan), (line) => line);

  const options = {
    experts: opts.experts, fromScale: opts.fromScale, activation: opts.activation, clusterBy: opts.clusterBy, seed: opts.seed,
    thresholds: opts.thresholds ?? null, tau: opts.tau ?? null, budget: opts.thresholds || opts.tau ? null : opts.budget ?? CONVERT_DEFAULTS.budget,
    calib: opts.calib ? path.basename(opts.calib) : null, routerWidth: routers.routers[0]?.width ?? null, routerEpochs: opts.routerEpochs, routerTarget: opts.routerTarget, repair: doRepair, repairEpochs: doRepair ? repairEpochs : 0, patchNums: structure.layout.patchNums,
  };
  // moefy produced this model; the source's producer is kept in the metadata.
  model.setMetadata(METADATA.sourceProducer, `${model.proto.producer_name ?? ''} ${model.proto.producer_version ?? ''}`.trim());
  model.proto.producer_name = 'moefy';
  model.proto.producer_version = MOEFY_VERSION;
  model.setMetadata(METADATA.version, MOEFY_VERSION);
  model.setMetadata(METADATA.options, JSON.stringify(options));
  model.setMetadata(METADATA.seed, String(opts.seed));
  model.setMetadata(METADATA.fromScale, String(opts.fromScale));
  model.setMetadata(METADATA.expectedActiveFraction, plan.activeFractions.map((f) => (Number.isNaN(f) ? '-' : f.toFixed(3))).join(','));

  // FFN FLOPs per scale, dense against MoE (expected from the calibration active fractions, plus the routers).
  const rows = structure.rowsPerSample;
  const routerPerToken = routers.routers.reduce((a, r, k) => a + routerFlopsPerToken(sites[k].D, r.width, E), 0);
  const scales: ScaleReport[] = dense.scales.map((sc) => {
    const s = sc.scale - 1;
    const moe = s >= opts.fromScale - 1;
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
  warn(...costWarnings(scales, totals));
  const report: ConversionReport = {
    moefy: MOEFY_VERSION, input: path.basename(input), output: path.basename(output), options,
    graph: { kind: structure.kind, stepScale: structure.stepScale, patchNums: structure.layout.patchNums },
    layers: sites.map((s, k) => ({
      block: s.block, relufyRelChange: changes[k], clusterBy: opts.clusterBy, concentration: clustering.concentration[k],
      routerR2: routers.routers[k].heldOutR2, routerRecall: routers.routers[k].recall, activeFractionPerScale: plan.activeFractionPerLayer[k],
      D: s.D, H: s.H, experts: E, expertSize: s.H / E, activation: acts.experts[k], originalActivation: acts.original[k], repair: repaired?.layers[k] ?? null,
    })),
    scales,
    totals,
    passes, warnings,
  };
  // Atomic writes: the report under a temporary name first, the model (and its data) renamed last.
  const tmpReport = tempSibling(reportFile);
  try {
    withPath(reportFile, () => fs.writeFileSync(tmpReport, JSON.stringify(report, null, 2) + '\n'));
    saveModel(model, output, { externalData: given.externalData ? true : 'auto' });
    withPath(reportFile, () => commitTemp(tmpReport, reportFile));
  } catch (e) {
    removeTemp(tmpReport);
    throw e;
  }
  return report;
}
