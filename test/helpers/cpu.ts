// The kernel's CPU levels this machine can run (from /proc/cpuinfo, independent of the library's own cpuid check).
import * as fs from 'node:fs';

export type CpuLevel = 'plain' | 'avx2' | 'avx512';

export function cpuFlags(): Set<string> {
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    return new Set((line ?? '').split(':')[1]?.trim().split(/\s+/) ?? []);
  } catch {
    return new Set();
  }
}

export function cpuLevels(): CpuLevel[] {
  const f = cpuFlags();
  const out: CpuLevel[] = ['plain'];
  const avx2 = f.has('avx2') && f.has('fma') && f.has('f16c');
  if (avx2) out.push('avx2');
  if (avx2 && f.has('avx512f')) out.push('avx512');
  return out;
}
