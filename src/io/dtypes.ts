import { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';

/** Tensor element types that moefy's tensor-set I/O reads and writes (onnxruntime-common names). */
export type IoDType =
  | 'float32'
  | 'float16'
  | 'float64'
  | 'int8'
  | 'uint8'
  | 'int16'
  | 'uint16'
  | 'int32'
  | 'uint32'
  | 'int64'
  | 'uint64'
  | 'bool';

type TypedArrayCtor =
  | Float32ArrayConstructor
  | Float64ArrayConstructor
  | Int8ArrayConstructor
  | Uint8ArrayConstructor
  | Int16ArrayConstructor
  | Uint16ArrayConstructor
  | Int32ArrayConstructor
  | Uint32ArrayConstructor
  | BigInt64ArrayConstructor
  | BigUint64ArrayConstructor;

interface DTypeInfo {
  size: number;
  ctor: TypedArrayCtor;
  /** NumPy descr without the byte-order character. */
  npy: string;
}

export const DTYPES: Record<IoDType, DTypeInfo> = {
  float32: { size: 4, ctor: Float32Array, npy: 'f4' },
  float16: { size: 2, ctor: Uint16Array, npy: 'f2' },
  float64: { size: 8, ctor: Float64Array, npy: 'f8' },
  int8: { size: 1, ctor: Int8Array, npy: 'i1' },
  uint8: { size: 1, ctor: Uint8Array, npy: 'u1' },
  int16: { size: 2, ctor: Int16Array, npy: 'i2' },
  uint16: { size: 2, ctor: Uint16Array, npy: 'u2' },
  int32: { size: 4, ctor: Int32Array, npy: 'i4' },
  uint32: { size: 4, ctor: Uint32Array, npy: 'u4' },
  int64: { size: 8, ctor: BigInt64Array, npy: 'i8' },
  uint64: { size: 8, ctor: BigUint64Array, npy: 'u8' },
  bool: { size: 1, ctor: Uint8Array, npy: 'b1' },
};

const ALIASES: Record<string, IoDType> = {
  float: 'float32',
  half: 'float16',
  double: 'float64',
  long: 'int64',
  int: 'int32',
  boolean: 'bool',
  bool_: 'bool',
};

export function isIoDType(s: string): s is IoDType {
  return Object.prototype.hasOwnProperty.call(DTYPES, s);
}

/** Normalises a dtype name ("float32", "float", "int64", ...) or throws MoefyError. */
export function parseDType(s: string, where: string): IoDType {
  const k = s.trim().toLowerCase();
  if (isIoDType(k)) return k;
  if (ALIASES[k]) return ALIASES[k];
  throw new MoefyError(`${where}: unsupported dtype "${s}" (supported: ${Object.keys(DTYPES).join(', ')})`);
}

export function numElements(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= bytes.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

/**
 * Builds a Tensor from raw bytes (little-endian unless `bigEndian`). Views the bytes without copying when they are
 * aligned and host-endian; otherwise copies.
 */
export function tensorFromBytes(
  dtype: IoDType,
  shape: readonly number[],
  bytes: Uint8Array,
  where: string,
  bigEndian = false,
): Tensor {
  if (!LITTLE_ENDIAN) throw new MoefyError('moefy tensor I/O needs a little-endian host');
  const info = DTYPES[dtype];
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new MoefyError(`${where}: invalid shape [${shape.join(', ')}]`);
  }
  const n = numElements(shape);
  const need = n * info.size;
  if (bytes.byteLength !== need) {
    throw new MoefyError(
      `${where}: ${bytes.byteLength} bytes but dtype ${dtype} shape [${shape.join(', ')}] needs ${need}`,
    );
  }
  let src = bytes;
  if (bigEndian || src.byteOffset % info.size !== 0) {
    src = new Uint8Array(bytes); // copy: aligned, owned
    if (bigEndian) swapBytes(src, info.size);
  }
  const data = new info.ctor(src.buffer as ArrayBuffer, src.byteOffset, n);
  return new Tensor(dtype, data as never, shape as number[]);
}

/** The tensor's raw little-endian bytes (a view, not a copy). */
export function tensorBytes(t: Tensor, where: string): Uint8Array {
  if (!isIoDType(t.type)) throw new MoefyError(`${where}: cannot write tensors of type ${t.type}`);
  if (!LITTLE_ENDIAN) throw new MoefyError('moefy tensor I/O needs a little-endian host');
  const data = t.data as ArrayBufferView;
  const info = DTYPES[t.type];
  const n = numElements(t.dims);
  if (data.byteLength !== n * info.size) {
    throw new MoefyError(`${where}: tensor data holds ${data.byteLength} bytes, dims [${t.dims.join(', ')}] need ${n * info.size}`);
  }
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
}
