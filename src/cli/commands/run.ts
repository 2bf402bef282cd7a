import * as fs from 'node:fs';
import type { CommandModule } from 'yargs';
import type { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../../errors';
import * as path from 'node:path';
import { readTensorSet, writeTensorSet, describeTensor, formatOfPath } from '../../io';
import { checkOutputs, inputFiles } from '../../io/output-paths';
import { checkRunInputs } from '../run-inputs';
import { checkEmbeddingInputs, checkSamples } from '../../calib/check-inputs';
import { existing, integer, nonEmpty, once, threads } from '../validate';
import { createSession, formatActiveSummary, summarizeActive } from '../../runtime';
import { encodeCopy, loadModel, PROTOBUF_LIMIT } from '../../onnx/io';
import { DataType } from '../../onnx/schema';
import { isDynamicMoe, MOE_OUTPUT, VAR_PATCH_NUMS } from '../../op';
import type { Model } from '../../ir/model';
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
  json?: boolean;
  quiet?: boolean;
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
function moeView(m: Model): MoeView {
  const view: MoeView = { added: [], active: [] };
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
      .option('summary', { type: 'boolean', default: true, describe: 'report experts used per scale (--no-summary: run the file exactly as is)' })
      .option('json', { type: 'boolean', describe: 'print the outputs\' names, types and shapes, the time and the experts per scale as JSON' })
      .option('quiet', { alias: 'q', type: 'boolean', describe: 'print nothing but warnings and errors' }),
  handler: async (a) => {
    once(a, ['model', 'inputs', 'output', 'threads', 'fetch', 'patch-nums', 'experts', 'scale-index']);
    nonEmpty(a, ['inputs', 'output', 'fetch', 'patch-nums']);
    threads(a, 1);
    integer(a, 'experts', 1);
    integer(a, 'scale-index', 0);
    const givenPatchNums = parsePatchNums(a['patch-nums']);
    existing('model', a.model, { file: true });
    existing('--inputs', a.inputs);
    const modelFiles = inputFiles(a.model, 'the model');
    if (a.output) {
      const kind = formatOfPath(a.output) === 'npz' ? 'file' : 'folder';
      checkOutputs([{ path: a.output, flag: `-o ${a.output}`, what: 'the output', kind }], [...modelFiles, { path: `${a.model}.data`, what: "the model's external data" }, ...inputFiles(a.inputs, 'the inputs (--inputs)')]);
    }
    const feeds = await readTensorSet(a.inputs);
    checkSamples(feeds, `--inputs ${a.inputs}`);
    // Read here (not only by ONNX Runtime) so that a bad file or short external data is said in moefy's words; a
    // model over 1 GB without external data is left to ONNX Runtime alone (it would be held twice).
    const model = fs.statSync(a.model).size <= PROTOBUF_LIMIT / 2 ? loadModel(a.model) : null;
    const view: MoeView = model && a.summary ? moeView(model) : { added: [], active: [] };
    const patchNums = givenPatchNums ?? view.patchNums;
    const S = (patchNums ?? VAR_PATCH_NUMS).length;
    if (a['scale-index'] !== undefined && a['scale-index'] >= S) throw new MoefyError(`--scale-index ${a['scale-index']} is out of range: the patch layout has ${S} scales, numbered 0…${S - 1} here`);
    if (a.experts !== undefined && view.experts !== undefined && a.experts !== view.experts) throw new MoefyError(`--experts ${a.experts}: the model's DynamicMoE nodes have ${view.experts} experts (leave --experts out)`);
    // ONNX Runtime's own log lines off (fatal only): its errors come back in the one line moefy prints.
    const session = await createSession(view.bytes ?? a.model, { intraOpNumThreads: a.threads, logSeverity: 4 });
    try {
      const missing = session.inputNames.filter((n) => !(n in feeds));
      if (missing.length) throw new MoefyError(`--inputs ${a.inputs}: no tensor named ${missing.map((n) => `'${n}'`).join(', ')} (model inputs: ${session.inputNames.join(', ')})`);
      checkRunInputs(session.inputMetadata, feeds, a.inputs);
      if (model) checkEmbeddingInputs(model, feeds, `--inputs ${a.inputs}`);
      const say = (line: string) => {
        if (!a.quiet && !a.json) process.stdout.write(line + '\n');
      };
      const report: Record<string, unknown> = { model: path.resolve(a.model) };
      const feedable = [...session.inputNames, ...session.overridableInitializerNames];
      const extra = Object.keys(feeds).filter((n) => !feedable.includes(n));
      const used: Record<string, Tensor> = {};
      for (const n of feedable) if (n in feeds) used[n] = feeds[n];
      if (extra.length) process.stderr.write(`moefy: warning: ignoring inputs not in the model: ${extra.join(', ')}\n`);
      const asked = a.fetch ? a.fetch.split(',').map((s) => s.trim()).filter(Boolean) : undefined;
      const fetches = asked ? [...asked, ...view.added.filter((n) => !asked.includes(n))] : undefined;
      const t0 = process.hrtime.bigint();
      const all = await session.run(used, fetches);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const out: Record<string, Tensor> = {};
      for (const [n, t] of Object.entries(all)) if (!view.added.includes(n)) out[n] = t;
      say(`ran ${a.model} in ${ms.toFixed(1)} ms`);
      for (const [n, t] of Object.entries(out)) say(`  ${describeTensor(n, t)}`);
      report.ms = ms;
      report.outputs = Object.entries(out).map(([name, t]) => ({ name, type: t.type, dims: [...t.dims] }));
      const activeNames = view.active.length ? view.active : Object.keys(all).filter((n) => /active/i.test(n));
      const active = Object.entries(all).filter(([n, t]) => activeNames.includes(n) && (t.type === 'int32' || t.type === 'int64'));
      if (active.length) {
        const experts = a.experts ?? view.experts;
        try {
          const s = summarizeActive(active.map(([, t]) => t), { patchNums, numExperts: experts, scaleIndex: a['scale-index'] });
          say(`experts per token (${active.length} MoE layer output(s)):`);
          for (const line of formatActiveSummary(s)) say(`  ${line}`);
          report.experts = s;
        } catch (e) {
          if (!(e instanceof MoefyError)) throw e;
          say(`experts per scale: ${e.message}`);
          report.experts = { error: e.message };
        }
      }
      if (a.output) {
        await writeTensorSet(a.output, out);
        say(`wrote ${Object.keys(out).length} output(s) to ${path.resolve(a.output)}`);
        report.wrote = [path.resolve(a.output)];
      }
      if (a.json) process.stdout.write(JSON.stringify(report, null, 2) + '\n');
    } finally {
      session.release();
    }
  },
};

export default command;
