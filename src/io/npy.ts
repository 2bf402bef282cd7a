import { Tensor } from 'onnxruntime-common';
import { MoefyError } from '../errors';
import { DTYPES, IoDType, tensorBytes, tensorFromBytes } from './dtypes';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

const NPY_TO_DTYPE: Record<string, IoDType> = {};
for (const [k, v] of Object.entries(DTYPES)) NPY_TO_DTYPE[v.npy] = k as IoDType;
NPY_TO_DTYPE['b1'] = 'bool';
NPY_TO_DTYPE['?'] = 'bool';

interface NpyHeader {
  descr: string;
  fortran: boolean;
  shape: number[];
}

/** Parses the python-literal header dict of a .npy file, e.g. {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } */
function parseHeaderDict(text: string, where: string): NpyHeader {
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]+)['"]/.exec(text);
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(text);
  const shape = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(text);
  if (!descr || !fortran || !shape) throw new MoefyError(`${where}: malformed .npy header: ${text.trim()}`);
  const dims = shape[1]
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s.length > 0)
    .map((s) => {
      const v = Number(s.replace(/L$/, ''));
      if (!Number.isInteger(v) || v < 0) throw new MoefyError(`${where}: bad shape entry "${s}" in .npy header`);
      return v;
    });
  return { descr: descr[1], fortran: fortran[1] === 'True', shape: dims };
}

/** Decodes one .npy file. The returned tensor may view `buf` (no copy) when the data is aligned. */
export function decodeNpy(buf: Uint8Array, where: string): Tensor {
  if (buf.length < 10 || MAGIC.some((b, i) => buf[i] !== b)) throw new MoefyError(`${where}: not a .npy file`);
  const major = buf[6];
  let headerLen: number;
  let start: number;
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  if (major === 1) {
    headerLen = dv.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (buf.length < 12) throw new MoefyError(`${where}: truncated .npy header`);
    headerLen = dv.getUint32(8, true);
    start = 12;
  } else {
    throw new MoefyError(`${where}: unsupported .npy format version ${major}`);
  }
  if (start + headerLen > buf.length) throw new MoefyError(`${where}: truncated .npy header`);
  const text = new TextDecoder(major === 3 ? 'utf-8' : 'latin1').decode(buf.subarray(start, start + headerLen));
  const h = parseHeaderDict(text, where);
  let order = h.descr[0];
  let code = h.descr.slice(1);
  if (!'<>|='.includes(order)) {
    order = '=';
    code = h.descr;
  }
  const dtype = NPY_TO_DTYPE[code];
  if (!dtype) throw new MoefyError(`${where}: unsupported .npy dtype "${h.descr}"`);
  const shape = h.shape;
  if (h.fortran && shape.filter((d) => d > 1).length > 1) {
    throw new MoefyError(`${where}: Fortran-ordered .npy arrays are not supported (save with np.ascontiguousarray)`);
  }
  const data = buf.subarray(start + headerLen);
  return tensorFromBytes(dtype, shape, data, where, order === '>');
}

/** Encodes a tensor as a version-1.0 .npy file (little-endian, C order). */
export function encodeNpy(t: Tensor, where: string): Uint8Array {
  const bytes = tensorBytes(t, where);
  const info = DTYPES[t.type as IoDType];
  const descr = info.size === 1 ? `|${info.npy}` : `<${info.npy}`;
  const shape = t.dims.length === 1 ? `(${t.dims[0]},)` : `(${t.dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const pre = 10;
  const total = Math.ceil((pre + header.length + 1) / 64) * 64;
  header = header + ' '.repeat(total - pre - header.length - 1) + '\n';
  if (header.length > 0xffff) throw new MoefyError(`${where}: .npy header too long`);
  const out = new Uint8Array(total + bytes.byteLength);
  out.set(MAGIC, 0);
  out[6] = 1;
  out[7] = 0;
  out[8] = header.length & 0xff;
  out[9] = header.length >> 8;
  for (let i = 0; i < header.length; i++) out[pre + i] = header.charCodeAt(i);
  out.set(bytes, total);
  return out;
}
