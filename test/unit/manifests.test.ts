import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { SETTING_NAMES } from '../../core/config';
import { TEMPORAL_ALIASED_VARIABLES } from '../../core/temporal-settings';
import { TRACING_SETTING_NAMES } from '../../core/tracing';
import pkg from '../../package.json';
import { kustomizeCommand, renderKustomization } from '../support/kustomize';

/**
 * deploy/k8s renders (real kustomize) and every object validates offline against the Kubernetes and
 * KEDA schemas, strictly (test/support/validate-manifests.mts); beyond the schemas, the rules cpflow's
 * deployment depends on: namespace, pinned images, probes on the health endpoint, a locked-down
 * securityContext, resources, no replicas where KEDA scales, grace longer than the shutdown grace,
 * the Temporal scaler authenticated in production, and only environment variables cpflow reads.
 */
jest.setTimeout(180_000);

const REPO = path.resolve(__dirname, '..', '..');
const K8S = path.join(REPO, 'deploy', 'k8s');
const OVERLAYS = fs.readdirSync(path.join(K8S, 'overlays')).sort();

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string> };
  spec?: any; // eslint-disable-line @typescript-eslint/no-explicit-any -- schema-validated below
  data?: Record<string, string>;
}

function render(overlay: string): Obj[] {
  return parseAllDocuments(renderKustomization(path.join(K8S, 'overlays', overlay))).map((doc) => doc.toJSON() as Obj);
}

const rendered = new Map<string, Obj[]>();
beforeAll(() => {
  for (const overlay of OVERLAYS) rendered.set(overlay, render(overlay));
});

/** Environment variable names cpflow (or a library it configures through them) reads. */
const KNOWN_SETTINGS = new Set<string>([
  ...SETTING_NAMES,
  ...TEMPORAL_ALIASED_VARIABLES,
  ...TEMPORAL_ALIASED_VARIABLES.map((name) => `CPFLOW_${name}`),
  ...TRACING_SETTING_NAMES,
]);

it('has the local and production overlays, rendered with real kustomize', () => {
  expect(OVERLAYS).toEqual(expect.arrayContaining(['local', 'production', 'production-cloud']));
  expect(kustomizeCommand().how).toMatch(/kustomize/);
  for (const overlay of OVERLAYS) expect(rendered.get(overlay)!.length).toBeGreaterThan(5);
});

