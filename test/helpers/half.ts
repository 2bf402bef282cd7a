// float16 test data: IEEE binary16 bits <-> numbers (round to nearest even). Test-only (the kernel's own
// conversion is what is tested; this is the independent side).
export function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const f = h & 0x3ff;
  if (e === 0) return s * 2 ** -14 * (f / 1024);
  if (e === 31) return f ? NaN : s * Infinity;
  return s * 2 ** (e - 15) * (1 + f / 1024);
}

/** Exact for values that are already float16 numbers; others round to nearest even by searching the neighbours. */
export function floatToHalf(x: number): number {
  if (Number.isNaN(x)) return 0x7e00;
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  if (a >= 65520) return sign | 0x7c00;
  // binary16 values are monotonic in their bits: binary search the magnitude.
  let lo = 0, hi = 0x7bff;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (halfToFloat(mid) <= a) lo = mid;
    else hi = mid - 1;
  }
  const below = halfToFloat(lo), above = lo < 0x7bff ? halfToFloat(lo + 1) : Infinity;
  const pick = a - below < above - a || (a - below === above - a && (lo & 1) === 0) ? lo : lo + 1;
  return sign | pick;
}

export const toHalfBits = (a: ArrayLike<number>): Uint16Array => Uint16Array.from(a as number[], (v) => floatToHalf(v));
export const fromHalfBits = (b: Uint16Array): Float32Array => Float32Array.from(b, (h) => halfToFloat(h));
