/**
 * Tensor-set I/O shared by the whole project.
 *
 * Two formats:
 *  - a folder of raw little-endian `.bin` files plus `manifest.json` = { name: { file, dtype, shape } }
 *  - a NumPy `.npz` archive (zip of `.npy` files, stored or deflated)
 * A single `.npy` file is also readable (one tensor named after the file).
 */
import * as fs from 'node:fs';
import { promises as fsp } from 'node:fs';
import * as path from 'node:path';
import { Tensor } from 'onnxruntime-common';
import { unzipSync, zipSync, Zippable } from 'fflate';
import { MoefyError } from '../errors';
import { IoDType, isIoDType, parseDType, tensorBytes, tensorFromBytes } from './dtypes';
import { decodeNpy, encodeNpy } from './npy';
import { centralCrcs, checkCrcs } from './zip-crc';
import { tempSibling, removeTemp } from '../files/temp';
import { envError } from '../files/env-errors';

export { IoDType, DTYPES, parseDType, numElements, tensorFromBytes, tensorBytes } from './dtypes';
export { decodeNpy, encodeNpy } from './npy';

export type TensorSet = Record<string, Tensor>;

/** Samples a…b−1 along the first (batch) dimension, as views; scalars pass through. */
export function sliceSamples(t: Tensor, a: number, b: number): Tensor {
  if (t.dims.length === 0) return t;
  const per = t.dims.slice(1).reduce((x, y) => x * y, 1);
  const data = (t.data as Float32Array).subarray(a * per, b * per);
  return new Tensor(t.type, data as never, [b - a, ...t.dims.slice(1)]);
}

/** Every tensor of a set cut to samples a…b−1 (e.g. a calibration / held-out split). */
export function sliceSampleSet(set: TensorSet, a: number, b: number): TensorSet {
  return Object.fromEntries(Object.entries(set).map(([n, t]) => [n, sliceSamples(t, a, b)]));
}

export interface ManifestEntry {
  file: string;
  dtype: string;
  shape: number[];
}
export type Manifest = Record<string, ManifestEntry>;

export type TensorSetFormat = 'folder' | 'npz';

/** 'npz' for paths ending in .npz (any case), otherwise 'folder'. */
export function formatOfPath(p: string): TensorSetFormat {
  return p.toLowerCase().endsWith('.npz') ? 'npz' : 'folder';
}

async function statOrNull(p: string) {
  try {
    return await fsp.stat(p);
  } catch {
    return null;
  }
}

/** Reads a tensor set from a folder (manifest.json + .bin files), a .npz archive or a single .npy file. */
export async function readTensorSet(p: string): Promise<TensorSet> {
  const st = await statOrNull(p);
  if (!st) throw new MoefyError(`tensor set not found: ${p}`);
  if (st.isDirectory()) return readFolder(p);
  const buf = await readFileOrThrow(p);
  if (buf.length >= 4 && buf[0] === 0x50 && buf[1] === 0x4b) return decodeNpz(buf, p);
  if (buf.length >= 6 && buf[0] === 0x93 && buf[1] === 0x4e) {
    return { [path.basename(p).replace(/\.npy$/i, '')]: decodeNpy(buf, p) };
  }
  throw new MoefyError(`${p}: not a tensor set (expected a folder with manifest.json, a .npz or a .npy file)`);
}

async function readFileOrThrow(p: string): Promise<Uint8Array> {
  try {
    return await fsp.readFile(p);
  } catch (e) {
    throw new MoefyError(`cannot read ${p}: ${(e as Error).message}`);
  }
}

