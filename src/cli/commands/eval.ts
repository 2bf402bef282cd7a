import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { MoefyError } from '../../errors';
import { checkOutputs, inputFiles } from '../../io/output-paths';
import { checkEmbeddingInputs, checkFinite, checkSamples } from '../../calib/check-inputs';
import { checkCalib } from '../../calib/inputs';
import { printEval } from '../../eval/format';
import { GENERATE_BATCH, generate, printGenerate } from '../../eval/generate';
import { checkMapScales, writeRouterMaps } from '../../eval/router-maps';
import { checkPair } from '../../eval/pair';
import { closeSide, EvalSide, openSide } from '../../eval/side';
import { checkGrid, printSweep, sweep } from '../../eval/sweep';
import { evaluate, loadInputs } from '../../eval/teacher';
import { parseNumberList, parsePatchNums } from '../options';
import { progressCallback } from '../progress';
import { existing, integer, nonEmpty, number, once } from '../validate';
import type { Argv } from 'yargs';

interface Args {
  dense?: string;
  moe?: string;
  inputs?: string;
  json?: boolean;
  threshold?: string;
  batch?: number;
  limit?: number;
  sweep?: string;
  replay: boolean;
  grid?: string;
  'router-maps'?: string;
  'map-scales'?: string;
  sample: number;
  generate?: boolean;
  steps?: string;
  'moe-steps'?: string;
  vq?: string;
  decoder?: string;
  images?: string;
  samples: number;
  'dump-calib'?: string;
  labels?: string;
  cfg: number;
  'top-k': number;
  'top-p': number;
  seed: number;
  'patch-nums'?: string;
  out?: string;
}


const progress = (what: string, a: Args) => (a.json ? undefined : progressCallback(what));

/** Options every eval form shares. */
const common = (y: Argv) =>
  y
    .option('json', { type: 'boolean', describe: 'print the report as JSON (see README)' })
    .option('threshold', { type: 'string', describe: 'override moe_threshold: one value per scale, or one for every scale from the conversion\'s from-scale on' })
    .option('patch-nums', { type: 'string', describe: 'patch side per scale (default VAR 1,2,3,4,5,6,8,10,13,16)' });

const teacherInputs = (y: Argv, hidden = false) =>
  y
    .option('inputs', { type: 'string', hidden, describe: 'teacher-forcing inputs: folder of .bin + manifest.json or .npz (gt_idx_BL [B, L] enables CE)' })
    .option('batch', { type: 'number', hidden, describe: 'samples per run (default: fits ~256 MB of logits)' })
    .option('limit', { type: 'number', hidden, describe: 'use only the first N samples' });

const sweepOptions = (y: Argv, hidden = false) =>
  y
    .option('out', { type: 'string', hidden, describe: 'folder for sweep.csv, sweep.png and sweep.json' })
    .option('grid', { type: 'string', hidden, describe: 'sweep thresholds (default 0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7)' });

const generateOptions = (y: Argv, hidden = false) =>
  y
    .option('steps', { type: 'string', hidden, describe: 'dense step graphs: a folder of var_step_s{0..}.onnx or a comma-separated list' })
    .option('moe-steps', { type: 'string', hidden, describe: 'converted step graphs (folder or list); scales without one run the dense graph' })
    .option('vq', { type: 'string', hidden, describe: 'folder of vq_nextscale_s{0..}.onnx (the tokenizer\'s next-scale input)' })
    .option('decoder', { type: 'string', hidden, describe: 'VQVAE decoder ONNX (f_hat → image)' })
    .option('images', { type: 'string', hidden, describe: 'write a PNG grid of the decoded images (dense row above MoE row)' })
    .option('dump-calib', { type: 'string', hidden, describe: 'write each step\'s dense inputs to <dir>/s{k}/ (calibration data for converting the step graphs)' })
    .option('samples', { type: 'number', default: 8, hidden, describe: 'images to generate' })
    .option('labels', { type: 'string', hidden, describe: 'class labels, comma-separated (default: the classes in turn, 0,1,…)' })
    .option('cfg', { type: 'number', default: 2, hidden, describe: 'classifier-free guidance strength (ramped per scale inside the step graphs)' })
    .option('top-k', { type: 'number', default: 900, hidden, describe: 'top-k sampling' })
    .option('top-p', { type: 'number', default: 0.96, hidden, describe: 'top-p sampling' })
    .option('seed', { type: 'number', default: 0, hidden, describe: 'sampling seed (identical for dense and MoE)' });

