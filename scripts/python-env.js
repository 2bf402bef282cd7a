#!/usr/bin/env node
// The Python environment of the exporter's tests: a virtual environment in .venv/ (ignored by git) with the packages
// of python/requirements-test.txt. Made when missing or when the requirements changed (a stamp holds their hash and
// the interpreter's version); nothing is installed machine-wide.
//
// Where pip is configured with local package indexes or wheel folders (file:// URLs or paths), pip is pointed at
// them only (--index-url on the first local index), so that it never waits on an unreachable pypi.org; elsewhere pip
// uses its own configuration. MOEFY_PYTHON names the interpreter (default python3); MOEFY_SKIP_PYTHON=1 skips this.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');
const VENV = path.join(ROOT, '.venv');
const REQUIREMENTS = path.join(ROOT, 'python', 'requirements-test.txt');
const STAMP = path.join(VENV, '.moefy-requirements');

function log(msg) {
  process.stdout.write(`[moefy python] ${msg}\n`);
}

/** Runs quietly; on failure the error carries the end of the output. */
function run(cmd, args, env = process.env) {
  const r = spawnSync(cmd, args, { cwd: ROOT, stdio: 'pipe', encoding: 'utf8', env });
  if (r.error) throw new Error(`${cmd} could not start: ${r.error.message}`);
  if (r.status !== 0) {
    const tail = `${r.stdout || ''}${r.stderr || ''}`.trim().split('\n').slice(-25).join('\n');
    throw new Error(`${path.basename(cmd)} ${args.slice(0, 4).join(' ')} ... failed (exit ${r.status}):\n${tail}`);
  }
}

/** pip's configured index URLs and find-links that lie on this machine (file:// URLs or paths). */
function localSources(python) {
  const r = spawnSync(python, ['-m', 'pip', 'config', 'list'], { encoding: 'utf8' });
  const indexes = [];
  const links = [];
  for (const line of (r.status === 0 ? r.stdout : '').split('\n')) {
    const m = /^[\w:.]*?\.?(index-url|extra-index-url|find-links)='(.*)'$/.exec(line.trim());
    if (!m) continue;
    for (const v of m[2].split(/\s+/).filter(Boolean)) {
      const local = v.startsWith('file:') ? v : v.startsWith('/') ? v : null;
      if (!local) continue;
      if (m[1] === 'find-links') links.push(local);
      else indexes.push(local);
    }
  }
  return { indexes: [...new Set(indexes)], links: [...new Set(links)] };
}

/** pip's arguments and environment: the local sources alone (pip's configuration files then off), or nothing. */
function pipSources(python) {
  const { indexes, links } = localSources(python);
  if (indexes.length === 0 && links.length === 0) return { args: [], env: process.env };
  const args = indexes.length ? ['--index-url', indexes[0]] : ['--no-index'];
  for (const u of indexes.slice(1)) args.push('--extra-index-url', u);
  for (const l of links) args.push('--find-links', l);
  const env = { ...process.env, PIP_CONFIG_FILE: '/dev/null' };
  for (const k of ['PIP_INDEX_URL', 'PIP_EXTRA_INDEX_URL', 'PIP_FIND_LINKS']) delete env[k];
  return { args, env };
}

function main() {
  if (process.env.MOEFY_SKIP_PYTHON === '1') return;
  const python = process.env.MOEFY_PYTHON || 'python3';
  const version = spawnSync(python, ['--version'], { encoding: 'utf8' });
  if (version.error || version.status !== 0) {
    log(`${python} not found: the exporter's tests (test/export-*.test.ts) will fail; set MOEFY_PYTHON`);
    return;
  }
  const stamp = crypto.createHash('sha256')
    .update(fs.readFileSync(REQUIREMENTS)).update((version.stdout || version.stderr).trim()).digest('hex');
  if (fs.existsSync(STAMP) && fs.readFileSync(STAMP, 'utf8').trim() === stamp) return;

  const started = Date.now();
  log(`setting up .venv from python/requirements-test.txt (torch CPU, onnx, onnxruntime; a few minutes the first time)`);
  fs.rmSync(VENV, { recursive: true, force: true });
  try {
    run(python, ['-m', 'venv', VENV]);
    const vpython = path.join(VENV, 'bin', 'python');
    const pip = pipSources(python);
    run(vpython, ['-m', 'pip', 'install', '--disable-pip-version-check', ...pip.args, '-r', REQUIREMENTS], pip.env);
    fs.writeFileSync(STAMP, `${stamp}\n`);
  } catch (e) {
    fs.rmSync(VENV, { recursive: true, force: true }); // no half-made environment that a later stamp check trusts
    throw e;
  }
  log(`.venv ready in ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

try {
  main();
} catch (e) {
  process.stderr.write(`[moefy python] ${e.message}\n`);
  process.exit(1);
}
