import * as cliProgress from 'cli-progress';
import type { CommandModule } from 'yargs';
import { CONVERT_DEFAULTS as D } from '../../convert-options';
import { MoefyError } from '../../errors';
import { convert, ProgressUi } from '../../pipeline';
import { formatThreshold, human, pct, table } from '../../format';
import { parseNumberList, parsePatchNums } from '../options';

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
  'router-width': number;
  'router-epochs': number;
  'router-target': string;
  'synth-samples': number;
  'max-tokens': number;
}

function ui(): ProgressUi {
  const tty = process.stderr.isTTY;
  return {
    stage(name, total) {
      if (!tty) return { tick: () => {}, stop: () => {} };
      const bar = new cliProgress.SingleBar({ format: `${name.padEnd(10)} [{bar}] {value}/{total}`, stream: process.stderr, clearOnComplete: true, hideCursor: true }, cliProgress.Presets.shades_classic);
      bar.start(total, 0);
      return { tick: (d) => bar.update(d), stop: () => bar.stop() };
    },
    log: (line) => process.stdout.write(line + '\n'),
  };
}

const command: CommandModule<object, Args> = {
  command: '$0 <model>',
  describe: 'Convert a dense VAR into a dynamic-MoE VAR (DMoE-VAR)',
  builder: (y) =>
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
      .option('budget', { type: 'number', describe: `fraction of the dense FFN FLOPs the MoE scales may spend (default ${D.budget})` })
      .option('seed', { type: 'number', default: D.seed, describe: 'seed of every random choice' })
      .option('activation', { choices: ['relu', 'keep'], default: D.activation, describe: "experts' activation: ReLU (DMoE-VAR) or keep the model's" })
      .option('cluster-by', { choices: ['weights', 'activations'], default: D.clusterBy, describe: 'cluster neurons by co-activation on the calibration data (default: measured better) or by fc1 weights (DMoE-VAR reference)' })
      .option('patch-nums', { type: 'string', describe: 'patch side per scale (default VAR 1,2,3,4,5,6,8,10,13,16)' })
      .option('router-width', { type: 'number', default: D.routerWidth, describe: 'router hidden width' })
      .option('router-target', { choices: ['sqrt', 'norm'], default: D.routerTarget, describe: 'router regresses √norm (default, routes better) or the norm itself (DMoE-VAR)' })
      .option('router-epochs', { type: 'number', default: D.routerEpochs, describe: 'router training epochs' })
      .option('synth-samples', { type: 'number', default: D.synthSamples, describe: 'samples to synthesise without --calib' })
      .option('max-tokens', { type: 'number', default: D.maxTokens, describe: 'captured tokens per layer (seeded subsample above this)' }),
  handler: async (a) => {
    for (const k of ['output', 'calib', 'threshold', 'tau', 'budget', 'experts', 'from-scale'] as const) {
      if (Array.isArray(a[k])) throw new MoefyError(`--${k} was given more than once`);
    }
    const r = await convert(a.model, {
      experts: a.experts, fromScale: a['from-scale'], output: a.output, externalData: a['external-data'], calib: a.calib, kvPrefix: a['kv-prefix'] ? a['kv-prefix'].split(',') : undefined,
      thresholds: parseNumberList('threshold', a.threshold), tau: parseNumberList('tau', a.tau), budget: a.budget,
      seed: a.seed, activation: a.activation as 'relu' | 'keep', clusterBy: a['cluster-by'] as 'weights' | 'activations',
      patchNums: parsePatchNums(a['patch-nums']), routerWidth: a['router-width'], routerEpochs: a['router-epochs'], routerTarget: a['router-target'] as 'sqrt' | 'norm',
      synthSamples: a['synth-samples'], maxTokens: a['max-tokens'],
    }, ui());
    const rows = r.scales.map((s) => [s.scale, `${s.patch}x${s.patch}`, s.tokens, s.moe ? formatThreshold(s.threshold) : 'dense', s.activeFraction === null ? '-' : pct(s.activeFraction), human(s.ffnFlopsDense), human(s.ffnFlopsMoe), pct(s.ffnFlopsMoe / s.ffnFlopsDense)]);
    process.stdout.write(table(['scale', 'patch', 'tokens', 'threshold', 'active', 'FFN dense', 'FFN MoE', 'MoE/dense'], rows) + '\n');
    const t = r.totals;
    process.stdout.write(`FFN FLOPs per sample: dense ${human(t.ffnFlopsDense)}, MoE ${human(t.ffnFlopsMoe)} (${pct(t.ffnFlopsMoe / t.ffnFlopsDense)})\n`);
    process.stdout.write(`router held-out R²: ${r.layers.map((l) => l.routerR2?.toFixed(3)).join(', ')}\n`);
    process.stdout.write(`wrote ${r.output} and ${r.output.replace(/\.onnx$/, '')}.json\n`);
  },
};
export default command;
