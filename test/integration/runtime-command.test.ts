import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { closeDb, db, getExperiment } from '../../core/db';
import { layout } from '../../core/s3';
import { GROUPING_PRESETS } from '../../core/grouping';
import { findFreePort } from '../../deploy/local/processes';
import pkg from '../../package.json';
import { submit } from '../../starter/submit';
import { generateSyntheticPlate } from '../fixtures/synthetic-plate';
import { requireStack, s3Keys, tempDir, uniqueName, waitForExperiment } from '../support/harness';
import { dockerfileCommands, manifestRoles, packAndInstall, startAsPid1, type Pid1Process } from '../support/image-runtime';
import { STACK_VARIABLES } from '../support/secure-stack';

/**
 * The image's runtime command, proven without a Docker engine: cpflow packed (`npm pack` →
 * `npm run build`: tsc and the workflow bundle) and installed with production dependencies only (no
 * tsx, no TypeScript), each role started with the Dockerfile's exact ENTRYPOINT + CMD (tini → node,
 * compiled JavaScript) as PID 1 of its own PID namespace, with only the settings a pod would get.
 * SIGTERM to the cellprofiler role's PID 1 while it analyses lets the running image sets finish
 * within the grace time; a replacement does the rest and no set runs twice. On the way: `npx cpflow`
 * from the tarball, health endpoints, cpflow's metrics, and OpenTelemetry spans at an OTLP endpoint.
 */
jest.setTimeout(900_000);

const GRACE_SECONDS = 60;
const dir = tempDir('runtime-command');
const started: Pid1Process[] = [];
let packageDir = '';
let appDir = '';
let collector: http.Server | undefined;
const spans: Array<{ name: string; traceId: string; service: string }> = [];

afterAll(async () => {
  await Promise.all(started.map((p) => p.kill()));
  collector?.close();
  await closeDb();
});

/** A minimal OTLP/HTTP (JSON) receiver. */
async function startCollector(): Promise<number> {
  const port = await findFreePort();
  collector = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk: Buffer) => (body += chunk.toString()));
    request.on('end', () => {
      if (request.url === '/v1/traces') {
        const parsed = JSON.parse(body) as {
          resourceSpans: Array<{ resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> }; scopeSpans: Array<{ spans: Array<{ name: string; traceId: string }> }> }>;
        };
        for (const rs of parsed.resourceSpans ?? []) {
          const service = rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? '?';
          for (const ss of rs.scopeSpans ?? []) for (const span of ss.spans ?? []) spans.push({ name: span.name, traceId: span.traceId, service });
        }
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => collector!.listen(port, '127.0.0.1', resolve));
  return port;
}

/** What a pod gets: the image's environment, the stack's settings, the role's own; nothing from this shell. */
function podEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const stack = Object.fromEntries(Object.entries(process.env).filter(([key]) => STACK_VARIABLES.test(key)));
  const workDir = fs.mkdtempSync(path.join(dir, 'work-'));
  return {
    PATH: `${path.dirname(process.execPath)}:/usr/local/bin:/usr/bin:/bin`,
    NODE_ENV: 'production',
    HOME: workDir,
    CPFLOW_WORK_DIR: workDir,
    ...stack,
    ...extra,
  };
}

