// Where moefy's own files are (built native parts beside the sources): the folder holding its package.json.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { MoefyError } from '../errors';

let rootCache: string | undefined;

/** The moefy package root (the folder holding its package.json). */
export function packageRoot(): string {
  if (rootCache) return rootCache;
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'moefy') return (rootCache = dir);
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new MoefyError('cannot find the moefy package root');
    dir = up;
  }
}
