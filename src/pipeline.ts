// The main job: a dense VAR in, a dynamic-MoE VAR out. The options are checked first (so bad input leaves no
// output), the model analysed and the options resolved for it, then the stages run in data-flow order, each on what
// the earlier ones gave (src/stages/stage.ts), and the model and its report are written atomically.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { checkConvertible } from './analysis/exporter-styles';
import { analyseVar } from './analysis/var-structure';
import { checkOptions, ConvertOptions, Recipe, recordedOptions, resolveForModel } from './convert-options';
import { MoefyError } from './errors';
import { withPath } from './files/env-errors';
import { checkKvPrefix } from './calib/check-inputs';
import { checkConvertOutputs } from './io/output-paths';
import { commitTemp, removeTemp, tempSibling } from './files/temp';
import { Model } from './ir/model';
import { loadModel, saveModel } from './onnx/io';
import { METADATA } from './op';
import { insertStage } from './passes/insert';
import { captureStage } from './stages/capture';
import { clusterStage } from './stages/cluster';
import { permuteStage } from './stages/permute';
import { relufyStage } from './stages/relufy';
import { repairStage } from './stages/repair';
import { ConversionReport, flopReport, layerRow, PassResult } from './stages/report';
import { routersStage } from './stages/routers';
import type { AnyStage } from './stages/stage';
import { thresholdsStage } from './stages/thresholds';
import type { Conversion, ConversionInput, ThresholdPlan } from './stages/types';

export type { ConversionReport, LayerReport, PassResult, ScaleReport } from './stages/report';

export const MOEFY_VERSION: string = require('../../package.json').version;

/** The stages of a conversion in data-flow order: each reads what the conversion's input and earlier stages give. */
export const STAGES: readonly AnyStage[] = [captureStage, relufyStage, clusterStage, permuteStage, routersStage, thresholdsStage, repairStage, insertStage];

export interface ProgressUi {
  stage(name: string, total: number): { tick(done: number, total?: number): void; stop(): void };
  log(line: string): void;
  /** A warning as soon as it is known (it also goes into the report's `warnings`). */
  warn?(line: string): void;
}

const quietUi: ProgressUi = { stage: () => ({ tick: () => {}, stop: () => {} }), log: () => {} };

/** The report beside a model: `out.onnx` → `out.json`. */
export function reportPath(output: string): string {
  return output.replace(/\.onnx$/, '') + '.json';
}

export function defaultOutput(input: string): string {
  const ext = path.extname(input);
  return path.join(path.dirname(input), `${path.basename(input, ext)}.moe.onnx`);
}

export async function convert(input: string, given: ConvertOptions & { output?: string; externalData?: boolean }, ui: ProgressUi = quietUi): Promise<ConversionReport> {
  checkOptions(given);
  const output = given.output ?? defaultOutput(input);
  const reportFile = reportPath(output);
  const model = loadModel(input);
  checkConvertOutputs(input, model, given, output, reportFile);
  const structure = analyseVar(model, { patchNums: given.patchNums });
  if (given.kvPrefix) checkKvPrefix(given.kvPrefix, structure);
  checkConvertible(structure.blocks.filter((b) => b.ffn).map((b) => b.ffn!.precision));
  for (const b of structure.blocks) if (b.moe) throw new MoefyError(`${input} is already converted (block ${b.index} holds a DynamicMoE node)`);
  const sites = structure.blocks.map((b) => b.ffn!);
  const recipe = resolveForModel(given, {
    D: structure.D, patchNums: structure.layout.patchNums, stepScale: structure.kind === 'step' ? structure.stepScale : null,
    ffns: sites.map((s) => ({ block: s.block, H: s.H, activation: s.activation.kind })),
  });

  const { flow, passes, warnings, warn } = await runStages({ model, structure, sites, recipe }, ui);
  const options = recordedOptions(recipe);
  stamp(flow.output, recipe, options, flow.plan);
  const flops = flopReport(flow);
  warn(...flops.warnings);
  const report: ConversionReport = {
    moefy: MOEFY_VERSION, input: path.basename(input), output: path.basename(output), options,
    graph: { kind: structure.kind, stepScale: structure.stepScale, patchNums: structure.layout.patchNums },
    layers: sites.map((s, k) => layerRow(Object.assign({ block: s.block }, ...STAGES.map((st) => st.layerReport?.(flow[st.gives], k, flow) ?? {})))),
    scales: flops.scales,
    totals: flops.totals,
    passes, warnings,
  };
  // Atomic writes: the report under a temporary name first, the model (and its data) renamed last.
  const tmpReport = tempSibling(reportFile);
  try {
    withPath(reportFile, () => fs.writeFileSync(tmpReport, JSON.stringify(report, null, 2) + '\n'));
    saveModel(flow.output, output, { externalData: given.externalData ? true : 'auto' });
    withPath(reportFile, () => commitTemp(tmpReport, reportFile));
  } catch (e) {
    removeTemp(tmpReport);
    throw e;
  }
  return report;
}

/**
 * Runs the stages in order: each reads what it needs of the data so far and adds what it gives (null when it does not
 * run), with its line on the terminal and in `passes`, and its warnings said as soon as they are known.
 */
export async function runStages(input: ConversionInput, ui: ProgressUi = quietUi, stages: readonly AnyStage[] = STAGES) {
  const flow: Partial<Conversion> = { ...input };
  const passes: PassResult[] = [];
  const warnings: string[] = [];
  const warn = (...lines: string[]) => {
    for (const w of lines) {
      warnings.push(w);
      (ui.warn ?? ((x: string) => ui.log(`warning: ${x}`)))(w);
    }
  };
  for (const st of stages) {
    for (const need of st.needs) if (!(need in flow)) throw new Error(`stage ${st.name} needs ${String(need)}, which no earlier stage gives`);
    if (st.runs && !st.runs(flow)) {
      (flow as Record<string, unknown>)[st.gives] = null;
      continue;
    }
    const bar = ui.stage(st.name, st.steps(flow));
    const t0 = Date.now();
    let out: NonNullable<Conversion[keyof Conversion]>;
    try {
      out = (await st.run(flow, (done, total) => bar.tick(done, total)))!;
    } finally {
      bar.stop();
    }
    (flow as Record<string, unknown>)[st.gives] = out;
    const line = st.summary(out, flow);
    passes.push({ name: st.name, summary: line });
    ui.log(`${st.name.padEnd(10)} ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${line}`);
    for (const note of st.notes?.(out, flow) ?? []) ui.log(note);
    warn(...(st.warnings?.(out, flow) ?? []));
  }
  return { flow: flow as Conversion, passes, warnings, warn };
}

/** moefy produced this model: its producer, version, options and expected active fractions in the metadata. */
function stamp(m: Model, recipe: Recipe, options: Record<string, unknown>, plan: ThresholdPlan): void {
  // The source's producer is kept in the metadata.
  m.setMetadata(METADATA.sourceProducer, `${m.proto.producer_name ?? ''} ${m.proto.producer_version ?? ''}`.trim());
  m.proto.producer_name = 'moefy';
  m.proto.producer_version = MOEFY_VERSION;
  m.setMetadata(METADATA.version, MOEFY_VERSION);
  m.setMetadata(METADATA.options, JSON.stringify(options));
  m.setMetadata(METADATA.seed, String(recipe.seed));
  m.setMetadata(METADATA.fromScale, String(recipe.fromScale));
  m.setMetadata(METADATA.expectedActiveFraction, plan.activeFractions.map((f) => (Number.isNaN(f) ? '-' : f.toFixed(3))).join(','));
}