const teacherOptions = (y: Argv) =>
  y
    .option('replay', { type: 'boolean', default: true, describe: 'replay the routers on the dense FFN inputs (the conversion report\'s estimate; --no-replay skips it: it runs in JavaScript)' })
    .option('router-maps', { type: 'string', describe: 'write a PNG per scale of the experts used per token for one sample into this folder' })
    .option('map-scales', { type: 'string', describe: 'scales (1-based) of the router maps (default 8,9,10)' })
    .option('sample', { type: 'number', default: 0, describe: 'sample index for the router maps' });

const STRINGS = ['dense', 'moe', 'inputs', 'threshold', 'patch-nums', 'out', 'grid', 'router-maps', 'map-scales', 'steps', 'moe-steps', 'vq', 'decoder', 'images', 'dump-calib', 'labels', 'sweep'];

function validate(a: Args): void {
  once(a, [...STRINGS, 'batch', 'limit', 'sample', 'samples', 'cfg', 'top-k', 'top-p', 'seed']);
  nonEmpty(a, STRINGS);
  integer(a, 'batch', 1);
  integer(a, 'limit', 1);
  integer(a, 'sample', 0);
  integer(a, 'samples', 1);
  integer(a, 'top-k', 1);
  integer(a, 'seed', 0);
  number(a, 'top-p', 0, 1, { minExclusive: true });
  number(a, 'cfg', 0, Infinity);
}

/** `eval generate`: images from the step graphs, dense and MoE with identical seeds. */
async function runGenerate(a: Args): Promise<void> {
  validate(a);
  if (!a.steps || !a.vq) throw new MoefyError('eval generate needs --steps and --vq');
  const steps = a.steps, vq = a.vq;
  const inputs = [a.steps, a['moe-steps'], a.vq, a.decoder].filter((x): x is string => !!x).flatMap((x) => x.split(',')).flatMap((x) => inputFiles(x, 'an input model (--steps, --moe-steps, --vq, --decoder)'));
  const outs = [
    ...(a.images ? [{ path: a.images, flag: `--images ${a.images}`, what: 'the output' }] : []),
    ...(a['dump-calib'] ? [{ path: a['dump-calib'], flag: `--dump-calib ${a['dump-calib']}`, what: 'the output', kind: 'folder' as const }] : []),
  ];
  if (outs.length) checkOutputs(outs, inputs);
  for (const [flag, p] of [['--vq', a.vq], ['--decoder', a.decoder]] as const) if (p) existing(flag, p);
  const r = await generate({
    steps, moeSteps: a['moe-steps'], vq, decoder: a.decoder, images: a.images, samples: a.samples,
    labels: parseNumberList('labels', a.labels), thresholds: parseNumberList('threshold', a.threshold), dumpCalib: a['dump-calib'], cfg: a.cfg, topK: a['top-k'], topP: a['top-p'], seed: a.seed, patchNums: parsePatchNums(a['patch-nums']), batch: a.batch,
  });
  process.stdout.write((a.json ? JSON.stringify(r, null, 2) : printGenerate(r)) + '\n');
}

