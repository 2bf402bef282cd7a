// Checks of the raw command line that yargs lets through, each one line in the user's words: a misspelled command
// (`moefy inspekt x.onnx` would otherwise be a conversion of the model 'inspekt'), a flag that lost its value
// (`--seed` bare falls back to the default), a switch given a value (`--json=maybe` reads as false).
import * as fs from 'node:fs';
import { MoefyError } from '../errors';

/** The command words, and the subcommands of those that have some. */
const COMMANDS: Record<string, string[]> = { convert: [], inspect: [], run: [], eval: ['sweep', 'generate'], bench: [], 'lib-path': [] };

/** Edit distance (insertions, deletions, substitutions) between two short words. */
function distance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) row.push(Math.min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
    prev = row;
  }
  return prev[b.length];
}

/** A bare word (no dot, no slash) that names no file: what a misspelled command looks like. */
function looksLikeCommand(word: string): boolean {
  return /^[a-z][a-z-]*$/i.test(word) && !fs.existsSync(word);
}

function unknown(word: string, choices: string[], where: string): MoefyError {
  const near = choices.map((c) => [c, distance(word.toLowerCase(), c)] as const).filter(([, d]) => d <= 2).sort((x, y) => x[1] - y[1])[0];
  return new MoefyError(`'${word}' is neither ${where} (${near ? `did you mean '${near[0]}'?` : choices.join(', ')}) nor a file`);
}

/**
 * The first word must be a command or an existing model (the default command converts it); after `eval`, a
 * subcommand or the dense model. Throws for a word that is neither.
 */
export function checkCommandWord(argv: string[]): void {
  const words = argv.filter((a) => !a.startsWith('-'));
  if (argv.includes('--help') || argv.includes('--version') || !words.length) return;
  // Only a word in first place can be a command: `moefy model.onnx --experts 4 …` has its flags after the model.
  if (argv[0] !== words[0]) return;
  const [first, second] = words;
  if (first in COMMANDS) {
    const subs = COMMANDS[first];
    if (subs.length && second !== undefined && argv[1] === second && !subs.includes(second) && looksLikeCommand(second)) throw unknown(second, subs, `an 'eval' form`);
    return;
  }
  if (looksLikeCommand(first)) throw unknown(first, Object.keys(COMMANDS), 'a command');
}

interface YargsOptions {
  boolean: string[];
  number: string[];
  string: string[];
  choices: Record<string, unknown[]>;
  alias: Record<string, string[]>;
}

/** A value after a flag, not the next flag (a negative number is a value: `--threshold -1`). */
const isValue = (t: string | undefined) => t !== undefined && (!t.startsWith('-') || /^-\.?\d/.test(t));

/**
 * Flags that take a value must have one, and switches take none but true/false: yargs reads a bare `--seed` as the
 * default seed and `--external-data=no` as false, which would run with what the user did not ask for.
 */
export function checkFlagValues(argv: string[], o: YargsOptions): void {
  const canonical = new Map<string, string>();
  for (const [key, aliases] of Object.entries(o.alias)) for (const a of [key, ...aliases]) canonical.set(a, key);
  const kind = (name: string): 'switch' | 'value' | null => {
    const k = canonical.get(name) ?? name;
    const names = [k, ...(o.alias[k] ?? [])];
    if (names.some((n) => o.boolean.includes(n))) return 'switch';
    if (names.some((n) => o.number.includes(n) || o.string.includes(n) || n in o.choices)) return 'value';
    return null;
  };
  for (let i = 0; i < argv.length; i++) {
    const t = argv[i];
    if (t === '--') break;
    const m = /^(--?)([^=]+)(=(.*))?$/.exec(t);
    if (!m || isValue(t)) continue;
    const [, dashes, name, eq, value] = m;
    const flag = `${dashes}${name}`;
    const k = kind(name);
    if (k === 'switch' && eq !== undefined && value !== 'true' && value !== 'false')
      throw new MoefyError(`${flag} is a switch: give ${name.length > 1 ? `${flag} or --no-${name}` : `${flag} alone`} (got ${t})`);
    if (k === 'value' && eq === undefined && !isValue(argv[i + 1])) throw new MoefyError(`${flag} needs a value`);
  }
}
