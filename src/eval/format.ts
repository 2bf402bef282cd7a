// Terminal rendering of eval reports.
import { formatThreshold, human, pct, table } from '../format';
import type { EvalReport } from './teacher';

const f = (x: number | null, d = 4) => (x === null || Number.isNaN(x) ? '-' : x.toFixed(d));

export function printEval(r: EvalReport): string {
  const out: string[] = [];
  out.push(`dense ${r.dense}  vs  MoE ${r.moe}  on ${r.samples} samples${r.inputs ? ` of ${r.inputs}` : ''}`);
  if (!r.groundTruth) out.push('(no ground truth in the inputs: CE not measured)');
  if (r.thresholds) out.push(`thresholds ${r.thresholds.map(formatThreshold).join(',')}${r.fromScale ? `, MoE from scale ${r.fromScale}` : ''}`);
  // Two tables, each readable at 100 columns: quality, then cost. Per-layer FFN errors are in --json (a d16 model
  // has 16 layers): here their mean and worst.
  const thr = (s: EvalReport['scales'][number]) => (s.threshold === null ? '-' : formatThreshold(s.threshold));
  const errs = (e: number[]) => (e.length ? `${(e.reduce((a, x) => a + x, 0) / e.length).toFixed(3)} / ${Math.max(...e).toFixed(3)}` : '-');
  out.push(table(['scale', 'patch', 'thr', 'KL', 'top-1', 'CE dense', 'CE MoE', 'ΔCE', 'FFN err mean/max'], r.scales.map((s) => [
    s.scale, `${s.patch}x${s.patch}`, thr(s), f(s.kl, 5), pct(s.top1), f(s.ceDense), f(s.ceMoe), f(s.ceIncrease), errs(s.ffnRelErr),
  ])));
  out.push('');
  out.push(table(['scale', 'experts', 'active', 'FFN dense', 'FFN MoE+routers', 'FFN %', 'total %'], r.scales.map((s) => [
    s.scale, s.activeExperts === null ? '-' : `${s.activeExperts.toFixed(2)}/${s.activeExpertsDense}`, pct(s.activeFraction),
    human(s.ffnFlopsDense), human(s.ffnFlopsMoe), pct(s.ffnFlopsMoe / s.ffnFlopsDense), pct(s.flopsMoe / s.flopsDense),
  ])));
  const line = (name: string, t: EvalReport['totals']) =>
    `${name}: KL ${f(t.kl, 5)}, top-1 ${pct(t.top1)}${t.ceIncrease !== null ? `, CE ${f(t.ceDense)} → ${f(t.ceMoe)} (${t.ceIncrease >= 0 ? '+' : ''}${f(t.ceIncrease)} nats)` : ''}, active ${pct(t.activeFraction)}\n` +
    `  per sample: FFN FLOPs ${human(t.ffnFlopsDense)} → ${human(t.ffnFlopsMoe)} (${pct(t.ffnFlopsMoe / t.ffnFlopsDense)}), total ${human(t.flopsDense)} → ${human(t.flopsMoe)} (${pct(t.flopsMoe / t.flopsDense)})`;
  const rep = r.scales.filter((s) => s.moe && s.activeFractionDenseStream !== null);
  if (rep.length) {
    out.push(`routers replayed on the dense model's FFN inputs (the conversion report's estimate):`);
    out.push(`  active ${rep.map((s) => `${s.scale}: ${pct(s.activeFractionDenseStream!)}`).join(', ')}; FFN MoE ${rep.map((s) => human(s.ffnFlopsMoeDenseStream!)).join(', ')}`);
  }
  out.push(line('all scales', r.totals));
  if (r.moeScales.scales.length) out.push(line(`MoE scales ${r.moeScales.scales.join(',')}`, r.moeScales));
  return out.join('\n');
}
