// Output paths are checked before any work, so that a conversion never runs for minutes to fail at the end, and
// never harms an input: an output that is (or resolves to, through symbolic or hard links) an input file, an output
// that exists and is not a regular file (a folder, a FIFO, a device such as /dev/full), a folder that cannot be
// written, a disk without room. The writes themselves stay atomic (temporary sibling, then rename: see ./temp).
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoefyError } from '../errors';
import { envCode, envError } from '../files/env-errors';
import { removeTemp, tempSibling } from '../files/temp';
import type { Model } from '../ir/model';
import { loadModel } from '../onnx/io';

/** A file the command reads, and what it is in the user's words ("the input model", "calibration data"). */
export interface InputFile {
  path: string;
  what: string;
}

/** A path the command will write: `flag` is how the user named it (e.g. "-o out.onnx"), `what` is the role. */
export interface OutputPath {
  path: string;
  flag: string;
  what: string;
  /** 'file' (default): a regular file replaced by rename; 'folder': a folder moefy fills or replaces. */
  kind?: 'file' | 'folder';
}

const KIND = (s: fs.Stats) =>
  s.isDirectory() ? 'a folder' : s.isFIFO() ? 'a FIFO' : s.isCharacterDevice() ? 'a character device' : s.isBlockDevice() ? 'a block device' : s.isSocket() ? 'a socket' : 'not a regular file';

/** A file, or a folder and every file in it (one level down is enough for a tensor set: manifest.json + .bin). */
export function inputFiles(p: string, what: string): InputFile[] {
  const out: InputFile[] = [{ path: p, what }];
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch {
    return out;
  }
  if (st.isDirectory()) {
    for (const f of fs.readdirSync(p)) out.push({ path: path.join(p, f), what });
  }
  return out;
}

function identity(p: string): string | null {
  try {
    const s = fs.statSync(p);
    return `${s.dev}:${s.ino}`;
  } catch {
    return null;
  }
}

function real(p: string): string {
  try {
    return fs.realpathSync(p);
  } catch {
    // Not there yet: the real folder and the name.
    try {
      return path.join(fs.realpathSync(path.dirname(path.resolve(p))), path.basename(p));
    } catch {
      return path.resolve(p);
    }
  }
}

/**
 * Refuses, with one line naming the output and the reason, any output that would harm an input or fail late.
 * `needBytes`: the free space the outputs need in their folders together (checked against statfs where available).
 */
export function checkOutputs(outputs: OutputPath[], inputs: InputFile[], opts: { needBytes?: number } = {}): void {
  const byId = new Map<string, InputFile>();
  const byReal = new Map<string, InputFile>();
  for (const i of inputs) {
    const id = identity(i.path);
    if (id && !byId.has(id)) byId.set(id, i);
    const r = real(i.path);
    if (!byReal.has(r)) byReal.set(r, i);
  }
  const seen = new Map<string, OutputPath>();
  const dirs = new Set<string>();
  for (const o of outputs) {
    const where = o.what === 'the output model' || o.what === 'the output' ? o.flag : `${o.flag}: ${o.what} ${o.path}`;
    const r = real(o.path);
    const hit = byReal.get(r) ?? (identity(o.path) ? byId.get(identity(o.path)!) : undefined);
    if (hit) throw new MoefyError(`${where}: would overwrite ${hit.what} (${hit.path}${r !== path.resolve(hit.path) ? `, resolved: ${r}` : ''}); choose another output`);
    const twin = seen.get(r);
    if (twin) throw new MoefyError(`${where}: is also ${twin.what} (${twin.path}); choose another output`);
    seen.set(r, o);
    let st: fs.Stats | null = null;
    try {
      st = fs.statSync(o.path);
    } catch (e) {
      if (envCode(e) !== 'ENOENT') throw envError(e, o.path, 'cannot check the output');
    }
    if (st) {
      if ((o.kind ?? 'file') === 'file' && !st.isFile()) throw new MoefyError(`${where}: exists and is ${KIND(st)}; moefy writes regular files only (choose another output)`);
      if (o.kind === 'folder' && !st.isDirectory()) throw new MoefyError(`${where}: exists and is ${KIND(st)}, not a folder`);
    }
    dirs.add(path.dirname(r));
  }
  for (const d of dirs) {
    const o = outputs.find((x) => path.dirname(real(x.path)) === d)!;
    // A folder output may ask for its parents to be made (mkdir -p); the nearest existing one must be writable.
    let e = d;
    if (o.kind === 'folder') while (!fs.existsSync(e) && path.dirname(e) !== e) e = path.dirname(e);
    checkFolder(e, o);
  }
  if (opts.needBytes && opts.needBytes > 0) {
    const d = [...dirs][0];
    const free = freeBytes(d);
    if (free !== null && free < opts.needBytes) {
      const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;
      throw new MoefyError(`${outputs[0].flag}: the folder ${d} has ${mib(free)} free; the output needs about ${mib(opts.needBytes)}`);
    }
  }
}

