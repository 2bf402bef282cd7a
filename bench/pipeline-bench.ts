/**
 * Time of each conversion stage for a VAR-d16-sized model (16 blocks, D 1024, H 4096, V 4096) on 64 calibration
 * samples (synthetic teacher-forcing inputs; random weights, so router fit numbers mean nothing here).
 *
 *   node dist/bench/pipeline-bench.js [--samples 64] [--router-epochs N] [--experts 32] [--from-scale 8] [--depth 16]
 *                                     [--gelu] [--repair] [--repair-epochs N]
 *
 * --depth: fewer blocks for a quick proxy (stage times scale with the blocks; the CLI defaults otherwise).
 * --gelu: the FFNs use GELU (tanh), as the released VAR checkpoints; --repair / --repair-epochs as the CLI's.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { D16, generateInputs, generateVarD16Like } from '../fixtures/generate';
import { writeTensorSet } from '../src/io';
import { saveModel } from '../src/onnx/io';
import { CONVERT_DEFAULTS } from '../src/convert-options';
import { convert } from '../src/pipeline';

function arg(name: string, def: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : def;
}

async function main(): Promise<void> {
  const samples = Number(arg('samples', '64'));
  const epochs = Number(arg('router-epochs', String(CONVERT_DEFAULTS.routerEpochs)));
  const depth = Number(arg('depth', String(D16.depth)));
  const experts = Number(arg('experts', '32'));
  const fromScale = Number(arg('from-scale', '8'));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'moefy-pipeline-bench-'));
  try {
    const t0 = Date.now();
    const gelu = process.argv.includes('--gelu');
    const repair = process.argv.includes('--repair') ? true : undefined;
    const repairEpochs = process.argv.includes('--repair-epochs') ? Number(arg('repair-epochs', '0')) : undefined;
    const opts = { activation: gelu ? ('gelu_tanh_decomposed' as const) : ('relu' as const), depth };
    const model = generateVarD16Like(opts);
    const file = path.join(dir, 'var_d16.onnx');
    saveModel(model, file);
    const calib = path.join(dir, 'calib');
    await writeTensorSet(calib, generateInputs({ ...D16, ...opts }, samples, 7) as never);
    console.log(`VAR-d16-sized model (${(fs.statSync(file).size / 2 ** 30).toFixed(2)} GiB) and ${samples} calibration samples made in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    // CPU seconds of the whole process (all threads) per stage: steadier than wall time on a shared machine.
    const cpu = () => {
      const c = process.cpuUsage();
      return (c.user + c.system) / 1e6;
    };
    const rows: [string, number, number, string][] = [];
    let last = Date.now(), lastCpu = cpu();
    const cpu0 = lastCpu;
    const t1 = Date.now();
    await convert(file, {
      // The CLI's defaults (src/convert-options.ts) for everything not given on this command line.
      experts, fromScale, calib, routerEpochs: epochs, repair, repairEpochs, output: path.join(dir, 'var_d16.moe.onnx'),
    }, {
      stage: () => ({ tick: () => {}, stop: () => {} }),
      log: (line) => {
        const m = /^(\S+)\s+([\d.]+) s\s+(.*)$/.exec(line);
        if (!m) return;
        const c = cpu();
        rows.push([m[1], Number(m[2]), c - lastCpu, m[3]]);
        last = Date.now();
        lastCpu = c;
      },
    });
    const total = (Date.now() - t1) / 1000;
    console.log(`\nstage        seconds  CPU s  what`);
    for (const [name, s, c, what] of rows) console.log(`${name.padEnd(12)} ${s.toFixed(1).padStart(7)} ${c.toFixed(1).padStart(6)}  ${what}`);
    console.log(`${'total'.padEnd(12)} ${total.toFixed(1).padStart(7)} ${(cpu() - cpu0).toFixed(1).padStart(6)}  (including loading, analysis and saving: ${((Date.now() - last) / 1000).toFixed(1)} s after the last stage; load average ${os.loadavg().map((x) => x.toFixed(1)).join(' ')})`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
