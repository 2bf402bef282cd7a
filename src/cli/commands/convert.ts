import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { CONVERT_DEFAULTS as D, ROUTER_WIDTH } from '../../convert-options';
import { MoefyError } from '../../errors';
import { convert, defaultOutput, reportPath } from '../../pipeline';
import { formatThreshold, human, pct, scaleRange, table } from '../../format';
import { parseNumberList, parsePatchNums } from '../options';
import { conversionUi } from '../progress';
import { fileIdentity, ownExternalData } from '../../io/output-paths';
import { withPath } from '../../files/env-errors';
import { existing, integer, nonEmpty, number, once, whole } from '../validate';

interface Args {
  model: string;
  experts: number;
  'from-scale': number;
  output?: string;
  calib?: string;
  'external-data'?: boolean;
  'kv-prefix'?: string;
  threshold?: string;
  tau?: string;
  budget?: number;
  seed: number;
  activation: string;
  'cluster-by': string;
  'patch-nums'?: string;
  'router-width'?: number;
  'router-epochs': number;
  'router-target': string;
  'synth-samples': number;
  'max-tokens': number;
  json?: boolean;
  quiet?: boolean;
  repair?: boolean;
  'repair-epochs'?: number;
}

/** Every option checked before the model is read, in the user's words. */
function validate(a: Args): void {
  once(a, ['model', 'output', 'calib', 'kv-prefix', 'threshold', 'tau', 'budget', 'experts', 'from-scale', 'seed', 'activation', 'cluster-by', 'patch-nums', 'router-width', 'router-epochs', 'router-target', 'synth-samples', 'max-tokens', 'repair', 'repair-epochs']);
  nonEmpty(a, ['output', 'calib', 'kv-prefix', 'threshold', 'tau', 'patch-nums']);
  whole(a, 'experts');
  whole(a, 'from-scale');
  integer(a, 'seed', 0);
  integer(a, 'router-width', 1);
  integer(a, 'router-epochs', 1);
  integer(a, 'synth-samples', 1);
  integer(a, 'max-tokens', 2, 'router training holds some of the tokens out to measure its fit');
  integer(a, 'repair-epochs', 0);
  if ((a['repair-epochs'] ?? 0) > 0 && a.repair === false) throw new MoefyError('--repair-epochs needs the repair (it was turned off with --no-repair)');
  number(a, 'budget', 0, 1, { minExclusive: true });
  existing('model', a.model, { file: true });
  if (a.calib) existing('--calib', a.calib);
  for (const p of a['kv-prefix']?.split(',') ?? []) existing('--kv-prefix', p, { file: true });
}

const builder = (y: import('yargs').Argv) =>
    y
      .positional('model', { type: 'string', demandOption: true, describe: 'dense VAR ONNX model' })
      .option('experts', { type: 'number', demandOption: true, describe: 'experts per FFN (must divide the hidden size)' })
      .option('from-scale', { type: 'number', demandOption: true, describe: 'first scale (1-based) that runs as MoE' })
      .option('output', { alias: 'o', type: 'string', describe: 'output model (default <model>.moe.onnx); the report goes beside it as .json' })
      .option('external-data', { type: 'boolean', describe: 'write the weights to <output>.data (automatic above 2 GB)' })
      .option('calib', { type: 'string', describe: 'calibration inputs: a folder of .bin + manifest.json, or an .npz' })
      .option('kv-prefix', { type: 'string', describe: 'step graphs: comma-separated graphs of the earlier scales (scale 1 first), run to build the KV cache from full-sequence --calib data' })
      .option('threshold', { type: 'string', describe: 'thresholds for scales from-scale…last, comma-separated (or one for all)' })
      .option('tau', { type: 'string', describe: "DMoE-VAR's tau per scale (threshold = 1 − tau)" })
      .option('budget', { type: 'number', describe: `fraction of the dense FFN FLOPs the MoE scales may spend, routers included (default ${D.budget})` })
      .option('seed', { type: 'number', default: D.seed, describe: 'seed of every random choice' })
      .option('activation', { choices: ['relu', 'keep'], default: D.activation, describe: "experts' activation: ReLU (DMoE-VAR) or keep the model's" })
      .option('cluster-by', { choices: ['weights', 'activations'], default: D.clusterBy, describe: 'cluster neurons by co-activation on the calibration data (default: measured better) or by fc1 weights (DMoE-VAR reference)' })
      .option('patch-nums', { type: 'string', describe: 'patch side per scale (default VAR 1,2,3,4,5,6,8,10,13,16)' })
      .option('router-width', { type: 'number', describe: `router hidden width (default: D/${1 / ROUTER_WIDTH.perD} within ${ROUTER_WIDTH.min}…${ROUTER_WIDTH.max})` })
      .option('router-target', { choices: ['sqrt', 'norm'], default: D.routerTarget, describe: 'router regresses √norm (default, routes better) or the norm itself (DMoE-VAR)' })
      .option('router-epochs', { type: 'number', default: D.routerEpochs, describe: 'router training epochs' })
      .option('synth-samples', { type: 'number', default: D.synthSamples, describe: 'samples to synthesise without --calib' })
      .option('max-tokens', { type: 'number', default: D.maxTokens, describe: 'captured tokens per layer (seeded subsample above this)' })
      .option('repair', { type: 'boolean', describe: "refit the experts to the dense FFN's outputs on the calibration data under the chosen routing (default: on for GELU models converted for a --budget, H ≤ 1024; --no-repair turns it off)" })
      .option('repair-epochs', { type: 'number', describe: `repair, then train all expert weights for up to N epochs (default ${D.repairEpochs} when repairing; 0: closed form only)` })
      .option('json', { type: 'boolean', describe: 'print the conversion report as JSON on stdout (stage lines go to stderr)' })
      .option('quiet', { alias: 'q', type: 'boolean', describe: 'print nothing but warnings and errors' });

