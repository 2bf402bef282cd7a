#!/usr/bin/env node
// Fetches ONNX Runtime shared libraries of chosen versions for the compatibility check: each onnxruntime-node
// npm tarball ships bin/napi-v*/linux/x64/libonnxruntime.so*; `npm pack` downloads it through the npm registry and
// only the linux x64 libraries are kept, under .cache/ort/<version>/ (the tarball is deleted).
//
//   node scripts/fetch-ort.js 1.17.3 1.21.1 1.30.0     prints one "<version> <path of libonnxruntime.so>" line each
//   node scripts/fetch-ort.js --minors 1.17             the newest release of every minor from 1.17 on
// Incremental: a version already under .cache/ort/ is not fetched again.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');
const CACHE = path.join(ROOT, '.cache', 'ort');

function npm(args, opts = {}) {
  const r = spawnSync('npm', args, { encoding: 'utf8', ...opts });
  if (r.error || r.status !== 0) throw new Error(`npm ${args.join(' ')} failed: ${(r.stderr || String(r.error)).trim().split('\n').pop()}`);
  return r.stdout;
}

/** Released (non-prerelease) onnxruntime-node versions, ascending. */
function releasedVersions() {
  const all = JSON.parse(npm(['view', 'onnxruntime-node', 'versions', '--json']));
  const num = (v) => v.split('.').map(Number);
  return all
    .filter((v) => /^\d+\.\d+\.\d+$/.test(v))
    .sort((a, b) => {
      const x = num(a), y = num(b);
      return x[0] - y[0] || x[1] - y[1] || x[2] - y[2];
    });
}

/** The newest release of each minor version from `from` (e.g. "1.17") on. */
function newestPerMinor(from) {
  const [fm, fn] = from.split('.').map(Number);
  const best = new Map();
  for (const v of releasedVersions()) {
    const [a, b] = v.split('.').map(Number);
    if (a < fm || (a === fm && b < fn)) continue;
    best.set(`${a}.${b}`, v);
  }
  return [...best.values()];
}

/** libonnxruntime.so.1 (the soname) beside libonnxruntime.so, for programs linked with -lonnxruntime. */
function sonameLink(dir) {
  const link = path.join(dir, 'libonnxruntime.so.1');
  if (!fs.existsSync(link)) fs.symlinkSync('libonnxruntime.so', link);
}

/** Path of libonnxruntime.so of `version` under .cache/ort/, fetching it when absent. */
function ortLibrary(version) {
  const dir = path.join(CACHE, version);
  const lib = path.join(dir, 'libonnxruntime.so');
  if (fs.existsSync(lib)) {
    sonameLink(dir);
    return lib;
  }
  fs.mkdirSync(CACHE, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(CACHE, `.fetch-${version}-`));
  try {
    const out = npm(['pack', `onnxruntime-node@${version}`, '--pack-destination', tmp, '--json', '--ignore-scripts'], { cwd: tmp });
    const tgz = path.join(tmp, JSON.parse(out)[0].filename);
    const list = spawnSync('tar', ['-tzf', tgz], { encoding: 'utf8', maxBuffer: 64 << 20 });
    if (list.status !== 0) throw new Error(`cannot list ${tgz}`);
    const members = list.stdout.split('\n').filter((m) => /^package\/bin\/napi-v\d+\/linux\/x64\/libonnxruntime\.so[.\d]*$/.test(m));
    if (!members.length) throw new Error(`onnxruntime-node@${version} has no linux x64 libonnxruntime.so`);
    const x = spawnSync('tar', ['-xzf', tgz, '-C', tmp, ...members], { encoding: 'utf8' });
    if (x.status !== 0) throw new Error(`cannot unpack ${tgz}: ${x.stderr}`);
    const stage = path.join(tmp, 'lib');
    fs.mkdirSync(stage);
    // The real file is the longest name (libonnxruntime.so.1.x.y); the others are links or copies of it.
    const real = members.map((m) => path.join(tmp, m)).filter((f) => fs.lstatSync(f).isFile()).sort((a, b) => b.length - a.length)[0];
    fs.copyFileSync(real, path.join(stage, 'libonnxruntime.so'));
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(stage, dir);
    sonameLink(dir);
    return lib;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

function main() {
  const args = process.argv.slice(2);
  let versions = args;
  const m = args.indexOf('--minors');
  if (m >= 0) versions = newestPerMinor(args[m + 1] || '1.17');
  if (!versions.length) {
    process.stderr.write('usage: fetch-ort.js VERSION... | --minors 1.17\n');
    process.exit(1);
  }
  let failed = 0;
  for (const v of versions) {
    try {
      process.stdout.write(`${v} ${ortLibrary(v)}\n`);
    } catch (e) {
      failed++;
      process.stderr.write(`fetch-ort: ${v}: ${e.message}\n`);
    }
  }
  process.exit(failed ? 1 : 0);
}

if (require.main === module) main();
module.exports = { ortLibrary, newestPerMinor, releasedVersions };
