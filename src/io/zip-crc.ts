// The CRC-32 of each entry of a zip archive (an .npz) checked against its central directory: fflate's unzipSync does
// not check them, so a damaged archive whose bytes still inflate (or are stored) would be read as data.
import * as zlib from 'node:zlib';
import { MoefyError } from '../errors';

/** zlib.crc32 (Node 20.15+), else the bitwise form of the same polynomial. */
const crc32: (d: Uint8Array) => number =
  (zlib as { crc32?: (d: Uint8Array) => number }).crc32 ??
  ((d) => {
    let c = ~0;
    for (let i = 0; i < d.length; i++) {
      c ^= d[i];
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
    }
    return ~c >>> 0;
  });

const EOCD = 0x06054b50, ZIP64_LOCATOR = 0x07064b50, ZIP64_EOCD = 0x06064b50, CENTRAL = 0x02014b50;

/** Entry name → CRC-32 from the central directory (zip64 archives included: numpy writes them for large arrays). */
export function centralCrcs(buf: Uint8Array, where: string): Map<string, number> {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const bad = (why: string) => new MoefyError(`${where}: damaged .npz (${why})`);
  // The end record sits in the last 22 bytes plus a comment of up to 64 KiB.
  let end = -1;
  for (let i = buf.length - 22; i >= Math.max(0, buf.length - 22 - 0xffff); i--) {
    if (dv.getUint32(i, true) === EOCD) {
      end = i;
      break;
    }
  }
  if (end < 0) throw bad('no end of central directory: truncated?');
  let count = dv.getUint16(end + 10, true);
  let offset = dv.getUint32(end + 16, true);
  if ((count === 0xffff || offset === 0xffffffff) && end >= 20 && dv.getUint32(end - 20, true) === ZIP64_LOCATOR) {
    const at = Number(dv.getBigUint64(end - 12, true));
    if (at + 56 > buf.length || dv.getUint32(at, true) !== ZIP64_EOCD) throw bad('bad zip64 end record');
    count = Number(dv.getBigUint64(at + 32, true));
    offset = Number(dv.getBigUint64(at + 48, true));
  }
  const out = new Map<string, number>();
  let p = offset;
  for (let k = 0; k < count; k++) {
    if (p + 46 > buf.length || dv.getUint32(p, true) !== CENTRAL) throw bad('bad central directory');
    const nameLen = dv.getUint16(p + 28, true), extra = dv.getUint16(p + 30, true), comment = dv.getUint16(p + 32, true);
    out.set(Buffer.from(buf.subarray(p + 46, p + 46 + nameLen)).toString('utf8'), dv.getUint32(p + 16, true));
    p += 46 + nameLen + extra + comment;
  }
  return out;
}

/** Throws when an entry's data does not match the CRC-32 its archive recorded. */
export function checkCrcs(files: Record<string, Uint8Array>, crcs: Map<string, number>, where: string): void {
  for (const [name, data] of Object.entries(files)) {
    const want = crcs.get(name);
    if (want === undefined) throw new MoefyError(`${where}: damaged .npz ('${name}' is not in the central directory)`);
    if (crc32(data) !== want) throw new MoefyError(`${where}: damaged .npz: '${name}' fails its CRC-32 check (the file is corrupted; export it again)`);
  }
}
