import * as fs from 'node:fs';
import type { CommandModule } from 'yargs';
import type { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../../errors';
import { readTensorSet, writeTensorSet, describeTensor } from '../../io';
import { createSession, formatActiveSummary, summarizeActive } from '../../runtime';
import { encodeCopy, loadModel, PROTOBUF_LIMIT } from '../../onnx/io';
import { DataType } from '../../onnx/schema';
import { isDynamicMoe, MOE_OUTPUT } from '../../op';
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
  summary: boolean;
}

interface MoeView {
  /** the model with every DynamicMoE `active` output made a graph output (undefined: use the file as is) */
  bytes?: Uint8Array;
  /** names of the `active` outputs added for the summary (not printed or written as outputs) */
  added: string[];
  /** all `active` outputs, graph outputs already or added */
  active: string[];
  patchNums?: number[];
  experts?: number;
}

/**
 * Finds the DynamicMoE nodes and, when their `active` outputs are not graph outputs, re-encodes the model in memory
 * with those outputs added, so that one run can report the experts used per scale. The file is not changed.
 */
function moeView(file: string): MoeView {
  const view: MoeView = { added: [], active: [] };
  const st = fs.statSync(file);
  if (st.size > PROTOBUF_LIMIT / 2) return view;
  const m = loadModel(file);
  const nodes = m.graph.nodes.filter(isDynamicMoe);
  if (nodes.length === 0) return view;
  view.patchNums = nodes[0].attrInts('patch_nums');
  view.experts = nodes[0].attrInt('num_experts');
  const outputs = [...m.graph.outputs];
  for (const n of nodes) {
    const a = n.outputs[MOE_OUTPUT.active];
    if (!a) continue;
    view.active.push(a.name);
    if (outputs.includes(a)) continue;
    a.setTensorType(DataType.INT32);
    outputs.push(a);
    view.added.push(a.name);
  }
  if (view.added.length) view.bytes = encodeCopy(m, { outputs });
  return view;
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
      .option('scale-index', { type: 'number', describe: 'scale of every token (per-scale step graphs whose L is ambiguous)' })
      .option('summary', { type: 'boolean', default: true, describe: 'report experts used per scale (--no-summary: run the file exactly as is)' }),
  handler: async (a) => {
    if (!fs.existsSync(a.model)) throw new MoefyError(`model not found: ${a.model}`);
    const feeds = await readTensorSet(a.inputs);
    let view: MoeView = { added: [], active: [] };
    if (a.summary) {
      try {
        view = moeView(a.model);
      } catch (e) {
        if (!(e instanceof MoefyError)) throw e;
      }
    }
    const session = await createSession(view.bytes ?? a.model, { intraOpNumThreads: a.threads });
    try {
      const missing = session.inputNames.filter((n) => !(n in feeds));
      if (missing.length) throw new MoefyError(`the inputs lack ${missing.join(', ')} (model inputs: ${session.inputNames.join(', ')})`);
      const feedable = [...session.inputNames, ...session.overridableInitializerNames];
      const extra = Object.keys(feeds).filter((n) => !feedable.includes(n));
      const used: Record<string, Tensor> = {};
      for (const n of feedable) if (n in feeds) used[n] = feeds[n];
      if (extra.length) process.stderr.write(`moefy: ignoring inputs not in the model: ${extra.join(', ')}\n`);
      const asked = a.fetch ? a.fetch.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
      const fetches = asked ? [...asked, ...view.added.filter((n) => !asked.includes(n))] : undefined;
      const t0 = process.hrtime.bigint();
      const all = await session.run(used, fetches);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const out: Record<string, Tensor> = {};
      for (const [n, t] of Object.entries(all)) if (!view.added.includes(n)) out[n] = t;
      process.stdout.write(`ran ${a.model} in ${ms.toFixed(1)} ms\n`);
      for (const [n, t] of Object.entries(out)) process.stdout.write(`  ${describeTensor(n, t)}\n`);
      const activeNames = view.active.length ? view.active : Object.keys(all).filter((n) => /active/i.test(n));
      const active = Object.entries(all).filter(([n, t]) => activeNames.includes(n) && (t.type === 'int32' || t.type === 'int64'));
      if (active.length) {
        const rep = fromReport(a.model);
        const patchNums = parsePatchNums(a['patch-nums']) ?? view.patchNums ?? rep.patchNums;
        const experts = a.experts ?? view.experts ?? rep.experts;
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
