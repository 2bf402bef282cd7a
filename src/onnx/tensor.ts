// Tensor data as moefy holds it: a view into the loaded file, a region of an external-data file read on demand,
// or freshly computed bytes. Large weights are never copied just to be carried through a rewrite.
import * as fs from 'node:fs';
import { MoefyError } from '../errors';
import { bfloat16BitsToFloat32, float32ToHalfBits, halfBitsToFloat32, halfToFloat } from './half';
import { bitsPerElement, DataType, TensorProto } from './schema';

export type TensorSource =
  | { kind: 'bytes'; bytes: Uint8Array }
  | { kind: 'external'; path: string; offset: number; length: number }
  | { kind: 'proto'; proto: TensorProto };

/** A tensor held inside its proto (raw_data or the typed fields), such as a Constant node's value. */
export function tensorFromInlineProto(t: TensorProto): Tensor {
  const dims = (t.dims ?? []).map(Number);
  const dataType = t.data_type ?? 0;
  const tensor =
    t.raw_data && Object.prototype.hasOwnProperty.call(t, 'raw_data')
      ? new Tensor(dataType, dims, { kind: 'bytes', bytes: t.raw_data })
      : new Tensor(dataType, dims, { kind: 'proto', proto: t });
  tensor.origin = t;
  return tensor;
}

export class Tensor {
  /** The TensorProto this tensor was read from, kept so an unchanged tensor is written back byte for byte. */
  origin?: TensorProto;

  constructor(
    public dataType: number,
    public dims: number[],
    public source: TensorSource,
  ) {}

  static fromFloat32(data: Float32Array, dims: number[]): Tensor {
    return new Tensor(DataType.FLOAT, dims, { kind: 'bytes', bytes: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) });
  }
  /** float32 data stored as `dataType`: FLOAT as is, FLOAT16 rounded to nearest even (the model's own precision). */
  static fromFloats(data: Float32Array, dims: number[], dataType: number): Tensor {
    if (dataType === DataType.FLOAT) return Tensor.fromFloat32(data, dims);
    if (dataType === DataType.FLOAT16) {
      const h = float32ToHalfBits(data);
      return new Tensor(DataType.FLOAT16, dims, { kind: 'bytes', bytes: new Uint8Array(h.buffer) });
    }
    throw new MoefyError(`cannot write float data as ONNX data type ${dataType}`);
  }
  static fromInt64(data: ArrayLike<number>, dims: number[]): Tensor {
    const a = BigInt64Array.from(Array.from(data, (x) => BigInt(x)));
    return new Tensor(DataType.INT64, dims, { kind: 'bytes', bytes: new Uint8Array(a.buffer) });
  }
  static fromInt32(data: ArrayLike<number>, dims: number[]): Tensor {
    const a = Int32Array.from(data);
    return new Tensor(DataType.INT32, dims, { kind: 'bytes', bytes: new Uint8Array(a.buffer) });
  }

  get size(): number {
    return this.dims.reduce((a, b) => a * b, 1);
  }
  get byteLength(): number {
    if (this.source.kind === 'external') return this.source.length;
    if (this.source.kind === 'bytes') return this.source.bytes.byteLength;
    return Math.ceil((this.size * bitsPerElement(this.dataType)) / 8);
  }
  get isExternal(): boolean {
    return this.source.kind === 'external';
  }

  /** Little-endian raw bytes. A view for in-file data; external data is read from its file now (not cached). */
  bytes(): Uint8Array {
    const s = this.source;
    if (s.kind === 'bytes') return s.bytes;
    if (s.kind === 'external') return readRegion(s.path, s.offset, s.length);
    return protoFieldsToBytes(s.proto, this.dataType, this.size);
  }

  /** The data as float32 (FLOAT tensors only); a view when the bytes are 4-aligned. */
  floats(): Float32Array {
    if (this.dataType !== DataType.FLOAT) throw new Error(`tensor is ${this.dataType}, not float32`);
    return asFloat32(this.bytes());
  }

  /** The data as float32 from FLOAT (a view, as floats()), FLOAT16 or BFLOAT16 (converted copies). */
  toFloat32(): Float32Array {
    if (this.dataType === DataType.FLOAT) return this.floats();
    if (this.dataType === DataType.FLOAT16 || this.dataType === DataType.BFLOAT16) {
      const b = this.bytes();
      const bits = b.byteOffset % 2 === 0 ? new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2) : new Uint16Array(Uint8Array.from(b).buffer);
      return this.dataType === DataType.FLOAT16 ? halfBitsToFloat32(bits) : bfloat16BitsToFloat32(bits);
    }
    throw new Error(`tensor is ${this.dataType}, not a float type`);
  }

  /** The data as plain numbers, for small tensors (shapes, scalars, axes). */
  numbers(): number[] {
    const b = this.bytes();
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    const n = this.size;
    const out: number[] = new Array(n);
    for (let i = 0; i < n; i++) {
      switch (this.dataType) {
        case DataType.FLOAT: out[i] = dv.getFloat32(i * 4, true); break;
        case DataType.DOUBLE: out[i] = dv.getFloat64(i * 8, true); break;
        case DataType.INT64: out[i] = Number(dv.getBigInt64(i * 8, true)); break;
        case DataType.INT32: out[i] = dv.getInt32(i * 4, true); break;
        case DataType.INT8: out[i] = dv.getInt8(i); break;
        case DataType.UINT8: case DataType.BOOL: out[i] = dv.getUint8(i); break;
        case DataType.FLOAT16: out[i] = halfToFloat(dv.getUint16(i * 2, true)); break;
        case DataType.BFLOAT16: out[i] = bfloat16BitsToFloat32(Uint16Array.of(dv.getUint16(i * 2, true)))[0]; break;
        default: throw new Error(`numbers() does not read data type ${this.dataType}`);
      }
    }
    return out;
  }
}

