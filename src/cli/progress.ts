// Progress on a terminal's stderr (nothing when stderr is not a terminal, or with --quiet/--json): one cli-progress
// bar per stage, counting what the stage counts (samples, layers) against the total it reports, with an ETA.
import * as cliProgress from 'cli-progress';
import type { ProgressUi } from '../pipeline';

export interface Bar {
  tick(done: number, total?: number): void;
  stop(): void;
}

const none: Bar = { tick: () => {}, stop: () => {} };

/** Bars drawing now: a bar hides the cursor and turns line wrap off until it stops. */
const live = new Set<cliProgress.SingleBar>();

/** Stops every bar still drawing (on an error or a signal), which shows the cursor and turns line wrap back on. */
export function stopAllBars(): void {
  for (const b of [...live]) {
    b.stop();
    live.delete(b);
  }
}

export function progressBar(name: string, total: number, unit: string, enabled = !!process.stderr.isTTY): Bar {
  if (!enabled) return none;
  const bar = new cliProgress.SingleBar(
    { format: `${name.padEnd(10)} [{bar}] {value}/{total} ${unit} | {duration_formatted} elapsed, ETA {eta_formatted}`, stream: process.stderr, clearOnComplete: true, hideCursor: true, etaBuffer: 20 },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    tick(done, t) {
      if (!started) {
        bar.start(t ?? total, 0);
        live.add(bar);
        started = true;
      }
      if (t !== undefined && t !== bar.getTotal()) bar.setTotal(t);
      bar.update(done);
    },
    stop() {
      if (started && live.delete(bar)) bar.stop();
    },
  };
}

/** The callback form eval's stages take: (done, total) samples. */
export function progressCallback(name: string, enabled = !!process.stderr.isTTY): ((done: number, total: number) => void) | undefined {
  if (!enabled) return undefined;
  const bar = progressBar(name, 1, 'samples');
  return (done, total) => {
    bar.tick(done, total);
    if (done >= total) bar.stop();
  };
}

const UNITS: Record<string, string> = { capture: 'samples', cluster: 'layers', routers: 'layers' };

/** The conversion's UI: bars on stderr, stage lines on stdout (stderr with --json), warnings on stderr. */
export function conversionUi(o: { quiet?: boolean; json?: boolean }): ProgressUi {
  const bars = !o.quiet && !o.json && !!process.stderr.isTTY;
  return {
    stage(name, total) {
      const b = progressBar(name, total, UNITS[name] ?? 'steps', bars && name in UNITS);
      return { tick: (d, t) => b.tick(d, t), stop: () => b.stop() };
    },
    log: (line) => {
      if (!o.quiet) (o.json ? process.stderr : process.stdout).write(line + '\n');
    },
    warn: (line) => process.stderr.write(`moefy: warning: ${line}\n`),
  };
}