async function readFolder(dir: string): Promise<TensorSet> {
  const mpath = path.join(dir, 'manifest.json');
  const mtext = await readFileOrThrow(mpath);
  let manifest: unknown;
  try {
    manifest = JSON.parse(Buffer.from(mtext).toString('utf8'));
  } catch (e) {
    throw new MoefyError(`${mpath}: invalid JSON (${(e as Error).message})`);
  }
  if (!manifest || typeof manifest !== 'object' || Array.isArray(manifest)) {
    throw new MoefyError(`${mpath}: expected an object {name: {file, dtype, shape}}`);
  }
  const out: TensorSet = {};
  for (const [name, entry] of Object.entries(manifest as Record<string, unknown>)) {
    const where = `${mpath} [${name}]`;
    const e = entry as Partial<ManifestEntry> | null;
    if (!e || typeof e !== 'object' || typeof e.file !== 'string' || typeof e.dtype !== 'string' || !Array.isArray(e.shape)) {
      throw new MoefyError(`${where}: entry needs "file" (string), "dtype" (string) and "shape" (array)`);
    }
    const file = path.resolve(dir, e.file);
    const rel = path.relative(path.resolve(dir), file);
    if (rel.startsWith('..') || path.isAbsolute(rel)) throw new MoefyError(`${where}: file "${e.file}" lies outside the folder`);
    const dtype = parseDType(e.dtype, where);
    const bytes = await readFileOrThrow(file);
    out[name] = tensorFromBytes(dtype, e.shape as number[], bytes, `${where} ${e.file}`);
  }
  return out;
}

/** Decodes a .npz archive held in memory. */
export function decodeNpz(buf: Uint8Array, where: string): TensorSet {
  let files: Record<string, Uint8Array>;
  try {
    files = unzipSync(buf);
  } catch (e) {
    throw new MoefyError(`${where}: cannot unzip .npz (${(e as Error).message})`);
  }
  checkCrcs(files, centralCrcs(buf, where), where);
  const out: TensorSet = {};
  for (const [fname, data] of Object.entries(files)) {
    if (fname.endsWith('/')) continue;
    const name = fname.replace(/\.npy$/i, '');
    out[name] = decodeNpy(data, `${where} [${fname}]`);
  }
  return out;
}

/** Encodes tensors as a .npz archive in memory (entries stored uncompressed, like numpy.savez). */
export function encodeNpz(tensors: TensorSet, where = 'npz'): Uint8Array {
  const files: Zippable = {};
  for (const [name, t] of Object.entries(tensors)) {
    files[`${name}.npy`] = [encodeNpy(t, `${where} [${name}]`), { level: 0 }];
  }
  try {
    return zipSync(files, { level: 0 });
  } catch (e) {
    throw new MoefyError(`${where}: cannot write .npz (${(e as Error).message})`);
  }
}

/** A registered temporary sibling (removed on error, exit or signal; see ./temp). */
function tmpName(p: string): string {
  return tempSibling(p);
}

function safeFileName(name: string, used: Set<string>): string {
  let base = name.replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '_');
  if (base.length === 0) base = 'tensor';
  if (base.length > 120) base = base.slice(0, 120);
  let f = `${base}.bin`;
  for (let i = 1; used.has(f.toLowerCase()); i++) f = `${base}_${i}.bin`;
  used.add(f.toLowerCase());
  return f;
}

/**
 * An existing folder is replaced only when it is empty or is itself a tensor set (manifest.json plus only the files
 * it lists), so that a mistyped --output never deletes unrelated files.
 */
async function assertReplaceable(dir: string): Promise<void> {
  const entries = await fsp.readdir(dir);
  if (entries.length === 0) return;
  const refuse = (why: string) => new MoefyError(`${dir} exists and ${why}; refusing to replace it (choose a new folder or remove it)`);
  if (!entries.includes('manifest.json')) throw refuse('is not a tensor set (no manifest.json)');
  let manifest: Record<string, { file?: unknown }>;
  try {
    manifest = JSON.parse(await fsp.readFile(path.join(dir, 'manifest.json'), 'utf8'));
  } catch {
    throw refuse('has an unreadable manifest.json');
  }
  const listed = new Set(Object.values(manifest).map((e) => (e && typeof e.file === 'string' ? e.file : '')));
  const others = entries.filter((f) => f !== 'manifest.json' && !listed.has(f));
  if (others.length) throw refuse(`holds files that are not part of the tensor set (${others.slice(0, 3).join(', ')})`);
}

