#!/usr/bin/env node
// Builds moefy's native parts: kernels/build/libmoefy_ops.so (CMake), the runtime addon and the calibration's
// float64 solver addon (node-gyp: src/runtime/addon, src/calib/native).
//
// Dependencies come from the system when installed, otherwise from Debian packages fetched into .cache/ with
// `apt-get download` under a private sources list and state directory (nothing on the system changes):
//   - ONNX Runtime C API headers: libonnxruntime-dev (trixie, 1.21) -> .cache/ort-headers/
//   - OpenBLAS (static, pthread variant):  libopenblas-pthread-dev (host release) -> .cache/openblas/
// Environment overrides: MOEFY_ORT_INCLUDE_DIR, MOEFY_BLAS_INCLUDE_DIR + MOEFY_BLAS_LIBRARY, MOEFY_NATIVE=1
// (generic code built with -march=native: not portable; the default build runs on any x86-64 and picks its
// AVX2/AVX-512 micro-kernels at run time), MOEFY_SKIP_ADDON=1, MOEFY_BUILD_JOBS.
// Incremental: fetched packages stay in .cache/, CMake and make rebuild only what changed.
'use strict';
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const ROOT = path.resolve(__dirname, '..');
const CACHE = path.join(ROOT, '.cache');
const KERNELS = path.join(ROOT, 'kernels');
const KBUILD = path.join(KERNELS, 'build');
const ADDON = path.join(ROOT, 'src', 'runtime', 'addon');
const LINALG = path.join(ROOT, 'src', 'calib', 'native');
const ARCHIVE_KEYRING = '/usr/share/keyrings/debian-archive-keyring.gpg';

class BuildError extends Error {}

function log(msg) {
  process.stdout.write(`[moefy native] ${msg}\n`);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { stdio: opts.quiet ? 'pipe' : 'inherit', encoding: 'utf8', ...opts });
  if (r.error) throw new BuildError(`${cmd} could not start: ${r.error.message}`);
  if (r.status !== 0) {
    const tail = opts.quiet ? `\n${(r.stdout || '').slice(-2000)}${(r.stderr || '').slice(-2000)}` : '';
    throw new BuildError(`${cmd} ${args.slice(0, 3).join(' ')} ... failed (exit ${r.status})${tail}`);
  }
  return r.stdout || '';
}

function which(cmd) {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
}

function multiarch() {
  const r = spawnSync('gcc', ['-print-multiarch'], { encoding: 'utf8' });
  const m = r.status === 0 ? r.stdout.trim() : '';
  return m || (process.arch === 'arm64' ? 'aarch64-linux-gnu' : 'x86_64-linux-gnu');
}

