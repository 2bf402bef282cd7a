// Every temporary path moefy makes comes from here, so that an error, a normal exit or SIGINT/SIGTERM removes them
// all: folders under the temp dir (model copies for capture and eval) and temporary siblings of outputs (written
// beside the target, then renamed over it, so a reader never sees a partial file).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { envError, envErrorLine } from './env-errors';

const live = new Set<string>();

/** A fresh folder `moefy-<tag>-XXXXXX` in the temp dir, removed by `removeTemp`, at exit or on a signal. */
export function tempDir(tag: string): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), `moefy-${tag}-`));
  live.add(d);
  return d;
}

/**
 * A temporary name beside `target` (same folder, so the final rename is atomic). Hidden and pid-tagged so that a
 * leftover after a crash is recognisable as moefy's.
 */
export function tempSibling(target: string): string {
  const p = path.join(path.dirname(path.resolve(target)), `.${path.basename(target)}.moefy-${process.pid}-${randomBytes(3).toString('hex')}.tmp`);
  live.add(p);
  return p;
}

/** Renames a temporary sibling over its target; from then on it is an output, not a temporary. */
export function commitTemp(tmp: string, target: string): void {
  fs.renameSync(tmp, target);
  live.delete(tmp);
}

/** Removes one temporary path (file or folder). */
export function removeTemp(p: string): void {
  fs.rmSync(p, { recursive: true, force: true });
  live.delete(p);
}

/** Removes every temporary path still registered (synchronous: safe in 'exit' handlers). */
export function removeAllTemps(): void {
  for (const p of [...live]) {
    try {
      fs.rmSync(p, { recursive: true, force: true });
    } catch {
      /* best effort: the process is ending */
    }
    live.delete(p);
  }
}

/** Temporary paths alive now (for tests). */
export function liveTemps(): string[] {
  return [...live];
}

let installed = false;
const stoppers = new Set<() => Promise<void>>();
/** Set once the process is ending on a signal or a closed output: later signals and errors change nothing. */
let ending = false;

/**
 * Work that must end before the process exits on a signal: exiting under worker threads that are inside ONNX
 * Runtime aborts the process. `stop` asks it to end and resolves when it has; returns an unregister function.
 */
export function onInterrupt(stop: () => Promise<void>): () => void {
  stoppers.add(stop);
  return () => stoppers.delete(stop);
}

/**
 * Ends the process with `code` after removing every temporary path, printing `line` (if any) and stopping the
 * registered work (onInterrupt). Only the first call acts: npx forwards a terminal's Ctrl-C to its child, which then
 * gets SIGINT twice, and a second exit while the workers stop would abort the process under them.
 */
export function endProcess(code: number, line?: string, restore?: () => void): void {
  if (ending) return;
  ending = true;
  try {
    restore?.();
  } catch {
    /* the terminal is best effort */
  }
  removeAllTemps();
  if (line) {
    try {
      process.stderr.write(`${line}\n`);
    } catch {
      /* stderr closed: nothing to say it on */
    }
  }
  if (stoppers.size === 0) process.exit(code);
  // Running calibration workers stop at their next epoch (well under a second), then the process exits.
  const stopping = [...stoppers].map((f) => f());
  stoppers.clear();
  void Promise.allSettled(stopping).then(() => process.exit(code));
}

/** 128 + SIGPIPE: the status a shell reports for a Unix tool whose output pipe was closed (`… | head -1`). */
export const CLOSED_OUTPUT_STATUS = 141;

/**
 * SIGINT → exit 130, SIGTERM → exit 143 (the shell's 128 + signal), after removing every temporary path; one line on
 * stderr. A closed stdout or stderr (EPIPE: the reader went away) ends the process quietly with 141, as SIGPIPE ends
 * a Unix tool. Also removes the temporary paths on a normal exit. `restore` puts the terminal back (progress bars
 * hide the cursor). The CLI installs this; the library leaves signals to its caller.
 */
export function installSignalCleanup(restore?: () => void): void {
  if (installed) return;
  installed = true;
  process.on('exit', removeAllTemps);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    // On a terminal the line starts below the ^C the terminal echoed.
    process.on(sig, () => endProcess(code, `${process.stderr.isTTY ? '\n' : ''}moefy: interrupted (${sig}); removed temporary files`, restore));
  }
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE' || ending) endProcess(CLOSED_OUTPUT_STATUS, undefined, restore);
      else endProcess(1, `moefy: cannot write to ${stream === process.stdout ? 'standard output' : 'standard error'}: ${envErrorLine(e) ?? e.message}`, restore);
    });
  }
}

/** Writes a whole file atomically: a temporary sibling, then a rename; an error names `target`, not the temporary. */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  writeFilesAtomic(path.dirname(target), [{ name: path.basename(target), data }]);
}

/**
 * Writes a set of files into `dir`, all or none: every file goes to a temporary name first and all are renamed into
 * place once each is written, so that a failure (a full disk) leaves none of them. The part of `dir` that does not
 * exist yet is made as one temporary folder and renamed into place at the end (a failure leaves no empty folder).
 * An error names the file being written. Returns the files' paths.
 */
export function writeFilesAtomic(dir: string, files: { name: string; data: string | Uint8Array }[]): string[] {
  // The first missing folder on the way to dir (null: dir exists), and dir's path inside its temporary stand-in.
  let top: string | null = null;
  for (let d = path.resolve(dir); !fs.existsSync(d); d = path.dirname(d)) top = d;
  const stand = top ? tempSibling(top) : null;
  const inside = (p: string) => (top && stand ? path.join(stand, path.relative(top, p)) : p);
  const placed: [string, string][] = [];
  let writing = dir;
  try {
    if (stand) fs.mkdirSync(inside(path.resolve(dir)), { recursive: true });
    for (const f of files) {
      const target = path.join(dir, f.name);
      writing = target;
      const tmp = stand ? inside(path.resolve(target)) : tempSibling(target);
      placed.push([tmp, target]);
      fs.writeFileSync(tmp, f.data);
    }
    if (stand) commitTemp(stand, top!);
    else for (const [tmp, target] of placed) commitTemp(tmp, target);
  } catch (e) {
    for (const [tmp] of placed) removeTemp(tmp);
    if (stand) removeTemp(stand);
    throw envError(e, writing);
  }
  return files.map((f) => path.join(dir, f.name));
}
