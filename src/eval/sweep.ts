// Threshold sweeps of a converted model (no reconversion: `moe_threshold` is overridden per run), one curve per
// family: uniform (the same threshold on every scale), per-scale (the calibrated per-scale thresholds scaled by a
// factor, non-decreasing toward finer scales) and from-scale 7/8/9 (the same threshold from that scale on, zero
// before). Written as sweep.csv, sweep.json and sweep.png (quality against FFN FLOPs, as DMoE-VAR's figures 3, 4).
import * as path from 'node:path';
import { MoefyError } from '../errors';
import { human, pct, table } from '../format';
import type { TensorSet } from '../io';
import { THRESHOLD_INPUT } from '../op';
import { vegaLiteToPng } from './plot';
import type { EvalSide } from './side';
import { evaluate, EvalSummary } from './teacher';
import { writeFilesAtomic } from '../files/temp';

export const DEFAULT_GRID = [0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7];
export const SWEEP_PNG_SIZE = { width: 1200, height: 520 };

export interface SweepSetting {
  family: string;
  /** The family's parameter: the threshold (uniform, from-scale) or the factor on the calibrated thresholds. */
  setting: number;
  thresholds: number[];
}

export interface SweepRow extends SweepSetting {
  totals: EvalSummary;
  moeScales: EvalSummary & { scales: number[] };
}

export interface SweepReport {
  dense: string;
  moe: string;
  samples: number;
  groundTruth: boolean;
  rows: SweepRow[];
  files: { csv: string; png: string; json: string };
}

/** The settings of every family for a model with S scales, calibrated thresholds `cal` (may be null) and the given grid. */
export function sweepSettings(S: number, cal: number[] | null, grid: number[], fromScales = [7, 8, 9]): SweepSetting[] {
  const out: SweepSetting[] = [];
  const clamp = (x: number) => Math.min(1, Math.max(0, x));
  for (const t of grid) out.push({ family: 'uniform', setting: t, thresholds: Array(S).fill(clamp(t)) });
  // Per-scale: the calibrated shape (non-decreasing), scaled so that its mean over the MoE scales is the grid value.
  const moe = cal ? cal.map((x, s) => ({ x, s })).filter((e) => e.x > 0) : [];
  const mean = moe.length ? moe.reduce((a, e) => a + e.x, 0) / moe.length : 0;
  for (const t of grid) {
    let th: number[];
    if (moe.length) th = cal!.map((x) => clamp((t * x) / mean));
    else {
      // No calibrated shape: a ramp from 0.8·t to 1.2·t over the last three scales.
      const first = Math.max(0, S - 3);
      th = Array.from({ length: S }, (_, s) => (s < first ? 0 : clamp(t * (0.8 + (0.4 * (s - first)) / Math.max(1, S - 1 - first)))));
    }
    for (let s = 1; s < S; s++) if (th[s] < th[s - 1] && th[s] > 0) th[s] = th[s - 1];
    out.push({ family: 'per-scale', setting: t, thresholds: th });
  }
  for (const k of fromScales) {
    if (k > S) continue;
    for (const t of grid) out.push({ family: `from-scale ${k}`, setting: t, thresholds: Array.from({ length: S }, (_, s) => (s + 1 >= k ? clamp(t) : 0)) });
  }
  return out;
}

/** The grid's values are thresholds: in [0, 1], as --threshold's. */
export function checkGrid(grid: number[]): number[] {
  const bad = grid.find((t) => !(t >= 0 && t <= 1));
  if (bad !== undefined) throw new MoefyError(`--grid values must lie in [0, 1] (got ${bad})`);
  return grid;
}

export interface SweepOptions {
  dir: string;
  grid?: number[];
  batch?: number;
  limit?: number;
  names?: { dense?: string; moe?: string; inputs?: string };
  size?: { width: number; height: number };
  onProgress?: (done: number, total: number) => void;
}

const csvNum = (x: number | null) => (x === null || Number.isNaN(x) ? '' : String(+x.toPrecision(8)));

