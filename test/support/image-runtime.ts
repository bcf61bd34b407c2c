import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { findProgram } from '../../deploy/local/install';
import { manageProcess, REPO_ROOT, type ManagedProcess } from './harness';

/**
 * Running cpflow the way its image does, without a Docker engine: the npm package built and packed
 * (`npm pack`: `npm run build`'s compiled JavaScript and workflow bundle), installed with production
 * dependencies only, and each role started with the exact ENTRYPOINT + CMD of deploy/docker/Dockerfile
 * (or the role's `args` in deploy/k8s/base) as PID 1 of a PID namespace of its own.
 */

/** `ENTRYPOINT`/`CMD` (exec form) of each stage of the Dockerfile. */
export function dockerfileCommands(file = path.join(REPO_ROOT, 'deploy', 'docker', 'Dockerfile')): Map<string, { entrypoint?: string[]; cmd?: string[] }> {
  const stages = new Map<string, { entrypoint?: string[]; cmd?: string[] }>();
  let current: { entrypoint?: string[]; cmd?: string[] } = {};
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const from = /^FROM\s+(\S+)(?:\s+AS\s+(\S+))?/i.exec(line);
    if (from) {
      // A stage built FROM another inherits its ENTRYPOINT and CMD.
      const parent = stages.get(from[1]!);
      current = { ...parent };
      if (from[2]) stages.set(from[2], current);
      continue;
    }
    const instruction = /^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$/.exec(line);
    if (instruction) current[instruction[1] === 'CMD' ? 'cmd' : 'entrypoint'] = JSON.parse(instruction[2]!) as string[];
  }
  return stages;
}

/** Each role's container `args` in the kustomize base (what replaces the image's CMD). */
export function manifestRoles(): Map<string, { image: string; args: string[] }> {
  const roles = new Map<string, { image: string; args: string[] }>();
  const base = path.join(REPO_ROOT, 'deploy', 'k8s', 'base');
  for (const file of fs.readdirSync(base).filter((f) => f.endsWith('.yaml'))) {
    for (const doc of parseAllDocuments(fs.readFileSync(path.join(base, file), 'utf8'))) {
      const o = doc.toJSON() as { kind?: string; spec?: { template: { spec: { containers: Array<{ name: string; image: string; args: string[] }> } } } };
      if (o?.kind !== 'Deployment') continue;
      for (const c of o.spec!.template.spec.containers) roles.set(c.name, { image: c.image, args: c.args });
    }
  }
  return roles;
}

function npm(args: string[], cwd: string): string {
  const npmCli = process.env.npm_execpath && /npm-cli\.js$/.test(process.env.npm_execpath) ? process.env.npm_execpath : undefined;
  const [command, prefix] = npmCli ? [process.execPath, [npmCli]] : ['npm', []];
  // npm and the scripts it runs use this Node (first on PATH), the one the tests run under.
  const env = { ...process.env, PATH: `${path.dirname(process.execPath)}${path.delimiter}${process.env.PATH ?? ''}` };
  const result = spawnSync(command, [...prefix, ...args], { cwd, env, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  if (result.status !== 0) throw new Error(`npm ${args.join(' ')} failed (exit ${result.status}):\n${result.stderr.slice(-3000)}`);
  return result.stdout;
}

/**
 * `npm pack` the repository (its prepack runs `npm run build`) and install the tarball with production
 * dependencies only into `<dir>/app`. Returns the installed package directory (the image's /app).
 */
export function packAndInstall(dir: string): { tarball: string; appDir: string; packageDir: string } {
  const packed = npm(['pack', '--pack-destination', dir, '--silent'], REPO_ROOT).trim().split('\n').pop()!;
  const tarball = path.join(dir, packed);
  const appDir = path.join(dir, 'app');
  fs.mkdirSync(appDir, { recursive: true });
  fs.writeFileSync(path.join(appDir, 'package.json'), JSON.stringify({ name: 'cpflow-image-check', private: true }));
  npm(['install', '--omit=dev', '--prefer-offline', '--no-audit', '--no-fund', tarball], appDir);
  return { tarball, appDir, packageDir: path.join(appDir, 'node_modules', 'cpflow') };
}

export interface Pid1Process extends ManagedProcess {
  /** The pid of PID 1 of the namespace, as this process sees it (where SIGTERM is sent). */
  pid1: () => Promise<number>;
  /** Resolves with the exit code when the container's PID 1 (and so unshare) has exited. */
  exited: Promise<number | null>;
  /** Cleanup after a failure: SIGKILL everything in the namespace. */
  kill: () => Promise<void>;
}

/**
 * Start `argv` as PID 1 of a new PID namespace (`unshare --pid --fork`), as a container runtime does;
 * SIGTERM goes to that PID 1, not to unshare. Without unshare (not root), `argv` is started directly.
 */
export function startAsPid1(argv: string[], opts: { cwd: string; env: NodeJS.ProcessEnv; logDir?: string; name: string }): Pid1Process {
  const unshare = process.getuid?.() === 0 ? findProgram('unshare') : undefined;
  const [command, args] = unshare ? [unshare, ['--pid', '--fork', '--kill-child', '--', ...argv]] : [argv[0]!, argv.slice(1)];
  const child = spawn(command, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const managed = manageProcess(child, opts.name, opts.name, { logDir: opts.logDir });
  const pid1 = async (): Promise<number> => {
    if (!unshare) return child.pid!;
    for (let i = 0; i < 200; i++) {
      try {
        const children = fs.readFileSync(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8').trim();
        if (children) return Number(children.split(/\s+/)[0]);
      } catch {
        // not started yet
      }
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`${opts.name}: no PID 1 under unshare (pid ${child.pid})`);
  };
  const running = () => child.exitCode === null && child.signalCode === null;
  return {
    ...managed,
    pid1,
    exited,
    // What a container runtime does on stop: the signal to PID 1, then wait.
    stop: async (signal = 'SIGTERM') => {
      if (running()) {
        try {
          process.kill(await pid1(), signal);
        } catch {
          // already gone
        }
      }
      return exited;
    },
    kill: async () => {
      if (running()) child.kill('SIGKILL'); // --kill-child takes the namespace's processes with it
      await exited;
    },
  };
}
