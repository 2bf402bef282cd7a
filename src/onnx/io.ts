// Loading and saving ONNX models: the protobuf, external data, and the checks that turn bad files into one line.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoefyError } from '../errors';
import { envError } from '../files/env-errors';
import { commitTemp, removeTemp, tempSibling } from '../files/temp';
import { Model } from '../ir/model';
import { graphFromProto, graphToProto } from './ir-proto';
import { Value } from '../ir/graph';
import { ModelProto, ModelProtoType, StringStringEntryProto, TensorProto } from './schema';
import { Tensor, readRegion, tensorFromInlineProto } from './tensor';

/** Protobuf's hard limit on one message; models larger than this must keep weights in external data. */
export const PROTOBUF_LIMIT = 2 ** 31 - 1;

export interface LoadedModel extends Model {
  /** The file the model was read from. */
  path?: string;
}

export function loadModel(file: string): Model {
  let buf: Buffer;
  try {
    const st = fs.statSync(file);
    if (st.isDirectory()) throw new MoefyError(`${file}: is a directory, not an ONNX model`);
    if (st.size > PROTOBUF_LIMIT) throw new MoefyError(`${file}: ${st.size} bytes is over protobuf's 2 GB limit; an ONNX model this large must keep its weights in external data`);
    buf = fs.readFileSync(file);
  } catch (e) {
    if (e instanceof MoefyError) throw e;
    throw new MoefyError(`${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  return decodeModel(buf, file);
}

const MAGIC: [string, number[]][] = [
  ['a JPEG image', [0xff, 0xd8, 0xff]],
  ['a PNG image', [0x89, 0x50, 0x4e, 0x47]],
  ['a GIF image', [0x47, 0x49, 0x46, 0x38]],
  ['a zip archive (an .npz?)', [0x50, 0x4b, 0x03, 0x04]],
  ['a PDF document', [0x25, 0x50, 0x44, 0x46]],
  ['a gzip file', [0x1f, 0x8b]],
];

/** 'a JSON file' or 'a text file' when the first bytes are text (an ONNX model starts with binary protobuf fields). */
function textKind(buf: Uint8Array): string | null {
  const head = buf.subarray(0, 512);
  if (!head.every((b) => b === 9 || b === 10 || b === 13 || b >= 32)) return null;
  const first = Buffer.from(head).toString('utf8').trimStart()[0];
  return first === '{' || first === '[' ? 'a JSON file' : 'a text file';
}

export function decodeModel(buf: Uint8Array, file = '<memory>'): Model {
  if (buf.byteLength === 0) throw new MoefyError(`${file}: empty file (0 bytes), not an ONNX model`);
  for (const [what, magic] of MAGIC) {
    if (magic.every((b, k) => buf[k] === b)) throw new MoefyError(`${file}: this is ${what}, not an ONNX model`);
  }
  const text = textKind(buf);
  if (text) throw new MoefyError(`${file}: this is ${text}, not an ONNX model`);
  let proto: ModelProto;
  try {
    proto = ModelProtoType.decode(buf) as unknown as ModelProto;
  } catch (e) {
    const msg = (e as Error).message;
    // Every ONNX writer puts ir_version (field 1, a varint: tag 0x08) first; other bytes that end early are not ONNX.
    if (/index out of range/.test(msg) && buf[0] === 0x08) throw new MoefyError(`${file}: truncated ONNX model (the data ends inside a field: ${msg})`);
    throw new MoefyError(`${file}: not an ONNX model (protobuf decoding failed: ${msg})`);
  }
  if (!proto.graph || !(Number(proto.ir_version) > 0) || !(proto.opset_import && proto.opset_import.length > 0)) {
    const missing = [!proto.graph && 'graph', !(Number(proto.ir_version) > 0) && 'ir_version', !(proto.opset_import?.length) && 'opset_import'].filter(Boolean).join(', ');
    throw new MoefyError(`${file}: not an ONNX model (no ${missing})`);
  }
  const baseDir = file === '<memory>' ? process.cwd() : path.dirname(path.resolve(file));
  const tensorOf = (t: TensorProto) => tensorFromProto(t, baseDir, file);
  const graph = graphFromProto(proto.graph, tensorOf);
  const m = new Model(proto, graph);
  (m as LoadedModel).path = file;
  return m;
}

function tensorFromProto(t: TensorProto, baseDir: string, file: string): Tensor {
  const dims = (t.dims ?? []).map(Number);
  const dataType = t.data_type ?? 0;
  if (t.data_location === 1) {
    const kv = Object.fromEntries((t.external_data ?? []).map((e) => [e.key, e.value]));
    if (!kv.location) throw new MoefyError(`${file}: initializer '${t.name}' says external data but names no location`);
    const loc = path.resolve(baseDir, kv.location);
    if (path.relative(baseDir, loc).startsWith('..')) throw new MoefyError(`${file}: initializer '${t.name}' points outside the model's folder (${kv.location})`);
    let size: number;
    try {
      size = fs.statSync(loc).size;
    } catch {
      throw new MoefyError(`${file}: missing external data file '${kv.location}' (needed by initializer '${t.name}')`);
    }
    const offset = Number(kv.offset ?? 0);
    const length = kv.length !== undefined ? Number(kv.length) : size - offset;
    if (offset + length > size) throw new MoefyError(`${file}: external data file '${kv.location}' is too short for initializer '${t.name}' (needs ${offset + length} bytes, has ${size})`);
    const tensor = new Tensor(dataType, dims, { kind: 'external', path: loc, offset, length });
    tensor.origin = t;
    return tensor;
  }
  return tensorFromInlineProto(t);
}

export interface SaveOptions {
  /** true: weights go to `<name>.data`; false: one file; 'auto' (default): external when the model would pass 2 GB. */
  externalData?: boolean | 'auto';
  /** Tensors smaller than this stay inside the model file when saving external data. */
  sizeThreshold?: number;
}

/**
 * Saves atomically: everything is written under temporary names and renamed at the end, so a failure never leaves
 * a partial model behind.
 */
export function saveModel(model: Model, file: string, opts: SaveOptions = {}): { externalData: string | null; bytes: number } {
  const g = model.graph;
  const totalBytes = g.initializers.reduce((s, v) => s + (v.tensor?.byteLength ?? 0), 0);
  const external = opts.externalData === true || ((opts.externalData ?? 'auto') === 'auto' && totalBytes > PROTOBUF_LIMIT - 64 * 1024 * 1024);
  const threshold = opts.sizeThreshold ?? 1024;
  const dir = path.dirname(path.resolve(file));
  const dataName = `${path.basename(file)}.data`;
  const tmpModel = tempSibling(file);
  const tmpData = tempSibling(path.join(dir, dataName));
  // The file being written when an error strikes: the user's name for it, not the temporary one.
  let writing = file;
  let fd: number | null = null;
  let dataOffset = 0;
  const tensorProtoOf = (v: Value): TensorProto => {
    const t = v.tensor!;
    const inline = !external || t.byteLength < threshold;
    if (inline) {
      if (t.origin && t.source.kind !== 'external' && t.origin.name === v.name) return t.origin;
      return { ...baseTensorProto(v.name, t), raw_data: t.bytes() };
    }
    writing = path.join(dir, dataName);
    if (fd === null) fd = fs.openSync(tmpData, 'w');
    // Align large tensors so a reader can map them directly.
    const align = t.byteLength >= 1 << 20 ? 65536 : 64;
    const pad = (align - (dataOffset % align)) % align;
    if (pad) {
      fs.writeSync(fd, Buffer.alloc(pad));
      dataOffset += pad;
    }
    const offset = dataOffset;
    copyTensorBytes(t, fd);
    dataOffset += t.byteLength;
    const ext: StringStringEntryProto[] = [
      { key: 'location', value: dataName },
      { key: 'offset', value: String(offset) },
      { key: 'length', value: String(t.byteLength) },
    ];
    return { ...baseTensorProto(v.name, t), external_data: ext, data_location: 1 };
  };
  try {
    const gp = graphToProto(g, tensorProtoOf);
    const proto: ModelProto = { ...model.proto, graph: gp };
    const bytes = ModelProtoType.encode(proto as never).finish();
    writing = file;
    fs.writeFileSync(tmpModel, bytes);
    if (fd !== null) {
      writing = path.join(dir, dataName);
      fs.closeSync(fd);
      fd = null;
      commitTemp(tmpData, path.join(dir, dataName));
    }
    writing = file;
    commitTemp(tmpModel, file);
    return { externalData: external ? path.join(dir, dataName) : null, bytes: bytes.byteLength + (external ? dataOffset : 0) };
  } catch (e) {
    if (fd !== null) fs.closeSync(fd);
    for (const f of [tmpModel, tmpData]) removeTemp(f);
    throw envError(e, writing);
  }
}

function baseTensorProto(name: string, t: Tensor): TensorProto {
  const p: TensorProto = { dims: t.dims, data_type: t.dataType, name };
  if (t.origin?.doc_string) p.doc_string = t.origin.doc_string;
  if (t.origin?.metadata_props) p.metadata_props = t.origin.metadata_props;
  return p;
}

function copyTensorBytes(t: Tensor, fd: number): void {
  const s = t.source;
  if (s.kind !== 'external') {
    fs.writeSync(fd, t.bytes());
    return;
  }
  const chunk = 64 << 20;
  for (let done = 0; done < s.length; done += chunk) {
    fs.writeSync(fd, readRegion(s.path, s.offset + done, Math.min(chunk, s.length - done)));
  }
}

/** Encodes the model to bytes in memory (small models only: tests, sessions from buffers). */
export function encodeModel(model: Model): Uint8Array {
  const gp = graphToProto(model.graph, (v) => {
    const t = v.tensor!;
    if (t.origin && t.source.kind !== 'external' && t.origin.name === v.name) return t.origin;
    return { ...baseTensorProto(v.name, t), raw_data: t.bytes() };
  });
  return ModelProtoType.encode({ ...model.proto, graph: gp } as never).finish();
}

/** What a temporary copy of a model changes: its graph outputs, and initializer-backed inputs made plain inputs. */
export interface CopyChanges {
  outputs: Value[];
  /** Graph inputs whose initializer (default) the copy drops, so a runtime must feed them. */
  plainInputs?: Value[];
}

/** Runs `write` with the changes applied to the model, then restores it, whatever `write` does. */
function withChanges<T>(model: Model, c: CopyChanges, write: () => T): T {
  const g = model.graph;
  const outputs = g.outputs;
  const initializers = g.initializers;
  const plain = (c.plainInputs ?? []).filter((v) => v.tensor && g.inputs.includes(v));
  const tensors = plain.map((v) => v.tensor);
  g.outputs = c.outputs;
  if (plain.length) g.initializers = g.initializers.filter((v) => !plain.includes(v));
  plain.forEach((v) => (v.tensor = undefined));
  try {
    return write();
  } finally {
    g.outputs = outputs;
    g.initializers = initializers;
    plain.forEach((v, k) => (v.tensor = tensors[k]));
  }
}

/** Saves a copy of the model with other graph outputs (see CopyChanges) to `file`; the model itself is unchanged. */
export function saveCopy(model: Model, file: string, c: CopyChanges, opts: SaveOptions = {}): { externalData: string | null; bytes: number } {
  return withChanges(model, c, () => saveModel(model, file, opts));
}

/** The same as saveCopy, encoded in memory (small models only). */
export function encodeCopy(model: Model, c: CopyChanges): Uint8Array {
  return withChanges(model, c, () => encodeModel(model));
}
