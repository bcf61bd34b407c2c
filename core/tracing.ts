import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BatchSpanProcessor, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import { NodeTracerProvider } from '@opentelemetry/sdk-trace-node';
import { z } from 'zod';
import { ConfigError } from './errors';
import { CPFLOW_VERSION } from './version';

/**
 * OpenTelemetry tracing through `@temporalio/interceptors-opentelemetry`: off unless an OTLP endpoint is
 * set with the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`
 * for traces only; OTLP over HTTP, as the exporter reads them, with `OTEL_EXPORTER_OTLP_HEADERS` for
 * authentication). Spans: the starter's workflow start, every workflow run (from inside the sandbox,
 * exported through a sink) and every activity, linked into one trace per experiment.
 */

const tracingSchema = z.object({
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().url().optional(),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z.string().url().optional(),
  /** Overrides the service name cpflow gives each role (cpflow-worker, cpflow-starter). */
  OTEL_SERVICE_NAME: z.string().min(1).optional(),
});

/** The tracing settings cpflow reads itself (the exporter also honours the rest of OTEL_EXPORTER_OTLP_*). */
export const TRACING_SETTING_NAMES: readonly string[] = [...Object.keys(tracingSchema.shape), 'OTEL_EXPORTER_OTLP_HEADERS'];

export function tracingEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  const parsed = tracingSchema.safeParse(env);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const key = String(issue?.path[0] ?? '?');
    throw new ConfigError(`invalid configuration: ${key}=${JSON.stringify(env[key])}: ${issue?.message ?? 'invalid'}`);
  }
  return Boolean(parsed.data.OTEL_EXPORTER_OTLP_ENDPOINT || parsed.data.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

interface ActiveTracing {
  provider: NodeTracerProvider;
  processor: SpanProcessor;
  resource: Resource;
}

let active: ActiveTracing | undefined;

/**
 * Install the global tracer provider for this process (once) when tracing is configured; returns
 * undefined when it is off.
 */
export function startTracing(service: string, env: NodeJS.ProcessEnv = process.env): ActiveTracing | undefined {
  if (!tracingEnabled(env)) return undefined;
  if (active) return active;
  const resource = new Resource({
    'service.name': env.OTEL_SERVICE_NAME ?? service,
    'service.version': CPFLOW_VERSION,
  });
  const processor = new BatchSpanProcessor(new OTLPTraceExporter(), { scheduledDelayMillis: 1000 });
  const provider = new NodeTracerProvider({ resource });
  provider.addSpanProcessor(processor);
  // Global provider, W3C trace-context propagation (the interceptors carry it in Temporal headers) and
  // an AsyncLocalStorage context manager, so a workflow start or an activity continues its parent's trace.
  provider.register();
  active = { provider, processor, resource };
  return active;
}

/** Flush and stop: spans still buffered are sent before the process exits. */
export async function stopTracing(): Promise<void> {
  const current = active;
  active = undefined;
  if (current) await current.provider.shutdown().catch(() => undefined);
}

export function activeTracing(): ActiveTracing | undefined {
  return active;
}
