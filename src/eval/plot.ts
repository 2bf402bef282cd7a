// PNG charts from Vega-Lite specs, pure npm: vega-lite compiles, vega renders SVG (no canvas), @resvg/resvg-js
// rasterises with DejaVu Sans from the dejavu-fonts-ttf package (a fresh machine may have no system fonts), and the
// result is centred on a white canvas of exactly the requested size (pngjs).
import * as path from 'node:path';
import { PNG } from 'pngjs';
import { MoefyError } from '../errors';

// vega and vega-lite are ES modules; TypeScript's CommonJS output would turn import() into require().
const esmImport = new Function('m', 'return import(m)') as (m: string) => Promise<any>; // eslint-disable-line @typescript-eslint/no-explicit-any

export function fontFiles(): string[] {
  const dir = path.join(path.dirname(require.resolve('dejavu-fonts-ttf/package.json')), 'ttf');
  return ['DejaVuSans.ttf', 'DejaVuSans-Bold.ttf'].map((f) => path.join(dir, f));
}

export async function vegaLiteToSvg(spec: object): Promise<string> {
  const vl = await esmImport('vega-lite');
  const vega = await esmImport('vega');
  const compiled = vl.compile({ config: { font: 'DejaVu Sans' }, ...spec }).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: 'none' });
  const svg: string = await view.toSVG();
  view.finalize();
  return svg;
}

/** Renders an SVG centred on a white width × height canvas (scaled down or up to fit, aspect kept). */
export function svgToPng(svg: string, width: number, height: number): Buffer {
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { Resvg } = require('@resvg/resvg-js') as typeof import('@resvg/resvg-js');
  const font = { fontFiles: fontFiles(), loadSystemFonts: false, defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' };
  const probe = new Resvg(svg, { font });
  const w0 = probe.width, h0 = probe.height;
  if (!(w0 > 0 && h0 > 0)) throw new MoefyError('plot: empty SVG');
  const zoom = Math.min(width / w0, height / h0);
  const r = new Resvg(svg, { font, background: 'white', fitTo: { mode: 'zoom', value: zoom } });
  const img = r.render();
  const src = PNG.sync.read(img.asPng());
  const out = new PNG({ width, height });
  out.data.fill(255);
  const ox = Math.max(0, Math.floor((width - src.width) / 2)), oy = Math.max(0, Math.floor((height - src.height) / 2));
  for (let y = 0; y < Math.min(src.height, height); y++) {
    for (let x = 0; x < Math.min(src.width, width); x++) {
      const si = (y * src.width + x) * 4, di = ((y + oy) * width + (x + ox)) * 4;
      if (y + oy >= height || x + ox >= width) continue;
      const al = src.data[si + 3] / 255;
      for (let c = 0; c < 3; c++) out.data[di + c] = Math.round(src.data[si + c] * al + 255 * (1 - al));
      out.data[di + 3] = 255;
    }
  }
  return PNG.sync.write(out);
}

export async function vegaLiteToPng(spec: object, width: number, height: number): Promise<Buffer> {
  return svgToPng(await vegaLiteToSvg(spec), width, height);
}