export interface WriteTensorSetOptions {
  /** Override the format chosen from the path (.npz → npz, otherwise a folder). */
  format?: TensorSetFormat;
}

/**
 * Writes a tensor set to a folder (manifest.json + .bin) or a .npz file. Writes under a temporary name in the same
 * directory, then renames, so a reader never sees a partial result. An existing folder at `p` is replaced.
 */
export async function writeTensorSet(p: string, tensors: TensorSet, options: WriteTensorSetOptions = {}): Promise<void> {
  const format = options.format ?? formatOfPath(p);
  for (const [name, t] of Object.entries(tensors)) {
    if (!(t instanceof Tensor) && (typeof t !== 'object' || t === null || !('dims' in t))) {
      throw new MoefyError(`writeTensorSet: "${name}" is not a Tensor`);
    }
    if (!isIoDType(t.type)) throw new MoefyError(`writeTensorSet: "${name}" has unsupported type ${t.type}`);
  }
  const parent = path.dirname(path.resolve(p));
  await fsp.mkdir(parent, { recursive: true }).catch((e) => {
    throw envError(e, parent, 'cannot create the folder');
  });
  const existing = await statOrNull(p);
  const tmp = tmpName(p);
  if (format === 'npz') {
    if (existing?.isDirectory()) throw new MoefyError(`${p} is a directory; cannot write a .npz there`);
    const bytes = encodeNpz(tensors, p);
    try {
      await fsp.writeFile(tmp, bytes);
      await fsp.rename(tmp, p);
      removeTemp(tmp);
    } catch (e) {
      removeTemp(tmp);
      throw envError(e, p);
    }
    return;
  }
  await checkFolderTarget(p, existing);
  const manifest: Manifest = {};
  const used = new Set<string>(['manifest.json']);
  try {
    await fsp.mkdir(tmp);
    for (const [name, t] of Object.entries(tensors)) {
      const file = safeFileName(name, used);
      await fsp.writeFile(path.join(tmp, file), tensorBytes(t, `writeTensorSet [${name}]`));
      manifest[name] = { file, dtype: t.type, shape: [...t.dims] };
    }
    await fsp.writeFile(path.join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 1) + '\n');
    await placeFolder(tmp, p, !!existing);
  } catch (e) {
    removeTemp(tmp);
    if (e instanceof MoefyError) throw e;
    throw envError(e, p);
  }
}

/** A tensor-set folder may go to p: nothing there, or a folder assertReplaceable accepts. */
async function checkFolderTarget(p: string, existing: Awaited<ReturnType<typeof statOrNull>>): Promise<void> {
  if (existing && !existing.isDirectory()) throw new MoefyError(`${p} exists and is not a folder`);
  if (existing) await assertReplaceable(p);
}

/** Puts a finished temporary folder at p, replacing what was there (already checked replaceable). */
async function placeFolder(tmp: string, p: string, existing: boolean): Promise<void> {
  if (existing) {
    const old = tmpName(p + '.old');
    await fsp.rename(p, old);
    try {
      await fsp.rename(tmp, p);
    } catch (e) {
      await fsp.rename(old, p).catch(() => undefined);
      throw e;
    }
    removeTemp(old);
  } else {
    await fsp.rename(tmp, p);
  }
  removeTemp(tmp);
}

interface WriterEntry {
  file: string;
  type: IoDType;
  /** Shape after axis 0 ([] for a scalar). */
  inner: number[];
  scalar: boolean;
  rows: number;
  blocks: number;
}

/**
 * A folder tensor set written in pieces, rows appended along axis 0 as they are computed (samples in batches), so
 * that the whole set never sits in memory. A tensor appended with `blocks` k holds k equal blocks of rows (a
 * CFG-doubled KV cache: the conditional rows, then the unconditional ones); block j of each piece goes after block
 * j of the pieces before. Scalars are written once. Everything goes into a temporary sibling of the target:
 * `commit` puts it in place as writeTensorSet does, `discard` (or an error, the exit or a signal) removes it.
 */
