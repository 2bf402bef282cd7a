// Every temporary path moefy makes comes from here, so that an error, a normal exit or SIGINT/SIGTERM removes them
// all: folders under the temp dir (model copies for capture and eval) and temporary siblings of outputs (written
// beside the target, then renamed over it, so a reader never sees a partial file).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { envError } from './env-errors';

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

/**
 * Work that must end before the process exits on a signal: exiting under worker threads that are inside ONNX
 * Runtime aborts the process. `stop` asks it to end and resolves when it has; returns an unregister function.
 */
export function onInterrupt(stop: () => Promise<void>): () => void {
  stoppers.add(stop);
  return () => stoppers.delete(stop);
}

/**
 * SIGINT → exit 130, SIGTERM → exit 143 (the shell's 128 + signal), after removing every temporary path; one line on
 * stderr. Also removes them on a normal exit. The CLI installs this; the library leaves signals to its caller.
 */
export function installSignalCleanup(): void {
  if (installed) return;
  installed = true;
  process.on('exit', removeAllTemps);
  for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(sig, () => {
      removeAllTemps();
      process.stderr.write(`${process.stderr.isTTY ? '\n' : ''}moefy: interrupted (${sig}); removed temporary files\n`);
      if (stoppers.size === 0) process.exit(code);
      // Running calibration workers stop at their next epoch (well under a second), then the process exits.
      const stopping = [...stoppers].map((f) => f());
      stoppers.clear();
      void Promise.allSettled(stopping).then(() => process.exit(code));
    });
  }
}

/** Writes a whole file atomically: a temporary sibling, then a rename; an error names `target`, not the temporary. */
export function writeFileAtomic(target: string, data: string | Uint8Array): void {
  const tmp = tempSibling(target);
  try {
    fs.writeFileSync(tmp, data);
    commitTemp(tmp, target);
  } catch (e) {
    removeTemp(tmp);
    throw envError(e, target);
  }
}
