// Warnings a converted model earns, from its report's numbers: it costs more than the dense model (per scale, or in
// total), or replacing its activation changed the FFN outputs enough that quality drops without fine-tuning.
import type { ActivationKind } from '../op';

/** FFN output change (relative L2 on the calibration data) above which the conversion warns. */
export const ACTIVATION_CHANGE_WARN = 0.1;

const pct = (x: number) => `${(100 * x).toFixed(1)}%`;

/** Runs of consecutive scales with the same printed value: "1–7: 101.6%, 10: 100.4%". */
function runs(items: { scale: number; text: string }[]): string {
  const out: string[] = [];
  for (let i = 0; i < items.length; ) {
    let j = i;
    while (j + 1 < items.length && items[j + 1].scale === items[j].scale + 1 && items[j + 1].text === items[i].text) j++;
    out.push(`${items[i].scale}${j > i ? `–${items[j].scale}` : ''}: ${items[i].text}`);
    i = j + 1;
  }
  return out.join(', ');
}

/** Warnings when the converted model costs more than the dense one: per scale, and in total (FFN and whole model). */
export function costWarnings(
  scales: { scale: number; moe: boolean; ffnFlopsDense: number; ffnFlopsMoe: number }[],
  totals: { ffnFlopsDense: number; ffnFlopsMoe: number; flopsDense: number; flopsMoe: number },
): string[] {
  const w: string[] = [];
  const over = scales.filter((s) => s.ffnFlopsMoe > s.ffnFlopsDense * (1 + 1e-9));
  if (over.length) {
    const dense = over.filter((s) => !s.moe).length;
    w.push(
      `the MoE model's FFNs cost more than the dense model's on scale${over.length > 1 ? 's' : ''} ${runs(over.map((s) => ({ scale: s.scale, text: pct(s.ffnFlopsMoe / s.ffnFlopsDense) })))} of the dense FFN FLOPs (routers included` +
        `${dense ? '; the routers run on every token, also on the scales before --from-scale' : ''})`,
    );
  }
  if (totals.ffnFlopsMoe > totals.ffnFlopsDense * (1 + 1e-9))
    w.push(`the converted model costs more than the dense one in total: FFN FLOPs ${pct(totals.ffnFlopsMoe / totals.ffnFlopsDense)} of dense, whole model ${pct(totals.flopsMoe / totals.flopsDense)} per sample; fewer experts per token (a lower --budget, more --experts) or a later --from-scale spend less`);
  return w;
}

/** A warning when replacing the model's activation changes the FFN outputs by more than 10% on the calibration data. */
export function activationChangeWarning(changes: (number | null)[], original: ActivationKind[], experts: ActivationKind[]): string | null {
  const big = changes.map((c, k) => ({ c, k })).filter((x) => x.c !== null && x.c > ACTIVATION_CHANGE_WARN);
  if (!big.length) return null;
  const lo = Math.min(...big.map((x) => x.c!)), hi = Math.max(...big.map((x) => x.c!));
  const from = [...new Set(big.map((x) => original[x.k]))].join('/'), to = [...new Set(big.map((x) => experts[x.k]))].join('/');
  return `the experts' ${to} instead of the model's ${from} changes the FFN outputs by ${pct(lo)}${hi > lo ? `–${pct(hi)}` : ''} on the calibration data (layer${big.length > 1 ? 's' : ''} ${big.map((x) => x.k).join(', ')}): quality will drop without fine-tuning; --activation keep converts without changing it`;
}
