import { loadClientConfigProfile, toClientOptions, type ClientConfigProfile } from '@temporalio/envconfig';
import type { TLSConfig } from '@temporalio/client';
import { ConfigError } from './errors';
import * as DEFAULTS from './model/defaults';

/**
 * Where and how cpflow reaches Temporal, read the way every Temporal SDK and the `temporal` CLI read it
 * (`@temporalio/envconfig`): a profile from the TOML file (`TEMPORAL_CONFIG_FILE`, default
 * `~/.config/temporalio/temporal.toml`, profile `TEMPORAL_PROFILE`), overridden by `TEMPORAL_ADDRESS`,
 * `TEMPORAL_NAMESPACE`, `TEMPORAL_API_KEY`, `TEMPORAL_TLS*`, `TEMPORAL_GRPC_META_*`.
 *
 * cpflow's older names stay as aliases: `CPFLOW_TEMPORAL_<X>` means `TEMPORAL_<X>` and, being the more
 * specific of the two, wins when both are set. Secrets (the API key, a client key) are only ever read
 * from the environment or files, never from arguments, and `describe()` leaves them out.
 */

/** The envconfig variables cpflow also accepts with a `CPFLOW_` prefix. */
export const TEMPORAL_ALIASED_VARIABLES = [
  'TEMPORAL_ADDRESS',
  'TEMPORAL_NAMESPACE',
  'TEMPORAL_API_KEY',
  'TEMPORAL_PROFILE',
  'TEMPORAL_CONFIG_FILE',
  'TEMPORAL_TLS',
  'TEMPORAL_TLS_CLIENT_CERT_PATH',
  'TEMPORAL_TLS_CLIENT_CERT_DATA',
  'TEMPORAL_TLS_CLIENT_KEY_PATH',
  'TEMPORAL_TLS_CLIENT_KEY_DATA',
  'TEMPORAL_TLS_SERVER_CA_CERT_PATH',
  'TEMPORAL_TLS_SERVER_CA_CERT_DATA',
  'TEMPORAL_TLS_SERVER_NAME',
] as const;

export interface TemporalSettings {
  /** host:port of the frontend. */
  address: string;
  namespace: string;
  /** Sent as `Authorization: Bearer …`; implies TLS unless TLS is explicitly disabled. */
  apiKey?: string;
  /** `undefined`/`false`: plaintext; `true`: TLS with the system's CAs; an object: custom CA, mTLS, server name. */
  tls?: TLSConfig | boolean;
  /** Extra gRPC headers (TEMPORAL_GRPC_META_*). */
  metadata?: Record<string, string>;
}

/** The environment with every `CPFLOW_TEMPORAL_<X>` alias written over its `TEMPORAL_<X>`. */
function withAliases(env: NodeJS.ProcessEnv): Record<string, string> {
  const merged: Record<string, string> = {};
  for (const [key, value] of Object.entries(env)) if (value !== undefined) merged[key] = value;
  for (const name of TEMPORAL_ALIASED_VARIABLES) {
    const alias = env[`CPFLOW_${name}`];
    if (alias !== undefined && alias !== '') merged[name] = alias;
  }
  return merged;
}

/** Which variable (alias or canonical) a setting came from, for error messages. */
function sourceOf(env: NodeJS.ProcessEnv, name: (typeof TEMPORAL_ALIASED_VARIABLES)[number]): string {
  if (env[`CPFLOW_${name}`]) return `CPFLOW_${name}`;
  if (env[name]) return name;
  return 'the Temporal config profile';
}

export function temporalSettings(env: NodeJS.ProcessEnv = process.env): TemporalSettings {
  const merged = withAliases(env);
  let profile: ClientConfigProfile;
  try {
    profile = loadClientConfigProfile({ overrideEnvVars: merged });
  } catch (err) {
    throw new ConfigError(`invalid Temporal client configuration: ${err instanceof Error ? err.message : String(err)}`);
  }
  const address = profile.address ?? DEFAULTS.TEMPORAL_ADDRESS;
  if (!/^[^\s:]+:\d+$/.test(address)) {
    throw new ConfigError(`invalid configuration: ${sourceOf(env, 'TEMPORAL_ADDRESS')}=${JSON.stringify(address)}: expected host:port`);
  }
  const namespace = profile.namespace ?? DEFAULTS.TEMPORAL_NAMESPACE;
  if (namespace.trim() === '') throw new ConfigError(`invalid configuration: ${sourceOf(env, 'TEMPORAL_NAMESPACE')} is empty`);
  const tlsSettings = profile.tls;
  if (tlsSettings && !tlsSettings.disabled && Boolean(tlsSettings.clientCert) !== Boolean(tlsSettings.clientKey)) {
    throw new ConfigError(
      'invalid configuration: mTLS needs both a client certificate and its key (TEMPORAL_TLS_CLIENT_CERT_PATH and TEMPORAL_TLS_CLIENT_KEY_PATH, or their CPFLOW_ aliases)',
    );
  }
  let options: ReturnType<typeof toClientOptions>;
  try {
    options = toClientOptions({ ...profile, address, namespace });
  } catch (err) {
    // A certificate file that cannot be read.
    throw new ConfigError(`invalid Temporal TLS configuration: ${err instanceof Error ? err.message : String(err)}`);
  }
  const { apiKey, tls } = options.connectionOptions;
  const metadata = profile.grpcMeta;
  return {
    address,
    namespace,
    apiKey: typeof apiKey === 'string' && apiKey !== '' ? apiKey : undefined,
    tls: tls ?? undefined,
    metadata: metadata && Object.keys(metadata).length > 0 ? metadata : undefined,
  };
}

/** The options `Connection.connect` (client) and `NativeConnection.connect` (worker) both take. */
export function temporalConnectionOptions(settings: TemporalSettings) {
  return {
    address: settings.address,
    tls: settings.tls,
    apiKey: settings.apiKey,
    metadata: settings.metadata,
  };
}

/** One line for logs and `doctor`: address, namespace and the kind of security, never a secret. */
export function describeTemporal(settings: TemporalSettings): string {
  const tls = settings.tls;
  const security =
    tls === undefined || tls === false
      ? 'plaintext'
      : tls === true
        ? 'TLS'
        : tls.clientCertPair
          ? `mTLS${tls.serverNameOverride ? ` (server name ${tls.serverNameOverride})` : ''}`
          : `TLS${tls.serverRootCACertificate ? ' (custom CA)' : ''}`;
  return `${settings.address} namespace ${settings.namespace}, ${security}${settings.apiKey ? ', API key' : ''}`;
}
