// Terminal formatting, shared by the CLI and eval: plain-text tables, human-readable numbers.
export function table(headers: string[], rows: (string | number)[][]): string {
  const cells = [headers, ...rows.map((r) => r.map(String))];
  const w = headers.map((_, k) => Math.max(...cells.map((r) => (r[k] ?? '').length)));
  const line = (r: string[]) => r.map((c, k) => (k === 0 ? c.padEnd(w[k]) : c.padStart(w[k]))).join('  ');
  return [line(cells[0]), w.map((x) => '-'.repeat(x)).join('  '), ...cells.slice(1).map(line)].join('\n');
}

export function human(n: number): string {
  const units: [number, string][] = [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'K']];
  for (const [v, u] of units) if (Math.abs(n) >= v) return `${(n / v).toFixed(2)}${u}`;
  return String(Math.round(n * 100) / 100);
}

export function bytes(n: number): string {
  const units: [number, string][] = [[2 ** 30, 'GiB'], [2 ** 20, 'MiB'], [2 ** 10, 'KiB']];
  for (const [v, u] of units) if (n >= v) return `${(n / v).toFixed(2)} ${u}`;
  return `${n} B`;
}

export function pct(x: number): string {
  return `${(x * 100).toFixed(1)}%`;
}

/**
 * Thresholds of very sparse models sit near 1e-5: print those in exponent form. Rounded through float32, the type the
 * model stores them in, so that the conversion's 0.5675 and the model's 0.56749999 print alike.
 */
export function formatThreshold(t: number): string {
  const f = Math.fround(t);
  return f === 0 ? '0' : f < 1e-3 ? f.toExponential(1) : f.toFixed(3);
}

/** "scale 10" or "scales 8…10" (a step graph holds one scale). */
export function scaleRange(first: number, last: number): string {
  return first === last ? `scale ${first}` : `scales ${first}…${last}`;
}

/**
 * An ONNX Runtime error as one line for the user: its C++ source locations and function signatures
 * (`…/model.cc:187 onnxruntime::Model::Model(onnx::ModelProto&&, …)`) dropped, line breaks and colour codes gone.
 */
export function ortMessage(s: string): string {
  return s
    .replace(/\x1b\[[0-9;]*m/g, '')
    .replace(/(?:\/[\w.-]+)*\/?[\w-]+\.(?:cc|cpp|h):\d+(?:\s+[\w:~<>*&]+\([^()]*\)(?:\s*const)?)?\s*/g, '')
    .replace(/\s*\n\s*/g, ' ')
    .trim();
}
