// The CUDA DynamicMoE kernels, run on a CPU emulator of the CUDA subset they use (kernels/cuda/emu/cuda_emu.h):
// routing, scans, scatter, tile lists, both grouped GEMMs (fp32 FMA tiles and fp16 WMMA tiles), scalar and vector
// loaders and epilogues, against the host reference, under three thread schedules. Needs only g++; the real-GPU
// check is `bash kernels/cuda/gpu-check.sh`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const root = resolve(__dirname, '..', '..'); // dist/test -> repository root
const cudaDir = join(root, 'kernels', 'cuda');

function haveGxx(): boolean {
  const r = spawnSync('g++', ['--version'], { encoding: 'utf8' });
  return !r.error && r.status === 0;
}

function buildAndRun(dir: string, name: string, defines: string[], args: string[]): string {
  const exe = join(dir, name);
  const b = spawnSync(
    'g++',
    [
      '-std=c++17', '-O2', '-w', '-DMOEFY_CUDA_EMULATE', ...defines,
      '-I', cudaDir,
      '-x', 'c++', join(cudaDir, 'dynamic_moe_cuda.cu'),
      '-x', 'none', join(cudaDir, 'emu', 'emu_check.cc'),
      '-o', exe,
    ],
    { encoding: 'utf8', timeout: 240_000 },
  );
  assert.equal(b.status, 0, `g++ failed:\n${b.stdout}\n${b.stderr}`);
  const r = spawnSync(exe, args, { encoding: 'utf8', timeout: 240_000 });
  assert.equal(r.status, 0, `${name} failed (status ${r.status}, signal ${r.signal}):\n${r.stdout}\n${r.stderr}`);
  assert.match(r.stdout, /\d+ passed, 0 failed/);
  return r.stdout;
}

test('CUDA DynamicMoE kernels match the reference on the CPU emulator (3 schedules, fp32 and fp16)', { timeout: 300_000 }, (t) => {
  if (!haveGxx()) {
    t.skip('g++ not found');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'moefy-cuda-emu-'));
  try {
    buildAndRun(dir, 'emu_check', [], []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('CUDA DynamicMoE sm_90 float4-atomic epilogue matches the reference on the CPU emulator', { timeout: 300_000 }, (t) => {
  if (!haveGxx()) {
    t.skip('g++ not found');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'moefy-cuda-emu-'));
  try {
    buildAndRun(dir, 'emu_check_v4', ['-DMOEFY_EMU_VECTOR_ATOMICS'], ['--quick']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