/** Opens both sides for the teacher-forced forms, runs `f`, closes them. */
async function withSides(a: Args, form: string, withFfnIn: boolean, f: (x: { dense: Awaited<ReturnType<typeof openSide>>; moe: Awaited<ReturnType<typeof openSide>>; inputs: Awaited<ReturnType<typeof loadInputs>>; thr: number[] | null; S: number; names: { dense: string; moe: string; inputs: string } }) => Promise<void>): Promise<void> {
  validate(a);
  if (!a.dense || !a.moe) throw new MoefyError(`${form} needs two models: moefy ${form} dense.onnx moe.onnx --inputs <folder|npz>`);
  if (!a.inputs) throw new MoefyError('--inputs is required (a folder of .bin + manifest.json, or an .npz)');
  existing('dense model', a.dense, { file: true });
  existing('MoE model', a.moe, { file: true });
  existing('--inputs', a.inputs);
  const patchNums = parsePatchNums(a['patch-nums']);
  const thrList = parseNumberList('threshold', a.threshold) ?? null;
  const badThr = thrList?.find((t) => !(t >= 0 && t <= 1));
  if (badThr !== undefined) throw new MoefyError(`--threshold values must lie in [0, 1] (got ${badThr})`);
  const inputs = await loadInputs(a.inputs);
  checkSamples(inputs as never, `--inputs ${a.inputs}`);
  checkFinite(inputs as never, `--inputs ${a.inputs}`);
  // The converted model first: its DynamicMoE nodes carry the patch layout that the dense export lacks.
  const moe = await openSide(a.moe, { patchNums });
  let dense: EvalSide;
  try {
    dense = await openSide(a.dense, { patchNums: patchNums ?? moe.structure.layout.patchNums, withFfnIn });
  } catch (e) {
    await closeSide(moe); // its temporary copy goes too
    throw e;
  }
  try {
    // The MoE side may be the dense model again (the harness check: KL 0).
    checkPair(dense, moe, { moeMayBeDense: true });
    checkCalib(dense.model, inputs as never, a.inputs, `--inputs ${a.inputs}`);
    checkEmbeddingInputs(dense.model, inputs as never, `--inputs ${a.inputs}`);
    const S = dense.structure.layout.patchNums.length;
    let thr = thrList;
    if (thr) {
      if (thr.length === 1) {
        const from = moe.fromScale ?? 1;
        thr = Array.from({ length: S }, (_, s) => (s + 1 >= from ? thrList![0] : 0));
      } else if (thr.length !== S) throw new MoefyError(`--threshold has ${thr.length} values; the model has ${S} scales (or give one)`);
    }
    const names = { dense: path.basename(a.dense), moe: path.basename(a.moe), inputs: path.basename(a.inputs) };
    await f({ dense, moe, inputs, thr, S, names });
  } finally {
    await closeSide(dense);
    await closeSide(moe);
  }
}

/** `eval sweep`: threshold families, sweep.csv/png/json. */
async function runSweep(a: Args): Promise<void> {
  const dir = a.out ?? a.sweep;
  if (!dir) throw new MoefyError('eval sweep needs --out <folder> for sweep.csv, sweep.png and sweep.json');
  const grid = parseNumberList('grid', a.grid);
  if (grid) checkGrid(grid);
  checkOutputs([{ path: dir, flag: `--out ${dir}`, what: 'the output', kind: 'folder' }], [{ path: a.dense ?? '', what: 'the dense model' }, { path: a.moe ?? '', what: 'the MoE model' }, ...inputFiles(a.inputs ?? '', 'the inputs (--inputs)')]);
  await withSides(a, 'eval sweep', false, async ({ dense, moe, inputs, names }) => {
    const r = await sweep(dense, moe, inputs, { dir, grid, batch: a.batch, limit: a.limit, names, onProgress: progress('sweep', a) });
    process.stdout.write((a.json ? JSON.stringify(r, null, 2) : printSweep(r)) + '\n');
  });
}

