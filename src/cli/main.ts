// The moefy command line. Errors a user can fix print as one line (stack with --verbose) and exit non-zero.
import yargs from 'yargs';
import { MoefyError } from '../errors';

import convert from './commands/convert';
import inspect from './commands/inspect';
import run from './commands/run';
import libPath from './commands/lib-path';
import evalCommand from './commands/eval';
import bench from './commands/bench';

const verbose = process.argv.includes('--verbose');

function fail(e: unknown): never {
  if (verbose && e instanceof Error) process.stderr.write(`${e.stack}\n`);
  else if (e instanceof MoefyError) process.stderr.write(`moefy: ${e.message}\n`);
  else process.stderr.write(`moefy: internal error: ${(e as Error)?.message ?? String(e)} (run with --verbose for details)\n`);
  process.exit(e instanceof MoefyError ? 1 : 2);
}

process.on('unhandledRejection', fail);

export async function main(argv: string[]): Promise<void> {
  const commands = [inspect, run, libPath, evalCommand, bench, convert];
  let y = yargs(argv)
    .scriptName('moefy')
    .usage('moefy <model.onnx> --experts N --from-scale S [options]   convert a dense VAR into a dynamic-MoE VAR\nmoefy <command> ...')
    .option('verbose', { type: 'boolean', describe: 'print stack traces and more detail', global: true })
    .strict()
    .recommendCommands()
    .help()
    .fail((msg, err) => {
      if (err) throw err;
      throw new MoefyError(msg);
    });
  for (const c of commands) y = y.command(c as never);
  try {
    await y.parseAsync();
  } catch (e) {
    fail(e);
  }
}
