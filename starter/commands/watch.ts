import type { Command } from 'commander';
import { describeError } from '../../core/errors';
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
    .action(async (o: { interval: number; once: boolean }) => {
      const client = await connectClient();
      const watcher = new Watcher(client, (e) =>
        console.log(`${new Date().toISOString()} experiment ${e.experimentId}: ${e.kind}${e.detail ? ` (${e.detail})` : ''}`),
      );
      try {
        if (o.once) {
          await watcher.tick();
          return;
        }
        const stop = new AbortController();
        for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => stop.abort());
        console.log(`cpflow watch: polling MariaDB every ${o.interval} ms (pid ${process.pid})`);
        await watcher.run(o.interval, stop.signal, (err) => console.error(`cpflow watch: ${describeError(err, s3Endpoint)}`));
      } finally {
        await client.connection.close();
      }
    });
}
