// A minimal protobuf wire-format reader, written from the encoding spec, so tests can check what a saved file
// holds without going through moefy's own schema or decoder. Only what the tests need: varints and
// length-delimited fields, fixed32/fixed64 as raw bytes.

export interface WireField {
  field: number;
  wire: number;
  /** Varint value (wire type 0). */
  varint?: bigint;
  /** Payload of a length-delimited field (wire type 2), or the 8/4 bytes of a fixed64/fixed32 (wire types 1, 5). */
  bytes?: Uint8Array;
}

function readVarint(buf: Uint8Array, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('varint runs past the end');
    const b = buf[pos++];
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
  }
}

/** The top-level fields of one message, in wire order. */
export function wireFields(buf: Uint8Array): WireField[] {
  const out: WireField[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [key, p1] = readVarint(buf, pos);
    pos = p1;
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    if (wire === 0) {
      const [v, p2] = readVarint(buf, pos);
      pos = p2;
      out.push({ field, wire, varint: v });
    } else if (wire === 2) {
      const [len, p2] = readVarint(buf, pos);
      const end = p2 + Number(len);
      if (end > buf.length) throw new Error('length-delimited field runs past the end');
      out.push({ field, wire, bytes: buf.subarray(p2, end) });
      pos = end;
    } else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      out.push({ field, wire, bytes: buf.subarray(pos, pos + n) });
      pos += n;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

/** All occurrences of `field` in a message. */
export function fieldsOf(buf: Uint8Array, field: number): WireField[] {
  return wireFields(buf).filter((f) => f.field === field);
}

export const utf8 = (b: Uint8Array | undefined) => Buffer.from(b ?? new Uint8Array()).toString('utf8');

/** key/value of a StringStringEntryProto (key = 1, value = 2). */
export function stringEntry(b: Uint8Array): { key: string; value: string } {
  const f = wireFields(b);
  return { key: utf8(f.find((x) => x.field === 1)?.bytes), value: utf8(f.find((x) => x.field === 2)?.bytes) };
}