/** The folder exists, is a folder, and a file can be created in it (probe: the permission and read-only mounts). */
function checkFolder(d: string, o: OutputPath): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(d);
  } catch (e) {
    throw new MoefyError(`${o.flag}: the folder ${d} does not exist`);
  }
  if (!st.isDirectory()) throw new MoefyError(`${o.flag}: ${d} is not a folder`);
  const probe = tempSibling(path.join(d, 'probe'));
  try {
    fs.closeSync(fs.openSync(probe, 'wx'));
  } catch (e) {
    throw envError(e, `${o.flag}: the folder ${d}`, 'cannot write there');
  } finally {
    removeTemp(probe);
  }
}

function freeBytes(d: string): number | null {
  try {
    const s = fs.statfsSync(d);
    return Number(s.bavail) * Number(s.bsize);
  } catch {
    return null;
  }
}

/** Bytes of a file, 0 when it cannot be read. */
export function sizeOf(p: string): number {
  try {
    return fs.statSync(p).size;
  } catch {
    return 0;
  }
}

/** Every file the conversion reads: the model, its external data, the calibration data, the --kv-prefix models. */
export function conversionInputs(input: string, model: Model, opts: { calib?: string; kvPrefix?: string[] }): InputFile[] {
  const files: InputFile[] = [{ path: input, what: 'the input model' }];
  const data = new Set<string>();
  for (const v of model.graph.initializers) if (v.tensor?.source.kind === 'external') data.add(v.tensor.source.path);
  for (const d of data) files.push({ path: d, what: "the input model's external data" });
  if (opts.calib) files.push(...inputFiles(opts.calib, 'the calibration data (--calib)'));
  for (const p of opts.kvPrefix ?? []) files.push({ path: p, what: 'a --kv-prefix model' }, { path: `${p}.data`, what: "a --kv-prefix model's external data" });
  return files;
}

/** The model, its `.data` and its report `.json` checked against the inputs, with room for a model of the input's size. */
export function checkConvertOutputs(input: string, model: Model, opts: { calib?: string; kvPrefix?: string[] }, output: string, report: string): void {
  const inputs = conversionInputs(input, model, opts);
  const flag = `-o ${output}`;
  const need = inputs.filter((i) => i.what.startsWith('the input model')).reduce((a, i) => a + sizeOf(i.path), 0);
  checkOutputs(
    [
      { path: output, flag, what: 'the output model' },
      { path: path.join(path.dirname(output), `${path.basename(output)}.data`), flag, what: "the output's external data" },
      { path: report, flag, what: 'the report' },
    ],
    inputs,
    { needBytes: need },
  );
}


/** `${dev}:${ino}` of a file, or null when it does not exist: tells a file rewritten (renamed over) from one left alone. */
export function fileIdentity(p: string): string | null {
  return identity(p);
}

/**
 * `<output>.data` when it is the external data of the model now at `output` (moefy's own earlier output, which a
 * conversion without --external-data would otherwise leave beside the new model), else null.
 */
export function ownExternalData(output: string): string | null {
  const data = path.join(path.dirname(output), `${path.basename(output)}.data`);
  try {
    if (!fs.statSync(output).isFile() || !fs.statSync(data).isFile()) return null;
    const old = loadModel(output);
    const real = fs.realpathSync(data);
    return old.graph.initializers.some((v) => v.tensor?.source.kind === 'external' && fs.realpathSync(v.tensor.source.path) === real) ? data : null;
  } catch {
    return null; // not a model moefy can read: not ours to remove
  }
}
