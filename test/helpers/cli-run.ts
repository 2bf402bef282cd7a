// The CLI run as a child process, the way a user runs it, and the checks every exit case shares: the exit status,
// exactly one `moefy: …` line on stderr, no stack trace, nothing left in a private temp dir (TMPDIR) or beside the
// inputs (every file's SHA-256 before and after).
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createHash } from 'node:crypto';
import { spawn, spawnSync } from 'node:child_process';
import { readTensorSet, writeTensorSet } from '../../src/io';
import { fixture, repoRoot } from './fixtures';

export const BIN = path.join(repoRoot, 'bin', 'moefy.js');
export const STACK = /^\s+at .+(:\d+:\d+\)?)$/m;

export interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
  /** What the command left in its private temp dir. */
  tmpLeft: string[];
}

/** Runs `moefy …args` in `cwd` with TMPDIR = `tmp` (a fresh, empty folder). */
export function runMoefy(args: string[], o: { cwd: string; tmp: string; timeoutMs?: number }): Run {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: o.cwd, encoding: 'utf8', timeout: o.timeoutMs ?? 120_000, env: { ...process.env, TMPDIR: o.tmp } });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, tmpLeft: fs.readdirSync(o.tmp) };
}

/** One line, `moefy: `, matching `expect`, no stack, not internal, exit `status`. */
export function oneLine(what: string, r: { status: number | null; stderr: string }, expect: RegExp, status = 1): void {
  assert.equal(r.status, status, `${what}: exit status (stderr ${JSON.stringify(r.stderr)})`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `${what}: one line on stderr, got ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0], /^moefy: /, what);
  assert.match(lines[0], expect, what);
  assert.doesNotMatch(r.stderr, STACK, `${what}: no stack trace`);
  assert.doesNotMatch(r.stderr, /internal error/, `${what}: a user error`);
}

export function sha(p: string): string {
  return createHash('sha256').update(fs.readFileSync(p)).digest('hex');
}

/** Every entry under `dir` (following no links) with its hash: what a case must leave as it was. */
export function snapshot(dir: string): Map<string, string> {
  const m = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        m.set(p, 'folder');
        walk(p);
      } else if (e.isFile()) m.set(p, sha(p));
      else m.set(p, e.isSymbolicLink() ? `link → ${fs.readlinkSync(p)}` : 'special');
    }
  };
  walk(dir);
  return m;
}

export interface Interrupted {
  code: number | null;
  /** stdout when the first signal was sent (which stages had ended). */
  stdoutAtSignal: string;
  stderr: string;
  tmpLeft: string[];
}

/**
 * Starts `moefy …args` in `cwd` (TMPDIR = `tmp`), waits until `ready` matches its stdout (if given) and `settle` ms
 * more, then sends `signals` one after the other with no pause (npx forwards a terminal's Ctrl-C to its child, which
 * then gets SIGINT twice); resolves when the process has exited.
 */
export async function interruptWhen(args: string[], o: { cwd: string; tmp: string; ready: RegExp | null; settle: number; signals: NodeJS.Signals[] }): Promise<Interrupted> {
  const child = spawn(process.execPath, [BIN, ...args], { cwd: o.cwd, env: { ...process.env, TMPDIR: o.tmp } });
  let stderr = '', stdout = '';
  child.stderr.on('data', (d) => (stderr += d));
  child.stdout.on('data', (d) => (stdout += d));
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  for (let i = 0; o.ready && i < 2400 && !o.ready.test(stdout) && child.exitCode === null; i++) await new Promise((r) => setTimeout(r, 25));
  await new Promise((r) => setTimeout(r, o.settle));
  const stdoutAtSignal = stdout;
  for (const s of o.signals) child.kill(s);
  const code = await exited;
  return { code, stdoutAtSignal, stderr, tmpLeft: fs.readdirSync(o.tmp) };
}

/** Runs a shell script in a private mount namespace (`unshare -m`); null when the system does not allow one. */
export function inNamespace(script: string, probeDir: string): { status: number | null; stdout: string; stderr: string } | null {
  const probe = spawnSync('unshare', ['-m', 'sh', '-c', 'mount -t tmpfs -o size=16k tmpfs "$0"', probeDir]);
  if (probe.status !== 0) return null;
  const r = spawnSync('unshare', ['-m', 'sh', '-c', script], { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * A user's work folder in `dir`: the tiny VAR (in.onnx), its 2-sample calibration folder (calib/) and its conversion
 * by the CLI (moe.onnx: 4 experts from scale 8 at `threshold`; `tmp` is its TMPDIR).
 */
export async function tinyWorkFolder(dir: string, threshold: string, tmp: string): Promise<{ IN: string; CALIB: string; MOE: string }> {
  const IN = path.join(dir, 'in.onnx'), CALIB = path.join(dir, 'calib'), MOE = path.join(dir, 'moe.onnx');
  fs.copyFileSync(fixture('var_tiny_full.onnx'), IN);
  const io = await readTensorSet(fixture('var_tiny_full_io'));
  await writeTensorSet(CALIB, { label_B: io.label_B, x_BLCv_wo_first_l: io.x_BLCv_wo_first_l });
  const c = runMoefy([IN, '--experts', '4', '--from-scale', '8', '--calib', CALIB, '--router-epochs', '2', '--threshold', threshold, '-o', MOE, '-q'], { cwd: dir, tmp });
  assert.equal(c.status, 0, c.stderr);
  return { IN, CALIB, MOE };
}
