import type { Command } from 'commander';
import { workerConfig } from '../../core/config';
import { describeError } from '../../core/errors';
import { startHealthServer } from '../../core/health';
import { startTracing, stopTracing } from '../../core/tracing';
import { s3Endpoint } from '../../core/s3';
import { connectClient } from '../../core/temporal';
import { Watcher } from '../watch';
import { intArg } from './common';

/** `cpflow watch`: the starter daemon. */
export function registerWatch(program: Command): void {
  program
    .command('watch')
    .description('start workflows for submitted experiments (the starter daemon)')
    .option('--interval <ms>', 'poll interval', intArg('--interval', 100), 2000)
    .option('--once', 'one pass, then exit', false)
    .option('--json', 'one JSON object per line for each event', false)
    .action(async (o: { interval: number; once: boolean; json: boolean }) => {
      // Workflow starts carry a trace context when OTEL_EXPORTER_OTLP_ENDPOINT is set (core/tracing.ts).
      startTracing('cpflow-starter');
      const healthPort = o.once ? undefined : workerConfig().CPFLOW_HEALTH_PORT;
      const health = healthPort ? await startHealthServer(healthPort, 'cpflow starter') : undefined;
      const client = await connectClient();
      const watcher = new Watcher(client, (e) =>
        console.log(
          o.json
            ? JSON.stringify({ time: new Date().toISOString(), ...e })
            : `${new Date().toISOString()} experiment ${e.experimentId}: ${e.kind}${e.detail ? ` (${e.detail})` : ''}`,
        ),
      );
      try {
        if (o.once) {
          await watcher.tick();
          return;
        }
        const stop = new AbortController();
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => stop.abort());
        const started = `cpflow watch: polling MariaDB every ${o.interval} ms (pid ${process.pid})`;
        console.log(o.json ? JSON.stringify({ time: new Date().toISOString(), kind: 'watching', detail: started }) : started);
        await watcher.run(
          o.interval,
          stop.signal,
          (err) => console.error(`cpflow watch: ${describeError(err, s3Endpoint)}`),
          (ok) => health?.setReady(ok && !stop.signal.aborted, ok ? 'polling' : 'the last pass failed (see the log)'),
        );
      } finally {
        health?.setReady(false, 'stopped');
        await client.connection.close();
        await stopTracing();
        await health?.close();
      }
    });
}