async function handler(a: Args): Promise<void> {
    validate(a);
    const out = path.resolve(a.output ?? defaultOutput(a.model));
    const data = `${out}.data`;
    // The earlier output's weights, when they are there: removed if the new model does not write them again.
    const stale = ownExternalData(out);
    const before = fileIdentity(data);
    const r = await convert(a.model, {
      experts: a.experts, fromScale: a['from-scale'], output: a.output, externalData: a['external-data'], calib: a.calib, kvPrefix: a['kv-prefix'] ? a['kv-prefix'].split(',') : undefined,
      thresholds: parseNumberList('threshold', a.threshold), tau: parseNumberList('tau', a.tau), budget: a.budget,
      seed: a.seed, activation: a.activation as 'relu' | 'keep', clusterBy: a['cluster-by'] as 'weights' | 'activations',
      patchNums: parsePatchNums(a['patch-nums']), routerWidth: a['router-width'], routerEpochs: a['router-epochs'], routerTarget: a['router-target'] as 'sqrt' | 'norm',
      synthSamples: a['synth-samples'], maxTokens: a['max-tokens'], repair: a.repair, repairEpochs: a['repair-epochs'],
    }, conversionUi(a));
    // saveModel renames a new file over <output>.data: the same file as before means this conversion did not write it.
    const dataWritten = fileIdentity(data) !== null && fileIdentity(data) !== before;
    const removed = stale && !dataWritten ? [data] : [];
    for (const f of removed) withPath(f, () => fs.rmSync(f, { force: true }), "cannot remove the earlier output's external data");
    const wrote = [out, ...(dataWritten ? [data] : []), path.resolve(reportPath(out))];
    if (a.json) {
      process.stdout.write(JSON.stringify({ ...r, wrote, removed }, null, 2) + '\n');
      return;
    }
    if (a.quiet) return;
    const rows = r.scales.map((s) => [s.scale, `${s.patch}x${s.patch}`, s.tokens, s.moe ? formatThreshold(s.threshold) : 'dense', s.activeFraction === null ? '-' : pct(s.activeFraction), human(s.ffnFlopsDense), human(s.ffnFlopsMoe), pct(s.ffnFlopsMoe / s.ffnFlopsDense)]);
    process.stdout.write(table(['scale', 'patch', 'tokens', 'threshold', 'active', 'FFN dense', 'FFN MoE+routers', 'MoE/dense'], rows) + '\n');
    const t = r.totals;
    process.stdout.write(`FFN FLOPs per sample (MoE: experts + routers): dense ${human(t.ffnFlopsDense)}, MoE ${human(t.ffnFlopsMoe)} (${pct(t.ffnFlopsMoe / t.ffnFlopsDense)})` +
      `${t.moeScalesBudgetSpent !== null ? `; MoE ${moeScaleRange(r.scales.filter((s) => s.moe).map((s) => s.scale))}: ${pct(t.moeScalesBudgetSpent)}${r.options.budget !== null ? ` (budget ${pct(r.options.budget as number)})` : ''}` : ''}\n`);
    process.stdout.write(`whole model FLOPs per sample: dense ${human(t.flopsDense)}, MoE ${human(t.flopsMoe)} (${pct(t.flopsMoe / t.flopsDense)})\n`);
    process.stdout.write(`router held-out R²: ${r.layers.map((l) => l.routerR2?.toFixed(3)).join(', ')}\n`);
    process.stdout.write(`wrote ${wrote.join(', ')}${removed.length ? `; removed ${removed.join(', ')} (the earlier output's weights, which the new model does not use)` : ''}\n`);
}

const moeScaleRange = (scales: number[]) => scaleRange(scales[0], scales[scales.length - 1]);

const describe = 'Convert a dense VAR into a dynamic-MoE VAR (DMoE-VAR)';
/** `moefy convert model.onnx …`, and the bare `moefy model.onnx …` kept as the default command. */
export const convertCommand: CommandModule<object, Args> = { command: 'convert <model>', describe, builder: builder as never, handler };
const command: CommandModule<object, Args> = { command: '$0 <model>', describe: false as never, builder: builder as never, handler };
export default command;
