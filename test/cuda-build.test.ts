// The CUDA DynamicMoE kernel and its standalone checker compile for sm_80 and sm_90 wherever nvcc is installed
// (no GPU needed). Running them needs a GPU: `bash kernels/cuda/gpu-check.sh` (see kernels/cuda/README.md).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(__dirname, '..', '..'); // dist/test -> repository root
const cudaDir = join(root, 'kernels', 'cuda');

function findNvcc(): string | null {
  const candidates = [process.env.NVCC, 'nvcc', '/usr/local/cuda/bin/nvcc'].filter(
    (c): c is string => typeof c === 'string' && c.length > 0,
  );
  for (const c of candidates) {
    const r = spawnSync(c, ['--version'], { encoding: 'utf8' });
    if (!r.error && r.status === 0) return c;
  }
  return null;
}

test('kernels/cuda/moe_check.cu and the kernel compile and link for sm_80 and sm_90', { timeout: 300_000 }, (t) => {
  const nvcc = findNvcc();
  if (nvcc === null) {
    t.skip('nvcc not found');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'moefy-cuda-'));
  try {
    const out = join(dir, 'moe_check');
    const r = spawnSync(
      nvcc,
      [
        '-O3',
        '-std=c++17',
        '-gencode', 'arch=compute_80,code=sm_80',
        '-gencode', 'arch=compute_90,code=sm_90',
        '-t', '2',
        join(cudaDir, 'moe_check.cu'),
        join(cudaDir, 'dynamic_moe_cuda.cu'),
        '-ldl',
        '-o', out,
      ],
      { encoding: 'utf8', timeout: 280_000 },
    );
    assert.equal(r.error, undefined, `nvcc could not run: ${r.error}`);
    assert.equal(r.status, 0, `nvcc failed (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
    assert.ok(existsSync(out) && statSync(out).size > 0, 'nvcc produced no executable');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kernels/cuda/register_cuda.cc compiles with nvcc (as CUDA) with the shared attribute header', { timeout: 300_000 }, (t) => {
  const nvcc = findNvcc();
  if (nvcc === null) {
    t.skip('nvcc not found');
    return;
  }
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { findOrtHeaders } = require(join(root, 'scripts', 'build-native.js')) as { findOrtHeaders(): string };
  const dir = mkdtempSync(join(tmpdir(), 'moefy-cuda-reg-'));
  try {
    const out = join(dir, 'register_cuda.o');
    const r = spawnSync(
      nvcc,
      ['-std=c++17', '-O2', '-c', '-x', 'cu', join(cudaDir, 'register_cuda.cc'), `-I${join(root, 'kernels', 'src')}`, `-I${cudaDir}`, `-I${findOrtHeaders()}`, '-o', out],
      { encoding: 'utf8', timeout: 280_000 },
    );
    assert.equal(r.status, 0, `nvcc failed (status ${r.status}):\n${r.stdout}\n${r.stderr}`);
    assert.ok(existsSync(out) && statSync(out).size > 0, 'nvcc produced no object');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
