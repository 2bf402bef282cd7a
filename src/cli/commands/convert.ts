import * as fs from 'node:fs';
import * as path from 'node:path';
import type { CommandModule } from 'yargs';
import { checkOptions, CONVERT_OPTIONS, ConvertOptions, OptionSpec } from '../../convert-options';
import { convert, defaultOutput, reportPath } from '../../pipeline';
import { formatThreshold, human, pct, scaleRange, table } from '../../format';
import { parseNumberList, parsePatchNums } from '../options';
import { conversionUi } from '../progress';
import { fileIdentity, ownExternalData } from '../../io/output-paths';
import { withPath } from '../../files/env-errors';
import { existing, nonEmpty, once } from '../validate';

/** The flags: the model and where the outputs go, and the conversion's options (src/convert-options.ts). */
type Args = Record<string, unknown> & { model: string; output?: string; 'external-data'?: boolean; json?: boolean; quiet?: boolean };

const OPTIONS = Object.entries(CONVERT_OPTIONS) as [keyof ConvertOptions, OptionSpec<unknown>][];

/** The library's options from the flags given. */
function optionsOf(a: Args): ConvertOptions {
  const o: Record<string, unknown> = {};
  for (const [key, spec] of OPTIONS) {
    const v = a[spec.flag];
    if (v === undefined) continue;
    o[key] = spec.list === 'numbers' ? parseNumberList(spec.flag, v as string) : spec.list === 'patch-nums' ? parsePatchNums(v as string) : spec.list === 'paths' ? String(v).split(',') : v;
  }
  return o as ConvertOptions;
}

/** Every option checked before the model is read, in the user's words. */
function validate(a: Args): ConvertOptions {
  once(a, ['model', 'output', ...OPTIONS.map(([, s]) => s.flag)]);
  nonEmpty(a, ['output', ...OPTIONS.filter(([, s]) => s.type === 'string' && !s.choices).map(([, s]) => s.flag)]);
  const o = optionsOf(a);
  checkOptions(o);
  existing('model', a.model, { file: true });
  if (o.calib) existing('--calib', o.calib);
  for (const p of o.kvPrefix ?? []) existing('--kv-prefix', p, { file: true });
  return o;
}

const builder = (y: import('yargs').Argv) => {
  y.positional('model', { type: 'string', demandOption: true, describe: 'dense VAR ONNX model' })
    .option('output', { alias: 'o', type: 'string', describe: 'output model (default <model>.moe.onnx); the report goes beside it as .json' })
    .option('external-data', { type: 'boolean', describe: 'write the weights to <output>.data (automatic above 2 GB)' });
  for (const [, s] of OPTIONS)
    y.option(s.flag, { type: s.type, describe: s.describe, demandOption: s.required, choices: s.choices, alias: s.alias, default: s.default !== undefined && !s.conditional ? s.default : undefined });
  return y
    .option('json', { type: 'boolean', describe: 'print the conversion report as JSON on stdout (stage lines go to stderr)' })
    .option('quiet', { alias: 'q', type: 'boolean', describe: 'print nothing but warnings and errors' });
};

async function handler(a: Args): Promise<void> {
    const options = validate(a);
    const out = path.resolve(a.output ?? defaultOutput(a.model));
    const data = `${out}.data`;
    // The earlier output's weights, when they are there: removed if the new model does not write them again.
    const stale = ownExternalData(out);
    const before = fileIdentity(data);
    const r = await convert(a.model, { ...options, output: a.output, externalData: a['external-data'] }, conversionUi(a));
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