async function get(port: number, urlPath: string): Promise<{ status: number; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${urlPath}`, { signal: AbortSignal.timeout(5000) });
  return { status: response.status, body: await response.text() };
}

const commands = dockerfileCommands();
const roles = manifestRoles();
const entrypoint = commands.get('cpflow')!.entrypoint!;

async function startRole(name: string, cmd: string[], extra: Record<string, string>, ready: RegExp): Promise<Pid1Process> {
  const p = startAsPid1([...entrypoint, ...cmd], { cwd: packageDir, env: podEnv(extra), name });
  started.push(p);
  await p.waitFor(ready, 120_000);
  return p;
}

beforeAll(() => {
  requireStack();
  ({ appDir, packageDir } = packAndInstall(dir));
});

it('packs a working cpflow command with production dependencies only', () => {
  expect(fs.existsSync(path.join(packageDir, 'dist', 'workflow-bundle.js'))).toBe(true);
  expect(fs.existsSync(path.join(packageDir, 'dist', 'core', 'db', 'migrations', '001_initial.sql'))).toBe(true);
  // No TypeScript sources, no tsx, no TypeScript compiler: compiled JavaScript only.
  expect(fs.existsSync(path.join(packageDir, 'workers'))).toBe(false);
  for (const devOnly of ['tsx', 'typescript', 'jest']) expect(fs.existsSync(path.join(appDir, 'node_modules', devOnly))).toBe(false);
  const env = { ...process.env, PATH: `${path.dirname(process.execPath)}:${process.env.PATH}` };
  const npx = (args: string[]) => spawnSync('npx', ['--no-install', 'cpflow', ...args], { cwd: appDir, env, encoding: 'utf8' });
  const help = npx(['--help']);
  expect(help.status).toBe(0);
  expect(help.stdout).toMatch(/Usage: cpflow/);
  expect(help.stdout).toMatch(/submit/);
  const version = npx(['--version']);
  expect(version.stdout.trim()).toMatch(new RegExp(`^cpflow ${pkg.version.replace(/\./g, '\\.')} \\(commit `));
  const usage = npx(['status', '--json']);
  expect(usage.status).toBe(2);
  expect(JSON.parse(usage.stdout)).toMatchObject({ error: { kind: 'usage', exitCode: 2 } });
});

it('runs every role with the image command as PID 1; SIGTERM lets a running analysis finish', async () => {
  expect(entrypoint).toEqual(['/usr/bin/tini', '--']);
  expect(fs.existsSync(entrypoint[0]!)).toBe(true);
  const otlp = await startCollector();
  const tracing = { OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${otlp}` };
  const ports = { workflowMetrics: await findFreePort(), analysisMetrics: await findFreePort() };
  const health = async () => String(await findFreePort());

  // The default CMD (every pool in one process) starts and stops cleanly.
  const all = await startRole('all', commands.get('cpflow')!.cmd!, {}, /cpflow workers running: workflow, cellprofiler, reduce/);
  expect(await all.stop('SIGTERM')).toBe(0);

  const workflowHealth = await health();
  const workflow = await startRole('workflow', roles.get('workflow')!.args, { ...tracing, CPFLOW_METRICS_PORT: String(ports.workflowMetrics), CPFLOW_HEALTH_PORT: workflowHealth }, /cpflow workers running: workflow/);
  const reduce = await startRole('reduce', roles.get('reduce')!.args, tracing, /cpflow workers running: reduce/);
  const starterHealth = await health();
  const starter = await startRole('starter', roles.get('starter')!.args, { ...tracing, CPFLOW_HEALTH_PORT: starterHealth }, /polling MariaDB/);
  const analysisEnv = { ...tracing, CPFLOW_ANALYZE_SLOTS: '2', CPFLOW_SHUTDOWN_GRACE_SECONDS: String(GRACE_SECONDS), CPFLOW_METRICS_PORT: String(ports.analysisMetrics) };
  const analysisHealth = await health();
  // The cellprofiler image's CMD (the builtin engine here: CPFLOW_CELLPROFILER is not set).
  expect(commands.get('cpflow-cellprofiler')!.cmd).toEqual(roles.get('cellprofiler')!.args);
  const analysis = await startRole('cellprofiler', commands.get('cpflow-cellprofiler')!.cmd!, { ...analysisEnv, CPFLOW_HEALTH_PORT: analysisHealth }, /cpflow workers running: cellprofiler/);
  for (const port of [workflowHealth, analysisHealth]) {
    expect(await get(Number(port), '/healthz')).toMatchObject({ status: 200 });
  }
  for (const port of [workflowHealth, analysisHealth, starterHealth]) {
    for (let i = 0; i < 50 && (await get(Number(port), '/readyz')).status !== 200; i++) await new Promise((r) => setTimeout(r, 200));
    expect(await get(Number(port), '/readyz')).toMatchObject({ status: 200 });
  }

  // Big fields so each set is still running when SIGTERM arrives.
  const plate = path.join(dir, 'plate');
  await generateSyntheticPlate({ outDir: plate, rows: 2, cols: 8, sites: 1, size: 1024, seed: 11 });
  const total = 16;
  fs.rmSync(path.join(plate, 'ground-truth.json'));
  const { experimentId } = await submit({ project: uniqueName('runtime'), name: 'image-command', folder: plate, grouping: GROUPING_PRESETS.synthetic!.rule, engine: 'builtin' });
  const pool = await db();
  // Done markers (provenance.json, written last by each analysis) say what had finished when; S3 has
  // them set by set, while MariaDB's mirror is written in batches.
  const experiment = (await getExperiment(pool, experimentId))!;
  const markers = async (): Promise<number> =>
    (await s3Keys(`s3://${experiment.bucket}/${layout.experimentRoot(experimentId)}sets/`)).filter((k) => k.endsWith('/provenance.json')).length;
  for (let i = 0; i < 1200 && (await markers()) < 1; i++) await new Promise((r) => setTimeout(r, 100));
  expect(await markers()).toBeGreaterThanOrEqual(1);

  // The set counter moves when its activity completes, just after its marker is written; the SDK
  // records its activity latency a moment later, when the core reports the completion to the server.
  const setsCounted = /cpflow_image_sets_total\{[^}]*engine="builtin"[^}]*\} [1-9]/;
  const latencyRecorded = /temporal_activity_execution_latency/;
  const scraped = (text: string): boolean => setsCounted.test(text) && latencyRecorded.test(text);
  let metrics = '';
  for (let i = 0; i < 100 && !scraped(metrics); i++) {
    metrics = (await get(ports.analysisMetrics, '/metrics')).body;
    if (!scraped(metrics)) await new Promise((r) => setTimeout(r, 100));
  }
  expect(metrics).toMatch(/cpflow_image_sets_total\{[^}]*engine="builtin"[^}]*\} [1-9]/);
  expect(metrics).toMatch(/cpflow_engine_seconds_bucket\{[^}]*engine="builtin"/);
  expect(metrics).toMatch(/cpflow_bytes_total\{[^}]*direction="download"[^}]*\} [1-9]/);
  expect(metrics).toMatch(latencyRecorded);

  // The pod is deleted: SIGTERM to PID 1 (tini), which passes it to node.
  const signalled = Date.now();
  const markersAtSignal = await markers();
  const code = await analysis.stop('SIGTERM');
  const seconds = (Date.now() - signalled) / 1000;
  expect(code).toBe(0);
  expect(seconds).toBeLessThan(GRACE_SECONDS);
  // Analyses were running at the signal and finished during the grace time (nothing else ran them).
  expect(markersAtSignal).toBeLessThan(total);
  expect(await markers()).toBeGreaterThan(markersAtSignal);
  expect(analysis.output()).not.toMatch(/Error|Warning: Tini is not running as PID 1/);

  const replacementHealth = await health();
  const replacement = await startRole('cellprofiler-2', commands.get('cpflow-cellprofiler')!.cmd!, { ...analysisEnv, CPFLOW_HEALTH_PORT: replacementHealth }, /cpflow workers running: cellprofiler/);
  const e = await waitForExperiment(experimentId);
  expect(e.status).toBe('done');
  const attempts = await pool.query<Array<{ attempts: number }>>('SELECT attempts FROM image_set WHERE experiment_id = ?', [experimentId]);
  expect(attempts).toHaveLength(total);
  // Nothing was cut off by the SIGTERM: every set succeeded on its first attempt.
  expect(attempts.filter((a) => a.attempts !== 1)).toEqual([]);

  expect((await get(ports.workflowMetrics, '/metrics')).body).toMatch(/cpflow_task_queue_backlog\{[^}]*task_queue="cellprofiler"/);

  // The remaining roles stop promptly and cleanly on SIGTERM (spans are flushed on the way out).
  for (const role of [starter, workflow, reduce, replacement]) expect(await role.stop('SIGTERM')).toBe(0);
  for (let i = 0; i < 50 && !spans.some((s) => s.name === 'RunActivity:reduceExperiment'); i++) await new Promise((r) => setTimeout(r, 200));
  const workflowRun = spans.find((s) => s.name === 'RunWorkflow:ExperimentWorkflow');
  expect(workflowRun).toBeDefined();
  expect(spans.some((s) => s.name === 'StartWorkflow:ExperimentWorkflow' && s.service === 'cpflow-starter')).toBe(true);
  const sameTrace = spans.filter((s) => s.traceId === workflowRun!.traceId).map((s) => s.name);
  expect(sameTrace).toEqual(expect.arrayContaining(['StartWorkflow:ExperimentWorkflow', 'RunActivity:analyzeImageSets']));
});