/** `eval`: teacher-forced quality and FLOPs per scale (and router maps). */
async function runTeacher(a: Args): Promise<void> {
  if (a.generate) return runGenerate(a);
  if (a.sweep) return runSweep(a);
  const maps = a['router-maps'];
  if (maps) checkOutputs([{ path: maps, flag: `--router-maps ${maps}`, what: 'the output', kind: 'folder' }], [a.dense, a.moe, a.inputs].filter((x): x is string => !!x).flatMap((x) => inputFiles(x, 'an input (the models, --inputs)')));
  const mapScales = parseNumberList('map-scales', a['map-scales']);
  await withSides(a, 'eval', a.replay, async ({ dense, moe, inputs, thr, S, names }) => {
    const scales = mapScales ?? [8, 9, 10].filter((s) => s <= S);
    // Everything the maps need is checked before the evaluation, so that it never runs to fail at the end.
    if (maps) {
      checkMapScales(scales, moe.structure.layout);
      const samples = Math.min(inputs[dense.feeds[0]]?.dims[0] ?? Infinity, a.limit ?? Infinity);
      if (a.sample >= samples) throw new MoefyError(`--sample ${a.sample} is past the inputs (${samples} samples${a.limit !== undefined ? ` with --limit ${a.limit}` : ''}, numbered from 0)`);
      if (!moe.active.some((x) => x !== null)) throw new MoefyError(`${a.moe} has no DynamicMoE 'active' outputs: no router maps`);
    }
    const res = await evaluate(dense, moe, inputs, { settings: [thr], batch: a.batch, limit: a.limit, names, keepActiveOf: maps ? a.sample : undefined, replayRouters: a.replay, onProgress: progress('eval', a) });
    const r = res.reports[0];
    const written = maps ? await writeRouterMaps(maps, res.activeMaps[0]!, moe.structure.layout, scales, { experts: moe.experts, title: names.moe, sample: a.sample, thresholds: r.thresholds }) : [];
    process.stdout.write((a.json ? JSON.stringify({ ...r, routerMaps: written }, null, 2) : printEval(r) + (written.length ? `\nrouter maps: ${written.map((f) => path.resolve(f)).join(', ')}` : '')) + '\n');
  });
}

const command: CommandModule = {
  command: 'eval',
  describe: 'Quality against FLOPs per scale, dense vs MoE: `eval` (teacher-forced: KL, top-1, CE, FFN error, active experts, FLOPs), `eval sweep` (threshold sweeps), `eval generate` (images)',
  builder: (y) =>
    y
      .command({
        command: 'sweep <dense> <moe>',
        describe: 'Sweep threshold families on teacher-forced inputs; write sweep.csv, sweep.png and sweep.json into --out',
        builder: (z) => sweepOptions(teacherInputs(common(z.positional('dense', { type: 'string', describe: 'dense full-sequence VAR ONNX model' }).positional('moe', { type: 'string', describe: 'its MoE conversion' })))).demandOption('inputs').demandOption('out'),
        handler: (a) => runSweep(a as unknown as Args),
      })
      .command({
        command: 'generate',
        describe: 'Sample images with the step graphs, dense and MoE with identical seeds',
        builder: (z) =>
          generateOptions(common(z))
            .option('batch', { type: 'number', describe: `samples per run of the step graphs (default ${GENERATE_BATCH}; bounds memory, the results do not depend on it)` })
            .demandOption('steps')
            .demandOption('vq'),
        handler: (a) => runGenerate(a as unknown as Args),
      })
      .command({
        command: '$0 [dense] [moe]',
        describe: 'Teacher-forced comparison per scale',
        builder: (z) =>
          // The pre-split forms `eval --sweep DIR` and `eval --generate …` keep working (hidden options).
          generateOptions(sweepOptions(teacherOptions(teacherInputs(common(z.positional('dense', { type: 'string', describe: 'dense full-sequence VAR ONNX model' }).positional('moe', { type: 'string', describe: 'its MoE conversion (the dense model again to check the harness)' })))), true), true)
            .option('sweep', { type: 'string', hidden: true, describe: 'old form of `eval sweep --out`' })
            .option('generate', { type: 'boolean', hidden: true, describe: 'old form of `eval generate`' }),
        handler: (a) => runTeacher(a as unknown as Args),
      }),
  handler: () => {},
};
export default command;