describe.each(OVERLAYS)('overlay %s', (overlay) => {
  const objects = (): Obj[] => rendered.get(overlay)!;
  const deployments = () => objects().filter((o) => o.kind === 'Deployment');

  it('validates strictly against the Kubernetes and KEDA schemas', () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-manifests-')), 'objects.json');
    fs.writeFileSync(file, JSON.stringify(objects()));
    const result = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'test', 'support', 'validate-manifests.mts'), file], {
      cwd: REPO,
      encoding: 'utf8',
    });
    expect(result.stderr).toBe('');
    const report = JSON.parse(result.stdout) as Array<{ kind: string; name: string; problems: string[] }>;
    expect(report.filter((r) => r.problems.length > 0)).toEqual([]);
    expect(report.map((r) => r.kind)).toEqual(expect.arrayContaining(['Namespace', 'ConfigMap', 'Deployment', 'ScaledObject']));
  });

  it('puts everything in the cpflow namespace', () => {
    expect(objects().some((o) => o.kind === 'Namespace' && o.metadata.name === 'cpflow')).toBe(true);
    for (const o of objects().filter((x) => x.kind !== 'Namespace')) expect(`${o.kind}/${o.metadata.name} in ${o.metadata.namespace}`).toBe(`${o.kind}/${o.metadata.name} in cpflow`);
  });

  it('pins every image to the release tag and runs the compiled roles', () => {
    for (const d of deployments()) {
      for (const c of d.spec.template.spec.containers) {
        expect(c.image).not.toMatch(/:latest$/);
        expect(c.image).toMatch(new RegExp(`:${pkg.version.replace(/\./g, '\\.')}$|@sha256:[0-9a-f]{64}$`));
        // `node dist/<role>.js …`: the compiled entry of a source file that exists.
        expect(c.args[0]).toBe('node');
        const source = path.join(REPO, c.args[1].replace(/^dist\//, '').replace(/\.js$/, '.ts'));
        expect(fs.existsSync(source)).toBe(true);
      }
    }
  });

  it('locks every pod down and gives it resources and probes on the health endpoint', () => {
    const config = objects().find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'cpflow-config')!;
    const healthPort = Number(config.data!.CPFLOW_HEALTH_PORT);
    const grace = Number(config.data!.CPFLOW_SHUTDOWN_GRACE_SECONDS);
    for (const d of deployments()) {
      const pod = d.spec.template.spec;
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, seccompProfile: { type: 'RuntimeDefault' } });
      expect(pod.automountServiceAccountToken).toBe(false);
      for (const c of pod.containers) {
        expect(c.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
        expect(c.resources.requests.cpu).toBeDefined();
        expect(c.resources.requests.memory).toBe(c.resources.limits.memory);
        const health = c.ports.find((p: { name: string }) => p.name === 'health');
        expect(health.containerPort).toBe(healthPort);
        expect(c.livenessProbe.httpGet).toEqual({ path: '/healthz', port: 'health' });
        expect(c.readinessProbe.httpGet).toEqual({ path: '/readyz', port: 'health' });
        // The read-only root needs a writable scratch: CPFLOW_WORK_DIR is an emptyDir.
        const scratch = c.volumeMounts.find((m: { mountPath: string }) => m.mountPath === config.data!.CPFLOW_WORK_DIR);
        expect(pod.volumes.find((v: { name: string }) => v.name === scratch.name).emptyDir).toBeDefined();
      }
      if (d.metadata.name !== 'cpflow-starter') expect(pod.terminationGracePeriodSeconds).toBeGreaterThan(grace);
    }
  });

  it('leaves the replica count of the KEDA-scaled pool to KEDA', () => {
    const scaled = objects().filter((o) => o.kind === 'ScaledObject');
    expect(scaled.length).toBeGreaterThan(0);
    for (const s of scaled) {
      const target = deployments().find((d) => d.metadata.name === s.spec.scaleTargetRef.name);
      expect(target).toBeDefined();
      expect(target!.spec.replicas).toBeUndefined();
      for (const trigger of s.spec.triggers) {
        expect(trigger.type).toBe('temporal');
        // The parameters KEDA's Temporal scaler (2.17+) knows.
        const known = ['endpoint', 'endpointFromEnv', 'namespace', 'taskQueue', 'queueTypes', 'targetQueueSize', 'activationTargetQueueSize', 'buildId', 'selectAllActive', 'selectUnversioned', 'apiKeyFromEnv', 'minConnectTimeout', 'unsafeSsl', 'tlsServerName'];
        expect(Object.keys(trigger.metadata).filter((k) => !known.includes(k))).toEqual([]);
        expect(trigger.metadata.taskQueue).toBe('cellprofiler');
      }
    }
  });

  it('authenticates KEDA to Temporal in production (mTLS or an API key)', () => {
    if (overlay === 'local') return;
    for (const s of objects().filter((o) => o.kind === 'ScaledObject')) {
      for (const trigger of s.spec.triggers) {
        const auth = objects().find((o) => o.kind === 'TriggerAuthentication' && o.metadata.name === trigger.authenticationRef?.name);
        expect(auth).toBeDefined();
        const params = auth!.spec.secretTargetRef.map((r: { parameter: string }) => r.parameter).sort();
        expect(params.every((p: string) => ['apiKey', 'ca', 'cert', 'key', 'keyPassword'].includes(p))).toBe(true);
        expect(params.includes('apiKey') || (params.includes('cert') && params.includes('key'))).toBe(true);
      }
    }
  });

  it('names only environment variables cpflow reads, and mounts every certificate it points at', () => {
    const config = objects().find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'cpflow-config')!;
    const names = [...Object.keys(config.data!)];
    for (const d of deployments()) for (const c of d.spec.template.spec.containers) names.push(...(c.env ?? []).map((e: { name: string }) => e.name));
    expect(names.filter((n) => !KNOWN_SETTINGS.has(n))).toEqual([]);
    for (const [key, file] of Object.entries(config.data!).filter(([k]) => /_(PATH|CA|CERT|KEY)$/.test(k))) {
      for (const d of deployments()) {
        const mounts: Array<{ mountPath: string }> = d.spec.template.spec.containers[0].volumeMounts;
        expect(`${key} in ${d.metadata.name}: ${mounts.some((m) => file.startsWith(`${m.mountPath}/`))}`).toBe(`${key} in ${d.metadata.name}: true`);
      }
    }
  });
});

it('keeps the example secret to settings cpflow reads', () => {
  const secret = parseAllDocuments(fs.readFileSync(path.join(K8S, 'secrets.example.yaml'), 'utf8'))[0]!.toJSON() as { stringData: Record<string, string> };
  expect(Object.keys(secret.stringData).filter((n) => !KNOWN_SETTINGS.has(n))).toEqual([]);
});

it('catches an unknown field (the strict check is real)', () => {
  const base = rendered.get('production')!.find((o) => o.kind === 'Deployment')!;
  const broken = JSON.parse(JSON.stringify(base)) as Obj;
  broken.spec.template.spec.containers[0].imagePullPolicyy = 'Always';
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-manifests-')), 'objects.json');
  fs.writeFileSync(file, JSON.stringify([broken]));
  const result = spawnSync(process.execPath, ['--import', 'tsx', path.join(REPO, 'test', 'support', 'validate-manifests.mts'), file], { cwd: REPO, encoding: 'utf8' });
  const report = JSON.parse(result.stdout) as Array<{ problems: string[] }>;
  expect(report[0]!.problems.join('\n')).toMatch(/imagePullPolicyy/);
});
