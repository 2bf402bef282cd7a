// The exporter's tests run Python: moefy_export (python/) and its check script (python/checks/check_pipeline.py) in
// the repository's .venv (made by `npm install`, scripts/python-env.js), with VAR's own code from ../shared.
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { spawn, spawnSync } from 'node:child_process';
import { repoRoot } from './fixtures';

export const VENV_PYTHON = path.join(repoRoot, '.venv', 'bin', 'python');
export const VAR_CODE = path.resolve(repoRoot, '..', 'shared', 'third_party', 'VAR');
const CHECK = path.join(repoRoot, 'python', 'checks', 'check_pipeline.py');
const ENV = { ...process.env, PYTHONPATH: path.join(repoRoot, 'python'), OMP_NUM_THREADS: '2' };

export interface PyResult {
  status: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

function python(args: string[], timeoutMs: number): PyResult {
  if (!fs.existsSync(VENV_PYTHON)) throw new Error(`${VENV_PYTHON} missing: run npm install (scripts/python-env.js)`);
  const r = spawnSync(VENV_PYTHON, args, { cwd: repoRoot, env: ENV, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20 });
  if (r.error) throw r.error;
  return { status: r.status, signal: r.signal, stdout: r.stdout, stderr: r.stderr };
}

/** `python3 -m moefy_export ...args`, as the README runs it. */
export function runExporter(args: string[], timeoutMs = 300_000): PyResult {
  return python(['-m', 'moefy_export', ...args], timeoutMs);
}

/** The exporter started in the background (for the signal tests). */
export function startExporter(args: string[]) {
  return spawn(VENV_PYTHON, ['-m', 'moefy_export', ...args], { cwd: repoRoot, env: ENV, stdio: ['ignore', 'pipe', 'pipe'] });
}

/** check_pipeline.py with its arguments; returns the JSON it prints (the measured errors). */
export function runCheck(args: string[], timeoutMs = 300_000): Record<string, any> {
  const r = python([CHECK, ...args], timeoutMs);
  if (r.status !== 0) throw new Error(`check_pipeline.py ${args[0]} failed (${r.status}):\n${r.stderr.slice(-3000)}`);
  return JSON.parse(r.stdout.trim().split('\n').pop()!);
}

/** Asserts a run was a clean refusal: exit 1, one stderr line `moefy_export: …` matching `expect`, no trace. */
export function assertRefused(r: PyResult, expect: RegExp, what: string): void {
  assert.strictEqual(r.status, 1, `${what}: exit status (stderr: ${r.stderr.slice(-1500)})`);
  assert.doesNotMatch(r.stderr, /Traceback|internal error/, `${what}: a user error, no trace`);
  const lines = r.stderr.trimEnd().split('\n');
  assert.strictEqual(lines.length, 1, `${what}: exactly one line, got ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0], /^moefy_export: /, what);
  assert.match(lines[0], expect, what);
}