function hostCodename() {
  try {
    const t = fs.readFileSync('/etc/os-release', 'utf8');
    const m = /^VERSION_CODENAME=(.*)$/m.exec(t);
    if (m && m[1].trim()) return m[1].trim().replace(/"/g, '');
  } catch {
    /* fall through */
  }
  return 'bookworm';
}

/** Downloads Debian packages (no dependencies) for `suite` and unpacks them under `dir/root`. */
function aptFetch(dir, suite, packages) {
  if (!which('apt-get') || !which('dpkg-deb')) {
    throw new BuildError(`cannot fetch ${packages.join(', ')}: apt-get/dpkg-deb not available (install them or set the MOEFY_* paths)`);
  }
  const D = path.join(dir, 'apt');
  for (const sub of ['lists/partial', 'cache/archives/partial', 'debs']) fs.mkdirSync(path.join(D, sub), { recursive: true });
  const signed = fs.existsSync(ARCHIVE_KEYRING) ? `[signed-by=${ARCHIVE_KEYRING}] ` : '';
  fs.writeFileSync(path.join(D, 'sources.list'), `deb ${signed}http://deb.debian.org/debian ${suite} main\n`);
  const opts = [
    '-o', `Dir::Etc::sourcelist=${path.join(D, 'sources.list')}`,
    '-o', 'Dir::Etc::sourceparts=-',
    '-o', `Dir::State::Lists=${path.join(D, 'lists')}`,
    '-o', `Dir::Cache=${path.join(D, 'cache')}`,
    '-o', 'Debug::NoLocking=1',
    '-o', 'APT::Sandbox::User=root',
  ];
  if (process.getuid && process.getuid() !== 0) opts.pop(), opts.pop();
  log(`fetching ${packages.join(', ')} (Debian ${suite}) into ${path.relative(ROOT, dir)}/`);
  run('apt-get', [...opts, '-qq', 'update'], { quiet: true });
  const debs = path.join(D, 'debs');
  for (const f of fs.readdirSync(debs)) fs.rmSync(path.join(debs, f));
  run('apt-get', [...opts, '-qq', 'download', ...packages], { quiet: true, cwd: debs });
  const root = path.join(dir, 'root');
  fs.rmSync(root, { recursive: true, force: true });
  fs.mkdirSync(root, { recursive: true });
  for (const f of fs.readdirSync(debs)) if (f.endsWith('.deb')) run('dpkg-deb', ['-x', path.join(debs, f), root], { quiet: true });
  return root;
}

function findOrtHeaders() {
  const env = process.env.MOEFY_ORT_INCLUDE_DIR;
  if (env) {
    if (!fs.existsSync(path.join(env, 'onnxruntime_c_api.h'))) throw new BuildError(`MOEFY_ORT_INCLUDE_DIR=${env} has no onnxruntime_c_api.h`);
    return env;
  }
  if (which('pkg-config')) {
    const r = spawnSync('pkg-config', ['--cflags-only-I', 'libonnxruntime'], { encoding: 'utf8' });
    if (r.status === 0) {
      for (const flag of r.stdout.trim().split(/\s+/)) {
        const d = flag.replace(/^-I/, '');
        for (const c of [d, path.join(d, 'onnxruntime')]) if (c && fs.existsSync(path.join(c, 'onnxruntime_c_api.h'))) return c;
      }
    }
  }
  for (const c of ['/usr/include/onnxruntime', '/usr/local/include/onnxruntime']) {
    if (fs.existsSync(path.join(c, 'onnxruntime_c_api.h'))) return c;
  }
  const dir = path.join(CACHE, 'ort-headers');
  const inc = path.join(dir, 'root', 'usr', 'include', 'onnxruntime');
  if (fs.existsSync(path.join(inc, 'onnxruntime_c_api.h'))) return inc;
  aptFetch(dir, 'trixie', ['libonnxruntime-dev']);
  if (!fs.existsSync(path.join(inc, 'onnxruntime_c_api.h'))) throw new BuildError('libonnxruntime-dev did not provide onnxruntime_c_api.h');
  return inc;
}

function findOpenBlas() {
  const envInc = process.env.MOEFY_BLAS_INCLUDE_DIR;
  const envLib = process.env.MOEFY_BLAS_LIBRARY;
  if (envInc && envLib) return { inc: envInc, lib: envLib };
  const ma = multiarch();
  const sysInc = `/usr/include/${ma}/openblas-pthread`;
  const sysLib = `/usr/lib/${ma}/openblas-pthread/libopenblas.a`;
  if (fs.existsSync(path.join(sysInc, 'cblas.h')) && fs.existsSync(sysLib)) return { inc: sysInc, lib: sysLib };
  const dir = path.join(CACHE, 'openblas');
  const inc = path.join(dir, 'root', 'usr', 'include', ma, 'openblas-pthread');
  const lib = path.join(dir, 'root', 'usr', 'lib', ma, 'openblas-pthread', 'libopenblas.a');
  if (fs.existsSync(path.join(inc, 'cblas.h')) && fs.existsSync(lib)) return { inc, lib };
  aptFetch(dir, hostCodename(), ['libopenblas-pthread-dev']);
  if (!fs.existsSync(path.join(inc, 'cblas.h')) || !fs.existsSync(lib)) throw new BuildError('libopenblas-pthread-dev did not provide cblas.h and libopenblas.a');
  return { inc, lib };
}

function jobs() {
  const j = Number(process.env.MOEFY_BUILD_JOBS);
  return String(j > 0 ? j : Math.max(1, (os.availableParallelism ? os.availableParallelism() : os.cpus().length)));
}

function buildKernels(ortInc, blas) {
  if (!which('cmake')) throw new BuildError('cmake is not installed');
  const args = [
    '-S', KERNELS, '-B', KBUILD,
    '-DCMAKE_BUILD_TYPE=Release',
    `-DMOEFY_ORT_INCLUDE_DIR=${ortInc}`,
    `-DMOEFY_BLAS_INCLUDE_DIR=${blas.inc}`,
    `-DMOEFY_BLAS_LIBRARY=${blas.lib}`,
    `-DMOEFY_NATIVE=${process.env.MOEFY_NATIVE === '1' ? 'ON' : 'OFF'}`,
  ];
  run('cmake', args, { quiet: true });
  run('cmake', ['--build', KBUILD, '-j', jobs()], { quiet: true });
  const so = path.join(KBUILD, 'libmoefy_ops.so');
  if (!fs.existsSync(so)) throw new BuildError(`the kernel build did not produce ${so}`);
  return so;
}

/** node-gyp configure (when its inputs changed) and build in `dir`; returns build/Release/<target>.node. */
function buildGyp(dir, target, vars) {
  let gyp;
  try {
    gyp = require.resolve('node-gyp/bin/node-gyp.js', { paths: [ROOT] });
  } catch {
    throw new BuildError('node-gyp is not installed (npm install)');
  }
  const env = { ...process.env, ...vars, JOBS: jobs() };
  const nodedir = path.dirname(path.dirname(process.execPath));
  const extra = fs.existsSync(path.join(nodedir, 'include', 'node', 'node_api.h')) ? [`--nodedir=${nodedir}`] : [];
  const stamp = path.join(dir, 'build', 'moefy-config.json');
  const want = JSON.stringify({ ...vars, node: process.version, extra });
  const configured = fs.existsSync(path.join(dir, 'build', 'Makefile')) && fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') === want;
  if (!configured) run(process.execPath, [gyp, 'configure', ...extra], { cwd: dir, env, quiet: true });
  run(process.execPath, [gyp, 'build', ...extra], { cwd: dir, env, quiet: true });
  fs.writeFileSync(stamp, want);
  const node = path.join(dir, 'build', 'Release', `${target}.node`);
  if (!fs.existsSync(node)) throw new BuildError(`the addon build did not produce ${node}`);
  return node;
}

function buildAddon(ortInc) {
  return buildGyp(ADDON, 'moefy_runtime', { MOEFY_ORT_INCLUDE_DIR: ortInc });
}

/** The calibration's float64 solver (OpenBLAS/LAPACK linked statically). */
function buildLinalg(blas) {
  return buildGyp(LINALG, 'moefy_linalg', { MOEFY_BLAS_LIBRARY: blas.lib });
}

function main() {
  const t0 = Date.now();
  let step = 'ONNX Runtime headers';
  try {
    const ortInc = findOrtHeaders();
    step = 'OpenBLAS';
    const blas = findOpenBlas();
    step = 'CPU kernel (kernels/ -> libmoefy_ops.so)';
    const so = buildKernels(ortInc, blas);
    let addon = '(skipped)';
    if (process.env.MOEFY_SKIP_ADDON !== '1') {
      step = 'runtime addon (src/runtime/addon)';
      addon = path.relative(ROOT, buildAddon(ortInc));
      step = 'calibration solver addon (src/calib/native)';
      addon += ', ' + path.relative(ROOT, buildLinalg(blas));
    }
    log(`built ${path.relative(ROOT, so)} and ${addon} in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  } catch (e) {
    const msg = e instanceof BuildError ? e.message : e && e.stack ? e.stack : String(e);
    process.stderr.write(`[moefy native] FAILED: cannot build the ${step}: ${msg}\n`);
    process.exit(1);
  }
}

if (require.main === module) main();
module.exports = { findOrtHeaders, findOpenBlas };
