// Terminal rendering of eval reports.
import { human, pct, table } from '../format';
import type { EvalReport } from './teacher';

const f = (x: number | null, d = 4) => (x === null || Number.isNaN(x) ? '-' : x.toFixed(d));

export function printEval(r: EvalReport): string {
  const out: string[] = [];
  out.push(`dense ${r.dense}  vs  MoE ${r.moe}  on ${r.samples} samples${r.inputs ? ` of ${r.inputs}` : ''}${r.groundTruth ? '' : ' (no ground truth: CE not measured)'}`);
  if (r.thresholds) out.push(`thresholds ${r.thresholds.map((t) => t.toFixed(3)).join(',')}${r.fromScale ? `, MoE from scale ${r.fromScale}` : ''}`);
  const headers = ['scale', 'patch', 'thr', 'KL', 'top-1', 'CE dense', 'CE MoE', 'ΔCE', 'FFN rel err (per layer)', 'experts', 'active', 'FFN dense', 'FFN MoE', 'FFN %', 'total %'];
  const rows = r.scales.map((s) => [
    s.scale, `${s.patch}x${s.patch}`, s.threshold === null ? '-' : s.threshold.toFixed(3), f(s.kl, 5), pct(s.top1), f(s.ceDense), f(s.ceMoe), f(s.ceIncrease),
    s.ffnRelErr.map((e) => e.toFixed(3)).join(' '),
    s.activeExperts === null ? '-' : `${s.activeExperts.toFixed(2)}/${s.activeExpertsDense}`, pct(s.activeFraction),
    human(s.ffnFlopsDense), human(s.ffnFlopsMoe), pct(s.ffnFlopsMoe / s.ffnFlopsDense), pct(s.flopsMoe / s.flopsDense),
  ]);
  out.push(table(headers, rows));
  const line = (name: string, t: EvalReport['totals']) =>
    `${name}: KL ${f(t.kl, 5)}, top-1 ${pct(t.top1)}${t.ceIncrease !== null ? `, CE ${f(t.ceDense)} → ${f(t.ceMoe)} (${t.ceIncrease >= 0 ? '+' : ''}${f(t.ceIncrease)} nats)` : ''}, active ${pct(t.activeFraction)}, FFN FLOPs ${human(t.ffnFlopsDense)} → ${human(t.ffnFlopsMoe)} (${pct(t.ffnFlopsMoe / t.ffnFlopsDense)}), total ${human(t.flopsDense)} → ${human(t.flopsMoe)} (${pct(t.flopsMoe / t.flopsDense)}) per sample`;
  const rep = r.scales.filter((s) => s.moe && s.activeFractionDenseStream !== null);
  if (rep.length) out.push(`routers replayed on the dense model's FFN inputs (the conversion report's estimate): active ${rep.map((s) => `${s.scale}: ${pct(s.activeFractionDenseStream!)}`).join(', ')}; FFN MoE ${rep.map((s) => human(s.ffnFlopsMoeDenseStream!)).join(', ')}`);
  out.push(line('all scales', r.totals));
  if (r.moeScales.scales.length) out.push(line(`MoE scales ${r.moeScales.scales.join(',')}`, r.moeScales));
  return out.join('\n');
}
