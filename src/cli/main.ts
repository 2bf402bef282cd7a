// The moefy command line. Errors a user can fix print as one line (stack with --verbose) and exit non-zero.
import yargs from 'yargs';
import { MoefyError } from '../errors';

import convert, { convertCommand } from './commands/convert';
import { envErrorLine } from '../files/env-errors';
import { installSignalCleanup } from '../files/temp';
import inspect from './commands/inspect';
import run from './commands/run';
import libPath from './commands/lib-path';
import evalCommand from './commands/eval';
import bench from './commands/bench';

const verbose = process.argv.includes('--verbose');

function fail(e: unknown): never {
  const env = envErrorLine(e);
  if (verbose && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  else if (e instanceof MoefyError) process.stderr.write(`moefy: ${e.message}\n`);
  else if (env) process.stderr.write(`moefy: ${env}\n`);
  else process.stderr.write(`moefy: internal error: ${(e as Error)?.message ?? String(e)} (run with --verbose for details)\n`);
  process.exit(e instanceof MoefyError || env ? 1 : 2);
}

process.on('unhandledRejection', fail);

export async function main(argv: string[]): Promise<void> {
  installSignalCleanup();
  const commands = [convertCommand, inspect, run, libPath, evalCommand, bench, convert];
  let y = yargs(argv)
    .scriptName('moefy')
    .usage('moefy convert <model.onnx> --experts N --from-scale S [options]\n  convert a dense VAR into a dynamic-MoE VAR (`convert` is the default: moefy <model.onnx> … works too)\nmoefy <command> …')
    .option('verbose', { type: 'boolean', describe: 'print stack traces and more detail', global: true })
    .strict()
    .recommendCommands()
    .help()
    .fail((msg, err) => {
      if (err) throw err;
      if (argv.length === 0) throw new MoefyError('nothing to do: moefy convert <model.onnx> --experts N --from-scale S converts a model; moefy --help lists the commands');
      // yargs says some problems over several lines (an invalid choice: 'Invalid values:' then the argument): one line.
      throw new MoefyError(msg.trim().replace(/\s*\n\s*/g, ' '));
    });
  for (const c of commands) y = y.command(c as never);
  try {
    await y.parseAsync();
  } catch (e) {
    fail(e);
  }
}
