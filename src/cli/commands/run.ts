import * as fs from 'node:fs';
import type { CommandModule } from 'yargs';
import type { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../../errors';
import { readTensorSet, writeTensorSet, describeTensor } from '../../io';
import { createSession, formatActiveSummary, summarizeActive } from '../../runtime';
import { parsePatchNums } from '../options';

interface Args {
  model: string;
  inputs: string;
  output?: string;
  threads?: number;
  fetch?: string;
  'patch-nums'?: string;
  experts?: number;
  'scale-index'?: number;
}

/** Best-effort read of patch_nums / experts from the converter's report beside the model (model.json). */
function fromReport(model: string): { patchNums?: number[]; experts?: number } {
  const p = model.replace(/\.onnx$/i, '') + '.json';
  if (p === model || !fs.existsSync(p)) return {};
  try {
    const j = JSON.parse(fs.readFileSync(p, 'utf8')) as Record<string, unknown>;
    const pick = (...keys: string[]) => keys.map((k) => j[k]).find((v) => v !== undefined);
    const pn = pick('patchNums', 'patch_nums');
    const ex = pick('experts', 'numExperts', 'num_experts');
    return {
      patchNums: Array.isArray(pn) && pn.every((x) => Number.isInteger(x)) ? (pn as number[]) : undefined,
      experts: typeof ex === 'number' ? ex : undefined,
    };
  } catch {
    return {};
  }
}

/** `moefy run model.onnx --inputs <folder|npz> [--output <folder|npz>]` */
const command: CommandModule<object, Args> = {
  command: 'run <model>',
  describe: 'Run a model (dense or MoE) with the moefy kernels on a tensor set; print outputs and experts used per scale',
  builder: (y) =>
    y
      .positional('model', { type: 'string', demandOption: true, describe: 'ONNX model' })
      .option('inputs', { alias: 'i', type: 'string', demandOption: true, describe: 'input tensors: a folder of .bin + manifest.json, or an .npz' })
      .option('output', { alias: 'o', type: 'string', describe: 'write the outputs here (a folder, or a path ending in .npz)' })
      .option('threads', { type: 'number', describe: 'intra-op threads (default: all cores)' })
      .option('fetch', { type: 'string', describe: 'comma-separated output names to compute (default: all)' })
      .option('patch-nums', { type: 'string', describe: 'patch side per scale for the experts-per-scale summary (default: from the report, else VAR 256px)' })
      .option('experts', { type: 'number', describe: 'experts per layer, to print the active fraction' })
      .option('scale-index', { type: 'number', describe: 'scale of every token (per-scale step graphs whose L is ambiguous)' }),
  handler: async (a) => {
    if (!fs.existsSync(a.model)) throw new MoefyError(`model not found: ${a.model}`);
    const feeds = await readTensorSet(a.inputs);
    const session = await createSession(a.model, { intraOpNumThreads: a.threads });
    try {
      const missing = session.inputNames.filter((n) => !(n in feeds));
      if (missing.length) throw new MoefyError(`the inputs lack ${missing.join(', ')} (model inputs: ${session.inputNames.join(', ')})`);
      const feedable = [...session.inputNames, ...session.overridableInitializerNames];
      const extra = Object.keys(feeds).filter((n) => !feedable.includes(n));
      const used: Record<string, Tensor> = {};
      for (const n of feedable) if (n in feeds) used[n] = feeds[n];
      if (extra.length) process.stderr.write(`moefy: ignoring inputs not in the model: ${extra.join(', ')}\n`);
      const fetches = a.fetch ? a.fetch.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
      const t0 = process.hrtime.bigint();
      const out = await session.run(used, fetches);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      process.stdout.write(`ran ${a.model} in ${ms.toFixed(1)} ms\n`);
      for (const [n, t] of Object.entries(out)) process.stdout.write(`  ${describeTensor(n, t)}\n`);
      const active = Object.entries(out).filter(([n, t]) => /active/i.test(n) && (t.type === 'int32' || t.type === 'int64'));
      if (active.length) {
        const rep = fromReport(a.model);
        const patchNums = parsePatchNums(a['patch-nums']) ?? rep.patchNums;
        const experts = a.experts ?? rep.experts;
        try {
          const s = summarizeActive(active.map(([, t]) => t), { patchNums, numExperts: experts, scaleIndex: a['scale-index'] });
          process.stdout.write(`experts per token (${active.length} MoE layer output(s)):\n`);
          for (const line of formatActiveSummary(s)) process.stdout.write(`  ${line}\n`);
        } catch (e) {
          if (!(e instanceof MoefyError)) throw e;
          process.stdout.write(`experts per scale: ${e.message}\n`);
        }
      }
      if (a.output) {
        await writeTensorSet(a.output, out);
        process.stdout.write(`wrote ${Object.keys(out).length} output(s) to ${a.output}\n`);
      }
    } finally {
      session.release();
    }
  },
};

export default command;
