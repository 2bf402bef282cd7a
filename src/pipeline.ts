// The main job: a dense VAR in, a dynamic-MoE VAR out. Validation first (so bad input leaves no output), then the
// passes in order, then the model and its report written atomically.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { analyseVar } from './analysis/var-structure';
import { countFlops, moeFfnFlops, routerFlopsPerToken } from './analysis/flops';
import { MoefyError } from './errors';
import { loadModel, saveModel } from './onnx/io';
import { capture } from './passes/capture';
import { cluster } from './passes/cluster';
import { insert } from './passes/insert';
import { permute } from './passes/permute';
import { relufy, relufyReport } from './passes/relufy';
import { LayerNorms, routers } from './passes/routers';
import { thresholds, validateThresholdOptions, DEFAULT_BUDGET } from './passes/thresholds';
import { ConversionState, ConvertOptions, PassResult } from './passes/types';

export const MOEFY_VERSION: string = require('../../package.json').version;

export interface ProgressUi {
  stage(name: string, total: number): { tick(done: number): void; stop(): void };
  log(line: string): void;
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

export interface ConversionReport {
  moefy: string;
  input: string;
  output: string;
  options: Record<string, unknown>;
  graph: { kind: string; stepScale: number | null; patchNums: number[] };
  layers: (ConversionState['layers'][number] & { D: number; H: number; experts: number; expertSize: number; activation: string; originalActivation: string })[];
  scales: ScaleReport[];
  totals: { ffnFlopsDense: number; ffnFlopsMoe: number; moeScalesBudgetSpent: number | null };
  passes: PassResult[];
  warnings: string[];
}

export function defaultOutput(input: string): string {
  const ext = path.extname(input);
  return path.join(path.dirname(input), `${path.basename(input, ext)}.moe.onnx`);
}

export async function convert(input: string, opts: ConvertOptions & { output?: string; externalData?: boolean }, ui: ProgressUi = quietUi): Promise<ConversionReport> {
  const output = opts.output ?? defaultOutput(input);
  const reportFile = output.replace(/\.onnx$/, '') + '.json';
  const outDir = path.dirname(path.resolve(output));
  if (!fs.existsSync(outDir) || !fs.statSync(outDir).isDirectory()) throw new MoefyError(`-o ${output}: the folder ${outDir} does not exist`);
  if (path.resolve(output) === path.resolve(input)) throw new MoefyError(`-o ${output}: the output would overwrite the input model`);
  const model = loadModel(input);
  const structure = analyseVar(model, { patchNums: opts.patchNums });
  const S = structure.layout.patchNums.length;
  if (!Number.isInteger(opts.experts) || opts.experts < 1) throw new MoefyError(`--experts ${opts.experts} must be a positive integer`);
  for (const b of structure.blocks) {
    if (b.moe) throw new MoefyError(`${input} is already converted (block ${b.index} holds a DynamicMoE node)`);
    if (b.ffn!.H % opts.experts !== 0) throw new MoefyError(`--experts ${opts.experts} does not divide the FFN hidden size H = ${b.ffn!.H} (block ${b.index})`);
  }
  if (!Number.isInteger(opts.fromScale) || opts.fromScale < 1 || opts.fromScale > S) throw new MoefyError(`--from-scale ${opts.fromScale} is out of range: the model has scales 1…${S}`);
  const st: ConversionState = {
    model, structure, options: opts, sites: structure.blocks.map((b) => b.ffn!),
    originalActivation: [], expertActivation: [], captures: [], layouts: [], weights: [], routers: [], thresholds: [], activeFractions: [],
    layers: structure.blocks.map((b) => ({ block: b.index, relufyRelChange: null, clusterBy: opts.clusterBy, concentration: null, routerR2: null, routerRecall: null, activeFractionPerScale: {} })),
    warnings: [], notes: [],
  };
  validateThresholdOptions(st);
  if (structure.kind === 'step' && structure.stepScale !== null && structure.stepScale < opts.fromScale)
    throw new MoefyError(`this step graph computes scale ${structure.stepScale}, before --from-scale ${opts.fromScale}: it has nothing to run as MoE (convert only the step graphs of scales ${opts.fromScale}…${S})`);
  const dense = countFlops(model, structure, 1);

  const passes: PassResult[] = [];
  const timed = async (name: string, total: number, f: (tick: (d: number) => void) => Promise<PassResult> | PassResult) => {
    const bar = ui.stage(name, total);
    const t0 = Date.now();
    try {
      const r = await f((d) => bar.tick(d));
      passes.push(r);
      bar.stop();
      ui.log(`${name.padEnd(10)} ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${r.summary}`);
    } catch (e) {
      bar.stop();
      throw e;
    }
  };
  const L = st.sites.length;
  await timed('relufy', 1, () => relufy(st));
  await timed('capture', opts.calib ? 1 : opts.synthSamples, (tick) => capture(st, (d) => tick(d)));
  for (const w of st.warnings) ui.log(`warning: ${w}`);
  const changes = await relufyReport(st);
  changes.forEach((c, k) => (st.layers[k].relufyRelChange = c));
  if (changes.some((c) => c !== null)) ui.log(`relufy: FFN output change on calibration data per layer: ${changes.map((c) => (c === null ? '-' : (c * 100).toFixed(1) + '%')).join(', ')}`);
  await timed('cluster', L, (tick) => cluster(st, (k) => tick(k + 1)));
  await timed('permute', 1, () => permute(st));
  const norms: LayerNorms[] = [];
  await timed('routers', L, (tick) => routers(st, norms, (k) => tick(k + 1)));
  await timed('thresholds', 1, () => thresholds(st, norms));
  await timed('insert', 1, () => insert(st));

  const options = {
    experts: opts.experts, fromScale: opts.fromScale, activation: opts.activation, clusterBy: opts.clusterBy, seed: opts.seed,
    thresholds: opts.thresholds ?? null, tau: opts.tau ?? null, budget: opts.thresholds || opts.tau ? null : opts.budget ?? DEFAULT_BUDGET,
    calib: opts.calib ? path.basename(opts.calib) : null, routerWidth: opts.routerWidth, routerEpochs: opts.routerEpochs, routerTarget: opts.routerTarget ?? 'norm', patchNums: structure.layout.patchNums,
  };
  // moefy produced this model; the source's producer is kept in the metadata.
  model.setMetadata('moefy.source_producer', `${model.proto.producer_name ?? ''} ${model.proto.producer_version ?? ''}`.trim());
  model.proto.producer_name = 'moefy';
  model.proto.producer_version = MOEFY_VERSION;
  model.setMetadata('moefy.version', MOEFY_VERSION);
  model.setMetadata('moefy.options', JSON.stringify(options));
  model.setMetadata('moefy.seed', String(opts.seed));
  model.setMetadata('moefy.from_scale', String(opts.fromScale));
  model.setMetadata('moefy.expected_active_fraction', st.activeFractions.map((f) => (Number.isNaN(f) ? '-' : f.toFixed(3))).join(','));

  // FFN FLOPs per scale, dense against MoE (expected from the calibration active fractions, plus the routers).
  const rows = structure.rowsPerSample;
  const routerPerToken = st.routers.reduce((a, r, k) => a + routerFlopsPerToken(st.sites[k].D, r.width, opts.experts), 0);
  const scales: ScaleReport[] = dense.scales.map((sc) => {
    const s = sc.scale - 1;
    const moe = s >= opts.fromScale - 1;
    const f = st.activeFractions[s];
    const af = moe ? (Number.isNaN(f) ? null : f) : 1;
    // The routers run on every token of every scale (the graph computes them before the op), so they count everywhere.
    const m = moeFfnFlops(sc.flops.ffn, af ?? 1, routerPerToken, sc.tokens, rows);
    return {
      scale: sc.scale, patch: sc.patch, tokens: sc.tokens, threshold: st.thresholds[s], moe, activeFraction: af,
      ffnFlopsDense: sc.flops.ffn, ffnFlopsMoe: m.ffn, routerFlops: m.router,
    };
  });
  const moeScales = scales.filter((x) => x.moe && x.activeFraction !== null);
  const spent = moeScales.length ? moeScales.reduce((a, x) => a + x.ffnFlopsDense * x.activeFraction!, 0) / moeScales.reduce((a, x) => a + x.ffnFlopsDense, 0) : null;
  const report: ConversionReport = {
    moefy: MOEFY_VERSION, input: path.basename(input), output: path.basename(output), options,
    graph: { kind: structure.kind, stepScale: structure.stepScale, patchNums: structure.layout.patchNums },
    layers: st.layers.map((l, k) => ({ ...l, D: st.sites[k].D, H: st.sites[k].H, experts: opts.experts, expertSize: st.sites[k].H / opts.experts, activation: st.expertActivation[k], originalActivation: st.originalActivation[k] })),
    scales,
    totals: { ffnFlopsDense: scales.reduce((a, x) => a + x.ffnFlopsDense, 0), ffnFlopsMoe: scales.reduce((a, x) => a + x.ffnFlopsMoe, 0), moeScalesBudgetSpent: spent },
    passes, warnings: st.warnings,
  };
  // Atomic writes: the report under a temporary name first, the model (and its data) renamed last.
  const tmpReport = `${reportFile}.${process.pid}.tmp`;
  fs.writeFileSync(tmpReport, JSON.stringify(report, null, 2) + '\n');
  try {
    saveModel(model, output, { externalData: opts.externalData ? true : 'auto' });
    fs.renameSync(tmpReport, reportFile);
  } catch (e) {
    fs.rmSync(tmpReport, { force: true });
    throw e;
  }
  return report;
}