export class TensorSetWriter {
  private readonly tmp: string;
  private readonly entries = new Map<string, WriterEntry>();
  private readonly used = new Set<string>(['manifest.json']);

  constructor(private readonly target: string) {
    try {
      fs.mkdirSync(path.dirname(path.resolve(target)), { recursive: true });
    } catch (e) {
      throw envError(e, path.dirname(path.resolve(target)), 'cannot create the folder');
    }
    this.tmp = tmpName(target);
    fs.mkdirSync(this.tmp);
  }

  private part(e: WriterEntry, j: number): string {
    return path.join(this.tmp, e.blocks > 1 ? `${e.file}.block${j}` : e.file);
  }

  append(name: string, t: Tensor, blocks = 1): void {
    if (!isIoDType(t.type)) throw new MoefyError(`TensorSetWriter: "${name}" has unsupported type ${t.type}`);
    const scalar = t.dims.length === 0;
    let e = this.entries.get(name);
    if (!e) {
      e = { file: safeFileName(name, this.used), type: t.type, inner: scalar ? [] : [...t.dims.slice(1)], scalar, rows: 0, blocks: scalar ? 1 : blocks };
      this.entries.set(name, e);
      if (!scalar) for (let j = 0; j < e.blocks; j++) fs.writeFileSync(this.part(e, j), new Uint8Array(0));
    } else if (e.type !== t.type || e.scalar !== scalar || e.blocks !== (scalar ? 1 : blocks) || e.inner.join() !== (scalar ? '' : t.dims.slice(1).join())) {
      throw new MoefyError(`TensorSetWriter: "${name}" changed type or shape between pieces ([${t.dims.join(', ')}] ${t.type})`);
    }
    const bytes = tensorBytes(t, `TensorSetWriter [${name}]`);
    if (scalar) {
      if (e.rows === 0) fs.writeFileSync(this.part(e, 0), bytes);
      e.rows = 1;
      return;
    }
    const rows = t.dims[0];
    if (rows % e.blocks !== 0) throw new MoefyError(`TensorSetWriter: "${name}" has ${rows} rows, not ${e.blocks} equal blocks`);
    const per = bytes.byteLength / Math.max(rows, 1), inBlock = (rows / e.blocks) * per;
    for (let j = 0; j < e.blocks; j++) fs.appendFileSync(this.part(e, j), bytes.subarray(j * inBlock, (j + 1) * inBlock));
    e.rows += rows;
  }

  async commit(): Promise<void> {
    const p = this.target;
    try {
      const existing = await statOrNull(p);
      await checkFolderTarget(p, existing);
      const manifest: Manifest = {};
      for (const [name, e] of this.entries) {
        if (e.blocks > 1) {
          // The blocks one after the other, copied in pieces (a block can be gigabytes).
          const out = fs.openSync(path.join(this.tmp, e.file), 'w');
          try {
            const buf = Buffer.allocUnsafe(16 << 20);
            for (let j = 0; j < e.blocks; j++) {
              const src = fs.openSync(this.part(e, j), 'r');
              try {
                for (let n; (n = fs.readSync(src, buf, 0, buf.length, null)) > 0; ) fs.writeSync(out, buf, 0, n);
              } finally {
                fs.closeSync(src);
              }
              fs.rmSync(this.part(e, j));
            }
          } finally {
            fs.closeSync(out);
          }
        }
        manifest[name] = { file: e.file, dtype: e.type, shape: e.scalar ? [] : [e.rows, ...e.inner] };
      }
      fs.writeFileSync(path.join(this.tmp, 'manifest.json'), JSON.stringify(manifest, null, 1) + '\n');
      await placeFolder(this.tmp, p, !!existing);
    } catch (e) {
      this.discard();
      if (e instanceof MoefyError) throw e;
      throw envError(e, p);
    }
  }

  discard(): void {
    removeTemp(this.tmp);
  }
}

/** One-line description of a tensor: `name float32 [2, 680, 32]`. */
export function describeTensor(name: string, t: Tensor): string {
  return `${name} ${t.type} [${t.dims.join(', ')}]`;
}
