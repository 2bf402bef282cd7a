// A PNG grid of decoded images (one row per tensor), written atomically.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type * as ort from 'onnxruntime-node';
import { PNG } from 'pngjs';
import { writeFileAtomic } from '../files/temp';

/** Rows of images [B, 3, H, W] in [-1, 1] (one row per tensor: dense above MoE), 2 px white gaps. */
export function writeImageGrid(file: string, rows: ort.Tensor[]): void {
  const [B, C, H, W] = rows[0].dims;
  const gap = 2;
  const width = B * W + (B + 1) * gap, height = rows.length * H + (rows.length + 1) * gap;
  const png = new PNG({ width, height });
  png.data.fill(255);
  rows.forEach((t, r) => {
    const d = t.data as Float32Array;
    for (let b = 0; b < B; b++)
      for (let y = 0; y < H; y++)
        for (let x = 0; x < W; x++) {
          const o = ((gap + r * (H + gap) + y) * width + gap + b * (W + gap) + x) * 4;
          for (let c = 0; c < 3; c++) {
            const v = d[((b * C + Math.min(c, C - 1)) * H + y) * W + x];
            png.data[o + c] = Math.max(0, Math.min(255, Math.round((v + 1) * 127.5)));
          }
          png.data[o + 3] = 255;
        }
  });
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
  writeFileAtomic(file, PNG.sync.write(png));
}
