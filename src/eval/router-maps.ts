// Router maps (DMoE-VAR's figure 12): for one sample, a pn×pn heat map per scale of the experts run per token (mean
// over the layers), with a colour legend.
import type { PatchLayout } from '../analysis/var-structure';
import { MoefyError } from '../errors';
import { vegaLiteToPng } from './plot';
import { writeFilesAtomic } from '../files/temp';

export const ROUTER_MAP_SIZE = { width: 640, height: 560 };

export interface RouterMapOptions {
  experts: (number | null)[];
  title?: string;
  sample?: number;
  thresholds?: number[] | null;
  size?: { width: number; height: number };
}

/** Mean over layers of the active count per token of scale `scale` (1-based): pn×pn row-major. */
export function scaleMap(maps: Int32Array[], layout: PatchLayout, scale: number): Float64Array {
  const s = scale - 1;
  const off = layout.offsets[s], n = layout.tokens[s];
  const out = new Float64Array(n);
  for (const m of maps) for (let i = 0; i < n; i++) out[i] += m[off + i] / maps.length;
  return out;
}

/** Throws unless every scale is one of the layout's (1-based), before the evaluation that the maps come from. */
export function checkMapScales(scales: number[], layout: PatchLayout): void {
  const S = layout.patchNums.length;
  const bad = scales.find((s) => !(Number.isInteger(s) && s >= 1 && s <= S));
  if (bad !== undefined) throw new MoefyError(`--map-scales: ${bad} is not a scale of the model (scales 1…${S})`);
}

/** The maps of `scales` as PNG files in `dir`, written together or not at all. */
export async function writeRouterMaps(dir: string, maps: Int32Array[], layout: PatchLayout, scales: number[], o: RouterMapOptions): Promise<string[]> {
  checkMapScales(scales, layout);
  const size = o.size ?? ROUTER_MAP_SIZE;
  const E = Math.max(...o.experts.filter((e): e is number => e !== null));
  const files: { name: string; data: Uint8Array }[] = [];
  for (const scale of scales) {
    const pn = layout.patchNums[scale - 1];
    const m = scaleMap(maps, layout, scale);
    const values = Array.from(m, (v, i) => ({ row: Math.floor(i / pn), col: i % pn, experts: Math.round(v * 100) / 100 }));
    const mean = m.reduce((a, x) => a + x, 0) / m.length;
    const thr = o.thresholds ? `, threshold ${o.thresholds[scale - 1].toFixed(3)}` : '';
    const spec = {
      $schema: 'https://vega.github.io/schema/vega-lite/v5.json',
      width: 420, height: 420, background: 'white',
      title: { text: `scale ${scale} (${pn}×${pn}): experts per token`, subtitle: `${o.title ?? ''} sample ${o.sample ?? 0}${thr}, mean ${mean.toFixed(2)} of ${E}` },
      data: { values },
      mark: { type: 'rect' },
      encoding: {
        x: { field: 'col', type: 'ordinal', title: 'column', axis: { labelAngle: 0, labelOverlap: true } },
        y: { field: 'row', type: 'ordinal', title: 'row', axis: { labelOverlap: true } },
        color: { field: 'experts', type: 'quantitative', title: ['experts', '(mean over', 'layers)'], scale: { domain: [0, E], scheme: 'viridis' }, legend: { gradientLength: 300 } },
      },
    };
    files.push({ name: `router_map_scale${scale}.png`, data: await vegaLiteToPng(spec, size.width, size.height) });
  }
  return writeFilesAtomic(dir, files);
}
