import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { MoefyError } from '../../errors';
import { printEval } from '../../eval/format';
import { generate, printGenerate } from '../../eval/generate';
import { writeRouterMaps } from '../../eval/router-maps';
import { closeSide, openSide } from '../../eval/side';
import { printSweep, sweep } from '../../eval/sweep';
import { evaluate, loadInputs } from '../../eval/teacher';
import { parseNumberList, parsePatchNums } from '../options';

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
}

/** A one-line progress counter on a terminal's stderr. */
function progress(what: string): ((done: number, total: number) => void) | undefined {
  if (!process.stderr.isTTY) return undefined;
  return (done, total) => process.stderr.write(`\r${what}: ${done}/${total} samples${done === total ? '\n' : ''}`);
}

const command: CommandModule<object, Args> = {
  command: 'eval [dense] [moe]',
  describe: 'Quality against FLOPs per scale, dense vs MoE: teacher-forced (KL, top-1, CE, FFN error, active experts, FLOPs), threshold sweeps, generation, router maps',
  builder: (y) =>
    y
      .positional('dense', { type: 'string', describe: 'dense full-sequence VAR ONNX model' })
      .positional('moe', { type: 'string', describe: 'its MoE conversion (the dense model again to check the harness)' })
      .option('inputs', { type: 'string', describe: 'teacher-forcing inputs: folder of .bin + manifest.json or .npz (gt_idx_BL [B, L] enables CE)' })
      .option('json', { type: 'boolean', describe: 'print the report as JSON (see README)' })
      .option('threshold', { type: 'string', describe: 'override moe_threshold: one value per scale, or one for every scale from the conversion\'s from-scale on' })
      .option('batch', { type: 'number', describe: 'samples per run (default: fits ~256 MB of logits)' })
      .option('limit', { type: 'number', describe: 'use only the first N samples' })
      .option('replay', { type: 'boolean', default: true, describe: 'replay the routers on the dense FFN inputs (the conversion report\'s estimate; --no-replay skips it: it runs in JavaScript)' })
      .option('sweep', { type: 'string', describe: 'sweep threshold families; write sweep.csv, sweep.png and sweep.json into this folder' })
      .option('grid', { type: 'string', describe: 'sweep thresholds (default 0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.7)' })
      .option('router-maps', { type: 'string', describe: 'write a PNG per scale of the experts used per token for one sample into this folder' })
      .option('map-scales', { type: 'string', describe: 'scales (1-based) of the router maps (default 8,9,10)' })
      .option('sample', { type: 'number', default: 0, describe: 'sample index for the router maps' })
      .option('generate', { type: 'boolean', describe: 'sample images with the step graphs, dense and MoE with identical seeds' })
      .option('steps', { type: 'string', describe: 'dense step graphs: a folder of var_step_s{0..}.onnx or a comma-separated list' })
      .option('moe-steps', { type: 'string', describe: 'converted step graphs (folder or list); scales without one run the dense graph' })
      .option('vq', { type: 'string', describe: 'folder of vq_nextscale_s{0..}.onnx (the tokenizer\'s next-scale input)' })
      .option('decoder', { type: 'string', describe: 'VQVAE decoder ONNX (f_hat → image)' })
      .option('images', { type: 'string', describe: 'write a PNG grid of the decoded images (dense row above MoE row)' })
      .option('dump-calib', { type: 'string', describe: 'with --generate: write each step\'s dense inputs to <dir>/s{k}/ (calibration data for converting the step graphs)' })
      .option('samples', { type: 'number', default: 8, describe: 'images to generate' })
      .option('labels', { type: 'string', describe: 'class labels, comma-separated (default 0,1,…,samples−1)' })
      .option('cfg', { type: 'number', default: 2, describe: 'classifier-free guidance strength (ramped per scale inside the step graphs)' })
      .option('top-k', { type: 'number', default: 900, describe: 'top-k sampling' })
      .option('top-p', { type: 'number', default: 0.96, describe: 'top-p sampling' })
      .option('seed', { type: 'number', default: 0, describe: 'sampling seed (identical for dense and MoE)' })
      .option('patch-nums', { type: 'string', describe: 'patch side per scale (default VAR 1,2,3,4,5,6,8,10,13,16)' }),
  handler: async (a) => {
    const patchNums = parsePatchNums(a['patch-nums']);
    if (a.generate) {
      if (!a.steps || !a.vq) throw new MoefyError('--generate needs --steps and --vq');
      const r = await generate({
        steps: a.steps, moeSteps: a['moe-steps'], vq: a.vq, decoder: a.decoder, images: a.images, samples: a.samples,
        labels: parseNumberList('labels', a.labels), thresholds: parseNumberList('threshold', a.threshold), dumpCalib: a['dump-calib'], cfg: a.cfg, topK: a['top-k'], topP: a['top-p'], seed: a.seed, patchNums,
      });
      process.stdout.write((a.json ? JSON.stringify(r, null, 2) : printGenerate(r)) + '\n');
      return;
    }
    if (!a.dense || !a.moe) throw new MoefyError('eval needs two models: moefy eval dense.onnx moe.onnx --inputs <folder|npz> (or --generate)');
    if (!a.inputs) throw new MoefyError('--inputs is required (a folder of .bin + manifest.json, or an .npz)');
    const inputs = await loadInputs(a.inputs);
    const dense = await openSide(a.dense, { patchNums, withFfnIn: !a.sweep && a.replay });
    const moe = await openSide(a.moe, { patchNums });
    try {
      const S = dense.structure.layout.patchNums.length;
      let thr = parseNumberList('threshold', a.threshold) ?? null;
      if (thr) {
        if (thr.some((t) => !(t >= 0 && t <= 1))) throw new MoefyError(`--threshold values must lie in [0, 1]`);
        if (thr.length === 1) {
          const from = moe.fromScale ?? 1;
          thr = Array.from({ length: S }, (_, s) => (s + 1 >= from ? thr![0] : 0));
        } else if (thr.length !== S) throw new MoefyError(`--threshold has ${thr.length} values; the model has ${S} scales (or give one)`);
      }
      const names = { dense: path.basename(a.dense), moe: path.basename(a.moe), inputs: path.basename(a.inputs) };
      if (a.sweep) {
        const r = await sweep(dense, moe, inputs, { dir: a.sweep, grid: parseNumberList('grid', a.grid), batch: a.batch, limit: a.limit, names, onProgress: progress('sweep') });
        process.stdout.write((a.json ? JSON.stringify(r, null, 2) : printSweep(r)) + '\n');
        return;
      }
      const mapScales = parseNumberList('map-scales', a['map-scales']) ?? [8, 9, 10].filter((s) => s <= S);
      const res = await evaluate(dense, moe, inputs, { settings: [thr], batch: a.batch, limit: a.limit, names, keepActiveOf: a['router-maps'] ? a.sample : undefined, replayRouters: a.replay, onProgress: progress('eval') });
      const r = res.reports[0];
      let maps: string[] = [];
      if (a['router-maps']) {
        const m = res.activeMaps[0];
        if (!m) throw new MoefyError(`${a.moe} has no DynamicMoE 'active' outputs (or --sample ${a.sample} is past the inputs): no router maps`);
        fs.mkdirSync(a['router-maps'], { recursive: true });
        maps = await writeRouterMaps(a['router-maps'], m, moe.structure.layout, mapScales, { experts: moe.experts, title: path.basename(a.moe), sample: a.sample, thresholds: r.thresholds });
      }
      process.stdout.write((a.json ? JSON.stringify({ ...r, routerMaps: maps }, null, 2) : printEval(r) + (maps.length ? `\nrouter maps: ${maps.join(', ')}` : '')) + '\n');
    } finally {
      await closeSide(dense);
      await closeSide(moe);
    }
  },
};
export default command;
