// The moefy command line. Errors a user can fix print as one line (stack with --verbose) and exit non-zero.
import yargs from 'yargs';
import { MoefyError } from '../errors';

import convert, { convertCommand } from './commands/convert';
import { envErrorLine } from '../files/env-errors';
import { endProcess, installSignalCleanup } from '../files/temp';
import inspect from './commands/inspect';
import run from './commands/run';
import libPath from './commands/lib-path';
import evalCommand from './commands/eval';
import bench from './commands/bench';
import { checkCommandWord, checkFlagValues } from './argv';
import { stopAllBars } from './progress';

const verbose = process.argv.includes('--verbose');

function fail(e: unknown): void {
  const env = envErrorLine(e);
  const line =
    verbose && e instanceof Error ? (e.stack ?? e.message)
    : e instanceof MoefyError ? `moefy: ${e.message}`
    : env ? `moefy: ${env}`
    : `moefy: internal error: ${(e as Error)?.message ?? String(e)} (run with --verbose for details)`;
  endProcess(e instanceof MoefyError || env ? 1 : 2, line, stopAllBars);
}

process.on('unhandledRejection', fail);
process.on('uncaughtException', fail);

export async function main(argv: string[]): Promise<void> {
  installSignalCleanup(stopAllBars);
  const commands = [convertCommand, inspect, run, libPath, evalCommand, bench, convert];
  let y = yargs(argv)
    .scriptName('moefy')
    .usage('moefy convert <model.onnx> --experts N --from-scale S [options]\n  convert a dense VAR into a dynamic-MoE VAR (`convert` is the default: moefy <model.onnx> … works too)\nmoefy <command> …')
    .option('verbose', { type: 'boolean', describe: 'print stack traces and more detail', global: true })
    .strict()
    .recommendCommands()
    .help()
    // Before yargs' own checks (a missing --experts): a flag that lost its value is the cause to name.
    .middleware(((_args: unknown, inst: { getOptions(): Parameters<typeof checkFlagValues>[1] }) => checkFlagValues(argv, inst.getOptions())) as never, true)
    .fail((msg, err) => {
      if (err) throw err;
      if (argv.length === 0) throw new MoefyError('nothing to do: moefy convert <model.onnx> --experts N --from-scale S converts a model; moefy --help lists the commands');
      // yargs says some problems over several lines (an invalid choice: 'Invalid values:' then the argument): one line.
      throw new MoefyError(msg.trim().replace(/\s*\n\s*/g, ' '));
    });
  for (const c of commands) y = y.command(c as never);
  try {
    checkCommandWord(argv);
    await y.parseAsync();
  } catch (e) {
    fail(e);
  }
}
