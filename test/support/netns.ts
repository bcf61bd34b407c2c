import { execFileSync, spawnSync } from 'node:child_process';
import { findProgram } from '../../deploy/local/install';

/**
 * A small network of "hosts" on one machine for the multi-host drill: a bridge in this namespace
 * carrying the services' address (.1), and one network namespace per worker host, each linked to the
 * bridge by a veth pair, with an address of its own (.11, .12, …) and no route anywhere else. The
 * addresses are from 198.18.0.0/15 (RFC 2544, set aside for exactly such test networks); nothing
 * leaves the machine. Names carry this process's pid so parallel runs never collide, and leftovers of
 * a run that died are removed by the next one.
 */

const PREFIX = 'cpfdrill';

export interface TestNetwork {
  bridge: string;
  servicesAddress: string;
  hosts: Array<{ name: string; namespace: string; address: string; hostVeth: string }>;
  destroy: () => void;
}

function ip(args: string[]): void {
  execFileSync(findProgram('ip') ?? 'ip', args, { stdio: ['ignore', 'ignore', 'pipe'] });
}

function ipQuiet(args: string[]): void {
  spawnSync(findProgram('ip') ?? 'ip', args, { stdio: 'ignore' });
}

/** Why namespaces cannot be made here, or undefined when they can. */
export function netnsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'network namespaces need root';
  if (!findProgram('ip')) return 'the ip command (iproute2) is missing';
  const probe = `${PREFIX}probe${process.pid}`;
  const made = spawnSync(findProgram('ip')!, ['netns', 'add', probe], { encoding: 'utf8' });
  if (made.status !== 0) return `ip netns add failed: ${made.stderr.trim()}`;
  ipQuiet(['netns', 'del', probe]);
  return undefined;
}

/** Remove namespaces and bridges left by drills whose process is gone. */
function removeLeftovers(): void {
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const namespaces = spawnSync(findProgram('ip')!, ['netns', 'list'], { encoding: 'utf8' }).stdout;
  for (const line of namespaces.split('\n')) {
    const m = new RegExp(`^(${PREFIX}(\\d+)h\\d+)`).exec(line.trim());
    if (m && !alive(Number(m[2]))) ipQuiet(['netns', 'del', m[1]!]);
  }
  const links = spawnSync(findProgram('ip')!, ['-o', 'link', 'show'], { encoding: 'utf8' }).stdout;
  for (const line of links.split('\n')) {
    const m = /^\d+: (cpfb(\d+))[:@]/.exec(line);
    if (m && !alive(Number(m[2]))) ipQuiet(['link', 'del', m[1]!]);
  }
}

export function createTestNetwork(hostCount: number): TestNetwork {
  removeLeftovers();
  const id = process.pid;
  const subnet = `198.18.${id % 250}`;
  const bridge = `cpfb${id}`.slice(0, 15);
  const network: TestNetwork = { bridge, servicesAddress: `${subnet}.1`, hosts: [], destroy: () => undefined };
  network.destroy = () => {
    for (const host of network.hosts) ipQuiet(['netns', 'del', host.namespace]);
    ipQuiet(['link', 'del', bridge]);
  };
  try {
    ip(['link', 'add', bridge, 'type', 'bridge']);
    ip(['addr', 'add', `${network.servicesAddress}/24`, 'dev', bridge]);
    ip(['link', 'set', bridge, 'up']);
    for (let i = 1; i <= hostCount; i++) {
      const namespace = `${PREFIX}${id}h${i}`;
      const hostVeth = `cpfv${id}h${i}`.slice(-15);
      const address = `${subnet}.${10 + i}`;
      network.hosts.push({ name: `cpflow-host-${i}`, namespace, address, hostVeth });
      ip(['netns', 'add', namespace]);
      ip(['link', 'add', hostVeth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', namespace]);
      ip(['link', 'set', hostVeth, 'master', bridge]);
      ip(['link', 'set', hostVeth, 'up']);
      ip(['-n', namespace, 'addr', 'add', `${address}/24`, 'dev', 'eth0']);
      ip(['-n', namespace, 'link', 'set', 'lo', 'up']);
      ip(['-n', namespace, 'link', 'set', 'eth0', 'up']);
    }
  } catch (err) {
    network.destroy();
    throw err;
  }
  return network;
}

/** Cut a host off: its link to the bridge goes down and away. */
export function dropLink(hostVeth: string): void {
  ipQuiet(['link', 'set', hostVeth, 'down']);
  ipQuiet(['link', 'del', hostVeth]);
}

/** argv that runs `command` inside the host's namespace with the host's own hostname (UTS namespace). */
export function onHost(host: { namespace: string; name: string }, command: string[]): string[] {
  return [findProgram('ip') ?? 'ip', 'netns', 'exec', host.namespace, findProgram('unshare') ?? 'unshare', '--uts', '--', 'sh', '-c', 'hostname "$0" && exec "$@"', host.name, ...command];
}
