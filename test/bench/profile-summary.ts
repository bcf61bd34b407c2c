import fs from 'node:fs';
import { z } from 'zod';

/**
 * Summarise a V8 .cpuprofile (from `npm run bench -- --profile-workers <dir>`): self time grouped by
 * package or source file, so the report can say where a worker's CPU goes.
 * Usage: npx tsx test/bench/profile-summary.ts <file.cpuprofile> [top]
 */

const profileSchema = z.object({
  nodes: z.array(
    z.object({
      id: z.number(),
      callFrame: z.object({ functionName: z.string(), url: z.string() }),
    }),
  ),
  samples: z.array(z.number()),
  timeDeltas: z.array(z.number()),
});

/** `node_modules/@aws-sdk/client-s3/...` → `@aws-sdk/client-s3`; repo files by path; built-ins by kind. */
function bucketOf(url: string, fn: string): string {
  if (!url) return fn.startsWith('(') ? fn : '(native/builtin)';
  const nm = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (nm?.[1]) return nm[1];
  if (url.startsWith('node:')) return url;
  const repo = /\/work\/main\/(.+)$/.exec(url.replace(/^file:\/\//, ''));
  return repo?.[1] ?? url;
}

export function summarise(file: string, top = 15): Array<{ where: string; ms: number; share: number }> {
  const p = profileSchema.parse(JSON.parse(fs.readFileSync(file, 'utf8')));
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const totals = new Map<string, number>();
  p.samples.forEach((id, i) => {
    const n = byId.get(id);
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    if (!n || n.callFrame.functionName === '(idle)') return;
    const where = bucketOf(n.callFrame.url, n.callFrame.functionName);
    totals.set(where, (totals.get(where) ?? 0) + dt);
  });
  const busy = [...totals.values()].reduce((a, b) => a + b, 0);
  return [...totals.entries()]
    .map(([where, ms]) => ({ where, ms: Math.round(ms), share: Math.round((1000 * ms) / busy) / 10 }))
    .sort((a, b) => b.ms - a.ms)
    .slice(0, top);
}

if (require.main === module) {
  const [file, top] = process.argv.slice(2);
  if (!file) {
    console.error('usage: profile-summary.ts <file.cpuprofile> [top]');
    process.exit(2);
  }
  for (const r of summarise(file, top ? Number(top) : 15)) console.log(`${String(r.share).padStart(5)}%  ${String(r.ms).padStart(7)} ms  ${r.where}`);
}
