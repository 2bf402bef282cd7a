import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { Tensor } from 'onnxruntime-common';
import { analyseVar } from '../../analysis/var-structure';
import { MoefyError } from '../../errors';
import { readTensorSet } from '../../io';
import { loadModel } from '../../onnx/io';
import { checkCalib, synthesiseInputs } from '../../calib/inputs';
import { createSession } from '../../runtime';
import { table } from '../../format';
import { parsePatchNums } from '../options';
import { existing, integer, nonEmpty, once, threads } from '../validate';
import { checkEmbeddingInputs, checkSamples } from '../../calib/check-inputs';
import { checkPair } from '../../eval/pair';

interface Args {
  dense: string;
  moe: string;
  inputs?: string;
  samples: number;
  threads: number;
  reps: number;
  seed: number;
  'patch-nums'?: string;
  json?: boolean;
  quiet?: boolean;
}

/** Best wall time of `reps` runs after one warm-up, in ms. */
async function time(file: string, feeds: Record<string, Tensor>, threads: number, reps: number): Promise<number> {
  // ONNX Runtime's own log lines off (fatal only): its errors come back in the one line moefy prints.
  const s = await createSession(file, { intraOpNumThreads: threads, logSeverity: 4 });
  try {
    const f = Object.fromEntries(s.inputNames.map((n) => {
      if (!feeds[n]) throw new MoefyError(`${file} needs input '${n}', which the inputs do not hold`);
      return [n, feeds[n]];
    }));
    await s.run(f);
    let best = Infinity;
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      await s.run(f);
      best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e6);
    }
    return best;
  } finally {
    s.release();
  }
}

/** `moefy bench dense.onnx moe.onnx`: the two models timed in one run with moefy's runtime, as a ratio. */
const command: CommandModule<object, Args> = {
  command: 'bench <dense> <moe>',
  describe: 'Time a dense VAR and its converted MoE model in one run (moefy runtime) and print the ratio',
  builder: (y) =>
    y
      .positional('dense', { type: 'string', demandOption: true, describe: 'the dense model' })
      .positional('moe', { type: 'string', demandOption: true, describe: 'the converted model' })
      .option('inputs', { type: 'string', describe: 'inputs (folder of .bin + manifest.json, or .npz); default: synthesised' })
      .option('samples', { type: 'number', default: 1, describe: 'samples to synthesise without --inputs' })
      .option('threads', { type: 'number', default: 0, describe: 'intra-op threads (0: ONNX Runtime default)' })
      .option('reps', { type: 'number', default: 5, describe: 'timed runs per model (best is reported)' })
      .option('seed', { type: 'number', default: 0, describe: 'seed of the synthesised inputs' })
      .option('patch-nums', { type: 'string', describe: "patch side per scale (default: the converted model's own)" })
      .option('json', { type: 'boolean', describe: 'print the times and the ratio as JSON' })
      .option('quiet', { alias: 'q', type: 'boolean', describe: 'print only the ratio' }),
  handler: async (a) => {
    once(a, ['dense', 'moe', 'inputs', 'samples', 'threads', 'reps', 'seed', 'patch-nums']);
    nonEmpty(a, ['inputs', 'patch-nums']);
    integer(a, 'samples', 1);
    threads(a, 0);
    integer(a, 'reps', 1);
    integer(a, 'seed', 0);
    existing('dense model', a.dense, { file: true });
    existing('MoE model', a.moe, { file: true });
    if (a.inputs) existing('--inputs', a.inputs);
    // The converted model first: its DynamicMoE nodes carry the patch layout that the dense export lacks.
    const override = parsePatchNums(a['patch-nums']);
    const moe = loadModel(a.moe);
    const md = analyseVar(moe, { patchNums: override });
    const dense = loadModel(a.dense);
    const structure = analyseVar(dense, { patchNums: override ?? md.layout.patchNums });
    checkPair({ file: a.dense, model: dense, structure }, { file: a.moe, model: moe, structure: md });
    let feeds: Record<string, Tensor>;
    if (a.inputs) {
      feeds = await readTensorSet(a.inputs);
      checkSamples(feeds, `--inputs ${a.inputs}`);
      checkCalib(dense, feeds, a.inputs, `--inputs ${a.inputs}`);
      checkEmbeddingInputs(dense, feeds, `--inputs ${a.inputs}`);
    } else feeds = synthesiseInputs(dense, structure, a.samples, a.seed) as unknown as Record<string, Tensor>;
    const d = await time(a.dense, feeds, a.threads, a.reps);
    const m = await time(a.moe, feeds, a.threads, a.reps);
    const kind = structure.kind === 'step' ? `step graph${structure.stepScale ? ` (scale ${structure.stepScale})` : ''}` : 'full sequence';
    if (a.json) {
      process.stdout.write(JSON.stringify({ kind, reps: a.reps, threads: a.threads, dense: { model: path.resolve(a.dense), ms: d }, moe: { model: path.resolve(a.moe), ms: m }, ratio: m / d }, null, 2) + '\n');
      return;
    }
    if (a.quiet) {
      process.stdout.write(`${(m / d).toFixed(3)}\n`);
      return;
    }
    process.stdout.write(`${kind}, best of ${a.reps} runs after a warm-up\n`);
    process.stdout.write(table(['model', 'ms', 'ratio'], [[a.dense, d.toFixed(1), '1.000'], [a.moe, m.toFixed(1), (m / d).toFixed(3)]]) + '\n');
  },
};
export default command;