export function asFloat32(b: Uint8Array): Float32Array {
  if (b.byteOffset % 4 === 0) return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  const copy = new Uint8Array(b.byteLength);
  copy.set(b);
  return new Float32Array(copy.buffer);
}

export function readRegion(path: string, offset: number, length: number): Uint8Array {
  const out = Buffer.allocUnsafe(length);
  let fd: number;
  try {
    fd = fs.openSync(path, 'r');
  } catch {
    throw new MoefyError(`missing external data file: ${path}`);
  }
  try {
    let done = 0;
    while (done < length) {
      const n = fs.readSync(fd, out, done, Math.min(length - done, 1 << 30), offset + done);
      if (n <= 0) throw new MoefyError(`external data file ${path} ends before offset ${offset + length}`);
      done += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  return out;
}


function protoFieldsToBytes(p: TensorProto, dataType: number, n: number): Uint8Array {
  const bits = bitsPerElement(dataType);
  const out = new Uint8Array(Math.ceil((n * bits) / 8));
  const dv = new DataView(out.buffer);
  const f = p.float_data ?? [], i32 = p.int32_data ?? [], i64 = p.int64_data ?? [], d = p.double_data ?? [], u64 = p.uint64_data ?? [];
  for (let i = 0; i < n; i++) {
    switch (dataType) {
      case DataType.FLOAT: dv.setFloat32(i * 4, f[i] ?? 0, true); break;
      case DataType.DOUBLE: dv.setFloat64(i * 8, d[i] ?? 0, true); break;
      case DataType.INT64: dv.setBigInt64(i * 8, BigInt(i64[i] ?? 0), true); break;
      case DataType.UINT64: dv.setBigUint64(i * 8, BigInt(u64[i] ?? 0), true); break;
      case DataType.INT32: dv.setInt32(i * 4, i32[i] ?? 0, true); break;
      case DataType.UINT32: dv.setUint32(i * 4, u64[i] ?? 0, true); break;
      case DataType.INT16: dv.setInt16(i * 2, i32[i] ?? 0, true); break;
      case DataType.UINT16: case DataType.FLOAT16: case DataType.BFLOAT16: dv.setUint16(i * 2, i32[i] ?? 0, true); break;
      case DataType.INT8: dv.setInt8(i, i32[i] ?? 0); break;
      case DataType.UINT8: case DataType.BOOL: dv.setUint8(i, i32[i] ?? 0); break;
      default: throw new MoefyError(`tensor '${p.name ?? ''}': data type ${dataType} stored in typed fields is not supported`);
    }
  }
  return out;
}