export function sweepCsv(rows: SweepRow[]): string {
  const head = ['family', 'setting', 'thresholds', 'ffn_flops_dense', 'ffn_flops_moe', 'ffn_fraction', 'flops_dense', 'flops_moe', 'active_fraction_moe_scales', 'kl', 'top1', 'ce_dense', 'ce_moe', 'ce_increase'];
  const lines = [head.join(',')];
  for (const r of rows) {
    const t = r.totals;
    lines.push([r.family, csvNum(r.setting), r.thresholds.map((x) => +x.toFixed(6)).join(';'), csvNum(t.ffnFlopsDense), csvNum(t.ffnFlopsMoe), csvNum(t.ffnFlopsMoe / t.ffnFlopsDense), csvNum(t.flopsDense), csvNum(t.flopsMoe), csvNum(r.moeScales.scales.length ? r.moeScales.activeFraction : 1), csvNum(t.kl), csvNum(t.top1), csvNum(t.ceDense), csvNum(t.ceMoe), csvNum(t.ceIncrease)].join(','));
  }
  return lines.join('\n') + '\n';
}

export function sweepSpec(rows: SweepRow[], groundTruth: boolean, title: string): object {
  const values = rows.map((r) => ({
    family: r.family, setting: r.setting, ffn: (100 * r.totals.ffnFlopsMoe) / r.totals.ffnFlopsDense,
    quality: groundTruth ? r.totals.ceIncrease : r.totals.kl, top1: 100 * r.totals.top1,
  }));
  const x = { field: 'ffn', type: 'quantitative', title: 'FFN FLOPs (% of dense)', scale: { zero: false } };
  const color = { field: 'family', type: 'nominal', title: 'family', legend: { orient: 'right' } };
  const chart = (field: string, ytitle: string) => ({
    width: 440, height: 360,
    mark: { type: 'line', point: true },
    encoding: { x, y: { field, type: 'quantitative', title: ytitle, scale: { zero: false } }, color, order: { field: 'ffn', type: 'quantitative' } },
  });
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
    background: 'white',
    title: { text: 'Quality against FFN FLOPs (teacher forcing)', subtitle: title },
    data: { values },
    hconcat: [chart('quality', groundTruth ? 'CE increase over dense (nats/token)' : 'KL(dense ‖ MoE) (nats/token)'), chart('top1', 'top-1 agreement with dense (%)')],
  };
}

export async function sweep(dense: EvalSide, moe: EvalSide, inputs: TensorSet, o: SweepOptions): Promise<SweepReport> {
  if (!moe.hasThresholdInput) throw new MoefyError(`${moe.file} has no '${THRESHOLD_INPUT}' input: --sweep needs a converted model`);
  const S = dense.structure.layout.patchNums.length;
  const settings = sweepSettings(S, moe.thresholdDefault, checkGrid(o.grid ?? DEFAULT_GRID));
  const res = await evaluate(dense, moe, inputs, { settings: settings.map((s) => s.thresholds), batch: o.batch, limit: o.limit, names: o.names, moeScalesBy: 'threshold', onProgress: o.onProgress });
  const rows: SweepRow[] = settings.map((s, k) => ({ ...s, totals: res.reports[k].totals, moeScales: res.reports[k].moeScales }));
  const files = { csv: path.join(o.dir, 'sweep.csv'), png: path.join(o.dir, 'sweep.png'), json: path.join(o.dir, 'sweep.json') };
  const r0 = res.reports[0];
  const report: SweepReport = { dense: r0.dense, moe: r0.moe, samples: r0.samples, groundTruth: r0.groundTruth, rows, files };
  const size = o.size ?? SWEEP_PNG_SIZE;
  const png = await vegaLiteToPng(sweepSpec(rows, r0.groundTruth, `${r0.moe} vs ${r0.dense}, ${r0.samples} samples${o.names?.inputs ? ` of ${o.names.inputs}` : ''}`), size.width, size.height);
  // The three files together or none (a full disk must not leave a csv without its plot).
  writeFilesAtomic(o.dir, [{ name: 'sweep.csv', data: sweepCsv(rows) }, { name: 'sweep.json', data: JSON.stringify(report, null, 2) + '\n' }, { name: 'sweep.png', data: png }]);
  return report;
}

export function printSweep(r: SweepReport): string {
  const rows = r.rows.map((x) => [x.family, x.setting.toFixed(3), x.thresholds.map((t) => t.toFixed(2)).join(','), pct(x.totals.ffnFlopsMoe / x.totals.ffnFlopsDense), human(x.totals.ffnFlopsMoe), x.totals.kl.toFixed(5), pct(x.totals.top1), x.totals.ceIncrease === null ? '-' : x.totals.ceIncrease.toFixed(4)]);
  return [table(['family', 'setting', 'thresholds', 'FFN %', 'FFN FLOPs', 'KL', 'top-1', 'ΔCE'], rows), `wrote ${r.files.csv}, ${r.files.png}, ${r.files.json}`].join('\n');
}
