import { MoefyError } from '../errors';

/** Parses a comma-separated list of numbers; names the flag in the error. */
export function parseNumberList(flag: string, s: string | undefined): number[] | undefined {
  if (s === undefined) return undefined;
  if (String(s).trim() === '') throw new MoefyError(`--${flag} needs a value`);
  const parts = String(s).split(',').map((x) => x.trim());
  const nums = parts.map(Number);
  const bad = parts.find((p, k) => p === '' || !Number.isFinite(nums[k]));
  if (bad !== undefined) throw new MoefyError(`--${flag}: '${s}' is not a comma-separated list of numbers`);
  return nums;
}

export function parsePatchNums(s: string | undefined): number[] | undefined {
  const v = parseNumberList('patch-nums', s);
  if (v && v.some((x) => !Number.isInteger(x) || x <= 0)) throw new MoefyError(`--patch-nums: '${s}' must be positive integers`);
  return v;
}
