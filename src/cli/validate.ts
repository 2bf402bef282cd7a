// Option checks for every command, run before any slow work, each failing with one line in the user's words (the
// flag and what it needs). yargs parses `--seed abc` to NaN; these checks catch what yargs lets through.
import * as fs from 'node:fs';
import * as os from 'node:os';
import { MoefyError } from '../errors';

type Args = object;
const get = (a: Args, f: string): unknown => (a as Record<string, unknown>)[f];

const shown = (v: unknown) => (typeof v === 'number' && Number.isNaN(v) ? 'the value given is not a number' : `got ${String(v)}`);

/** Flags given more than once arrive as arrays; moefy's flags each take one value. */
export function once(a: Args, flags: string[]): void {
  for (const f of flags) if (Array.isArray(get(a, f))) throw new MoefyError(`--${f} was given more than once`);
}

/** An integer ≥ min (undefined passes: an optional flag left out); `why` says where the minimum comes from. */
export function integer(a: Args, flag: string, min: number, why?: string): void {
  const v = get(a, flag);
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw new MoefyError(`--${flag} must be a whole number ≥ ${min}${why ? `: ${why}` : ''} (${shown(v)})`);
}

/** A whole number, its range left to the check that knows it (e.g. --from-scale against the model's scales). */
export function whole(a: Args, flag: string): void {
  const v = get(a, flag);
  if (v === undefined) return;
  if (typeof v !== 'number' || !Number.isSafeInteger(v)) throw new MoefyError(`--${flag} must be a whole number (${shown(v)})`);
}

/**
 * An ONNX Runtime thread count: a whole number ≥ min and at most the machine's cores (ONNX Runtime starts every
 * thread asked for, and threads beyond the cores spin against each other: 2000 ran for minutes).
 */
export function threads(a: Args, min: number, flag = 'threads'): void {
  integer(a, flag, min);
  const v = get(a, flag) as number | undefined;
  const cores = os.availableParallelism();
  if (v !== undefined && v > cores) throw new MoefyError(`--${flag} ${v} is more than this machine's ${cores} cores`);
}

/** A finite number in [min, max] (or (min, max] with minExclusive). */
export function number(a: Args, flag: string, min: number, max: number, o: { minExclusive?: boolean } = {}): void {
  const v = get(a, flag);
  if (v === undefined) return;
  const lowOk = o.minExclusive ? (v as number) > min : (v as number) >= min;
  if (typeof v !== 'number' || !Number.isFinite(v) || !lowOk || v > max)
    throw new MoefyError(`--${flag} must be a number in ${o.minExclusive ? '(' : '['}${min}, ${max === Infinity ? '∞)' : `${max}]`} (${shown(v)})`);
}

/** A string flag given without a value (`--threshold ''` or a bare `--threshold`). */
export function nonEmpty(a: Args, flags: string[]): void {
  for (const f of flags) if (get(a, f) === '') throw new MoefyError(`--${f} needs a value`);
}

/** A path the command reads: it must exist (and be a regular file when `file`). `label` is e.g. "--kv-prefix". */
export function existing(label: string, p: string, o: { file?: boolean } = {}): void {
  let st: fs.Stats;
  try {
    st = fs.statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new MoefyError(`${label} ${p}: ${code === 'ENOENT' ? 'no such file or folder' : code === 'EACCES' ? 'permission denied' : `cannot read (${code})`}`);
  }
  if (o.file && !st.isFile()) throw new MoefyError(`${label} ${p}: not a regular file`);
}
