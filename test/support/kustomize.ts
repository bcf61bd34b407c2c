import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { findProgram } from '../../deploy/local/install';
import { cacheDir } from '../../deploy/local/state';

/**
 * Renders a kustomization offline with the real kustomize: `kubectl kustomize` when kubectl is on the
 * machine (it embeds kustomize), else a `kustomize` binary, else one built once with `go install`
 * into the cache (KUSTOMIZE_MODULE; minutes the first time, then instant).
 */
export const KUSTOMIZE_MODULE = 'sigs.k8s.io/kustomize/kustomize/v5@v5.5.0';

export function kustomizeCommand(): { command: string; args: string[]; how: string } {
  const kubectl = findProgram('kubectl');
  if (kubectl) return { command: kubectl, args: ['kustomize'], how: 'kubectl kustomize' };
  const onPath = findProgram('kustomize');
  if (onPath) return { command: onPath, args: ['build'], how: 'kustomize build' };
  const bin = path.join(cacheDir(), 'bin');
  const built = path.join(bin, 'kustomize');
  if (!fs.existsSync(built)) {
    const go = findProgram('go');
    if (!go) throw new Error('no kubectl, kustomize or go to render the manifests with');
    const result = spawnSync(go, ['install', KUSTOMIZE_MODULE], { env: { ...process.env, GOBIN: bin }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    if (result.status !== 0) throw new Error(`go install ${KUSTOMIZE_MODULE} failed: ${result.stderr.slice(-500)}`);
  }
  return { command: built, args: ['build'], how: `kustomize build (${KUSTOMIZE_MODULE})` };
}

export function renderKustomization(dir: string): string {
  const { command, args } = kustomizeCommand();
  return execFileSync(command, [...args, dir], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 64 * 1024 * 1024 });
}
