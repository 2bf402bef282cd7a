import type { CommandModule } from 'yargs';
import { loadModel } from '../../onnx/io';
import { inspectModel, InspectReport } from '../../inspect';
import { bytes, formatThreshold, human, pct, table } from '../../format';
import { METADATA } from '../../op';
import { parsePatchNums } from '../options';

interface Args {
  model: string;
  json?: boolean;
  'patch-nums'?: string;
}

export function printInspect(r: InspectReport): string {
  const out: string[] = [];
  out.push(`${r.file}`);
  out.push(`  IR ${r.irVersion}, opsets ${Object.entries(r.opsets).map(([d, v]) => `${d || 'ai.onnx'} ${v}`).join(', ')}, producer ${r.producer || '?'}`);
  out.push(`  ${human(r.parameters)} parameters, ${bytes(r.sizeBytes)}${r.externalData ? ' (external data)' : ''}, ${r.graph.nodes} nodes`);
  const kind = r.graph.kind === 'full' ? `full sequence (teacher forcing), L = ${r.graph.L}` : `KV-cache step${r.graph.stepScale ? ` for scale ${r.graph.stepScale}` : ' (any scale)'}${r.graph.rowsPerSample === 2 ? ', CFG doubles the batch' : ''}`;
  out.push(`  graph: ${kind}; patch layout ${r.graph.patchNums.join(',')} (${r.graph.layoutSource}); D ${r.D}, H ${r.H}${r.vocab ? `, vocabulary ${r.vocab}` : ''}`);
  out.push('');
  out.push(table(['block', 'D', 'H', 'activation', 'FFN params', 'experts', 'expert size', 'router params'], r.blocks.map((b) => [b.index, b.D, b.H, b.moe ? `${b.activation} (MoE)` : b.activation, human(b.ffnParams), b.moe?.experts ?? '-', b.moe?.expertSize ?? '-', b.moe ? human(b.moe.routerParams) : '-'])));
  out.push('');
  const thr = r.moe?.thresholds;
  const headers = ['scale', 'patch', 'tokens', 'FLOPs', 'FFN', 'attention', 'proj', 'head', 'FFN share'];
  if (thr) headers.push('threshold');
  out.push(table(headers, r.scales.map((s) => {
    const row: (string | number)[] = [s.scale, `${s.patch}x${s.patch}`, s.tokens, human(s.total), human(s.flops.ffn), human(s.flops.attention), human(s.flops.projections), human(s.flops.head), pct(s.ffnShare)];
    if (thr) row.push(thr[s.scale - 1] !== undefined ? formatThreshold(thr[s.scale - 1]) : '-');
    return row;
  })));
  out.push(`  total ${human(r.flops.total)}FLOPs per sample (dense), FFN ${pct(r.flops.totals.ffn / r.flops.total)}`);
  if (r.moe) {
    out.push('');
    out.push(`  DynamicMoE: ${r.moe.experts} experts of ${r.moe.expertSize}, routing ${r.moe.routing}${r.moe.skipBias ? ' with skip_bias' : ''}, routers ${human(r.moe.routerParams)} parameters (width ${r.moe.routerWidth ?? '?'}), MoE from scale ${r.moe.fromScale ?? '-'}`);
    const md = r.moe.metadata;
    if (md[METADATA.expectedActiveFraction]) out.push(`  expected active fraction per scale (calibration): ${md[METADATA.expectedActiveFraction]}`);
    const ex = r.moe.expected;
    if (ex) {
      const d = ex.reduce((a, x) => a + x.ffnFlopsDense, 0), m = ex.reduce((a, x) => a + x.ffnFlopsMoe, 0);
      // The scale table's totals already hold the routers (as 'other') and the dense FFN.
      const router = ex.reduce((a, x) => a + x.routerFlops, 0);
      const denseTotal = r.flops.total - router, moeTotal = r.flops.total - d - router + m;
      out.push(`  expected FFN FLOPs per sample: dense ${human(d)}, MoE ${human(m)} (${pct(m / d)}, routers included); all FLOPs ${human(denseTotal)} → ${human(moeTotal)} (${pct(moeTotal / denseTotal)})`);
    }
  }
  return out.join('\n');
}

const command: CommandModule<object, Args> = {
  command: 'inspect <model>',
  describe: 'Show what a VAR model holds: blocks, FFNs, scales, FLOPs per scale, and experts/routers/thresholds of a converted model',
  builder: (y) =>
    y
      .positional('model', { type: 'string', demandOption: true, describe: 'ONNX model' })
      .option('json', { type: 'boolean', describe: 'print the report as JSON (see README)' })
      .option('patch-nums', { type: 'string', describe: 'patch side per scale, comma-separated (default VAR 1,2,3,4,5,6,8,10,13,16)' }),
  handler: (a) => {
    const model = loadModel(a.model);
    const r = inspectModel(model, a.model, { patchNums: parsePatchNums(a['patch-nums']) });
    process.stdout.write((a.json ? JSON.stringify(r, null, 2) : printInspect(r)) + '\n');
  },
};
export default command;
