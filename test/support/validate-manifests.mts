/**
 * Validates rendered Kubernetes objects offline against the Kubernetes and KEDA schemas of the
 * `kubernetes-models` and `@kubernetes-models/keda` packages, strictly:
 *  1. every object is type-checked by the TypeScript compiler against its model's interface (an
 *     unknown field is an excess-property error, a missing required field or a wrong type an error);
 *  2. every object passes its model's own validate() (the JSON-schema checks: formats, patterns,
 *     enums, required fields).
 * ESM on purpose (both packages are ESM-only), so it runs as a child process of the jest test:
 *   node --import tsx test/support/validate-manifests.mts <objects.json>
 * Input: a JSON array of objects. Output (stdout): JSON array of { index, kind, name, problems }.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface KubeObject {
  apiVersion: string;
  kind: string;
  metadata?: { name?: string };
}

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const require = createRequire(import.meta.url);

/** Module and interface of an object's model, e.g. kubernetes-models/apps/v1/Deployment, IDeployment. */
function modelOf(object: KubeObject): { module: string; className: string; interfaceName: string } {
  const [group, version] = object.apiVersion.includes('/') ? object.apiVersion.split('/') : ['', object.apiVersion];
  const base = group === 'keda.sh' || group === 'eventing.keda.sh' ? `@kubernetes-models/keda/${group}/${version}` : `kubernetes-models/${group ? `${group}/` : ''}${version}`;
  return { module: `${base}/${object.kind}`, className: object.kind, interfaceName: `I${object.kind}` };
}

function typeCheck(objects: KubeObject[]): Map<number, string[]> {
  const dir = path.join(root, 'node_modules', '.cache', 'cpflow-manifest-check');
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const imports = new Map<string, string>();
  const lines: string[] = [];
  const lineOwner: number[] = [];
  const push = (text: string, owner: number) => {
    for (const line of text.split('\n')) {
      lines.push(line);
      lineOwner.push(owner);
    }
  };
  objects.forEach((object, index) => {
    const { module, interfaceName } = modelOf(object);
    const alias = `T${imports.size}`;
    if (!imports.has(module)) imports.set(module, alias);
    push(`export const object${index}: ${imports.get(module)}.${interfaceName} = ${JSON.stringify(object, null, 2)};`, index);
  });
  const header = [...imports].map(([module, alias]) => `import type * as ${alias} from '${module}';`);
  const source = [...header, ...lines].join('\n');
  const owners = [...header.map(() => -1), ...lineOwner];
  fs.writeFileSync(path.join(dir, 'objects.mts'), source);
  fs.writeFileSync(
    path.join(dir, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', skipLibCheck: true, types: [] },
      files: ['objects.mts'],
    }),
  );
  const tsc = require.resolve('typescript/bin/tsc');
  const result = spawnSync(process.execPath, [tsc, '-p', path.join(dir, 'tsconfig.json'), '--pretty', 'false'], { encoding: 'utf8' });
  const problems = new Map<number, string[]>();
  for (const line of `${result.stdout}${result.stderr}`.split('\n')) {
    const m = /objects\.mts\((\d+),\d+\): error (TS\d+: .*)$/.exec(line);
    if (!m) {
      if (/error TS/.test(line)) problems.set(-1, [...(problems.get(-1) ?? []), line]);
      continue;
    }
    const owner = owners[Number(m[1]) - 1] ?? -1;
    problems.set(owner, [...(problems.get(owner) ?? []), m[2]!]);
  }
  if (result.status !== 0 && problems.size === 0) problems.set(-1, [`tsc failed: ${result.stdout}${result.stderr}`]);
  return problems;
}

async function schemaCheck(object: KubeObject): Promise<string[]> {
  const { module, className } = modelOf(object);
  let Model: new (data: unknown) => { validate(): void };
  try {
    Model = (await import(module))[className];
  } catch (err) {
    return [`no schema for ${object.apiVersion} ${object.kind} (${(err as Error).message})`];
  }
  try {
    new Model(object).validate();
    return [];
  } catch (err) {
    return [(err as Error).message];
  }
}

const objects = JSON.parse(fs.readFileSync(process.argv[2]!, 'utf8')) as KubeObject[];
const typeProblems = typeCheck(objects);
const report = await Promise.all(
  objects.map(async (object, index) => ({
    index,
    kind: object.kind,
    name: object.metadata?.name ?? '?',
    problems: [...(typeProblems.get(index) ?? []), ...(await schemaCheck(object))],
  })),
);
if (typeProblems.has(-1)) report.push({ index: -1, kind: '(file)', name: '(tsc)', problems: typeProblems.get(-1)! });
process.stdout.write(JSON.stringify(report));
