import { Client, Connection } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import * as DEFAULTS from './model/defaults';
import { activeTracing } from './tracing';
import { temporalConfig, type TemporalConfig } from './config';
import { TemporalUnavailableError } from './errors';
import { temporalConnectionOptions } from './temporal-settings';

/** The client side of Temporal for the CLI, the watcher and tests: one way to connect (TLS, mTLS, API key: temporal-settings.ts). */

export async function connectClient(config: TemporalConfig = temporalConfig()): Promise<Client> {
  try {
    const connection = await Connection.connect({ ...temporalConnectionOptions(config.settings), connectTimeout: DEFAULTS.TEMPORAL_CONNECT_TIMEOUT });
    // With tracing on (core/tracing.ts), starting a workflow opens the experiment's trace.
    const interceptors = activeTracing() ? { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } : undefined;
    return new Client({ connection, namespace: config.CPFLOW_TEMPORAL_NAMESPACE, interceptors });
  } catch (err) {
    throw new TemporalUnavailableError(config.CPFLOW_TEMPORAL_ADDRESS, err);
  }
}

/** Run `fn` with a connected client and close the connection afterwards. */
export async function withClient<T>(fn: (client: Client) => Promise<T>): Promise<T> {
  const client = await connectClient();
  try {
    return await fn(client);
  } finally {
    await client.connection.close();
  }
}
