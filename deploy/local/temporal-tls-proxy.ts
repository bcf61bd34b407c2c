/**
 * Temporal's frontend behind mTLS for the secure local stack. The Temporal CLI's dev server has no TLS
 * flags, so Debian's nginx terminates TLS in front of it: HTTP/2 with `ssl_verify_client on` against the
 * stack's CA, `grpc_pass` to the dev server, which then listens on 127.0.0.1 only.
 *
 * Why nginx rather than building a Temporal server with its TLS settings: it is a Debian package
 * (no minutes-long Go build of the whole server, nothing to keep patched by us), its gRPC proxying and
 * client-certificate checks are what production ingresses use, and it needs no root: the package is
 * unpacked into the cache (`apt-get download` + `dpkg-deb -x`), so nothing is installed system-wide and
 * no system service is started. A system nginx on PATH is used when there is one.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import execa from 'execa';
import { findProgram, type Logger } from './install';
import { StackError } from './state';
import type { TlsFiles } from './tls';

/** Where the unpacked Debian nginx lives: shared by every stack directory of one cache. */
export function nginxInstallDir(cacheRoot: string): string {
  return path.join(cacheRoot, 'nginx');
}

export async function ensureNginx(cacheRoot: string, log: Logger): Promise<string> {
  const system = findProgram('nginx');
  if (system !== undefined) return system;
  const root = nginxInstallDir(cacheRoot);
  const binary = path.join(root, 'usr', 'sbin', 'nginx');
  if (fs.existsSync(binary)) return binary;
  const staging = fs.mkdtempSync(path.join(os.tmpdir(), 'cpflow-nginx-'));
  try {
    const download = () => execa('apt-get', ['download', 'nginx'], { cwd: staging, reject: false, all: true, stdin: 'ignore' });
    log('unpacking Debian\'s nginx into the cache for Temporal\'s TLS proxy…');
    let result = await download();
    if (result.exitCode !== 0 && process.getuid?.() === 0) {
      await execa('apt-get', ['-o', 'DPkg::Lock::Timeout=600', 'update'], { reject: false, stdin: 'ignore', env: { DEBIAN_FRONTEND: 'noninteractive' } });
      result = await download();
    }
    const deb = fs.readdirSync(staging).find((f) => f.endsWith('.deb'));
    if (result.exitCode !== 0 || deb === undefined) {
      throw new StackError(`could not fetch Debian's nginx package for the secure stack: ${(result.all ?? '').trim().split('\n').slice(-2).join(' ')}`);
    }
    const unpacked = path.join(staging, 'root');
    await execa('dpkg-deb', ['-x', path.join(staging, deb), unpacked], { stdin: 'ignore' });
    fs.mkdirSync(path.dirname(root), { recursive: true });
    fs.rmSync(root, { recursive: true, force: true });
    fs.renameSync(unpacked, root);
  } finally {
    fs.rmSync(staging, { recursive: true, force: true });
  }
  if (!fs.existsSync(binary)) throw new StackError(`nginx unpacked but ${binary} is missing`);
  return binary;
}

export interface ProxyPlan {
  /** Where clients connect: host:port. */
  listenHost: string;
  listenPort: number;
  /** The dev server's plaintext gRPC port on 127.0.0.1. */
  upstreamPort: number;
  dir: string;
  files: TlsFiles;
}

/** The nginx configuration: every path inside the proxy's own directory, no system file touched. */
export function proxyConfig(plan: ProxyPlan): string {
  const temp = (name: string) => path.join(plan.dir, 'temp', name);
  for (const name of ['body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) fs.mkdirSync(temp(name), { recursive: true });
  const runAsRoot = process.getuid?.() === 0 ? 'user root root;\n' : '';
  return `# Written by deploy/local/temporal-tls-proxy.ts; regenerated at every start.
${runAsRoot}daemon off;
worker_processes 1;
pid ${path.join(plan.dir, 'nginx.pid')};
error_log ${path.join(plan.dir, 'error.log')} warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${temp('body')};
  proxy_temp_path ${temp('proxy')};
  fastcgi_temp_path ${temp('fastcgi')};
  uwsgi_temp_path ${temp('uwsgi')};
  scgi_temp_path ${temp('scgi')};
  # gRPC messages of any size; long polls (about a minute) and idle worker connections stay open.
  client_max_body_size 0;
  client_body_timeout 1h;
  keepalive_timeout 1h;
  server {
    listen ${plan.listenHost}:${plan.listenPort} ssl http2;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate ${plan.files.serverCert};
    ssl_certificate_key ${plan.files.serverKey};
    ssl_client_certificate ${plan.files.caCert};
    ssl_verify_client on;
    location / {
      grpc_pass grpc://127.0.0.1:${plan.upstreamPort};
      grpc_read_timeout 1h;
      grpc_send_timeout 1h;
      grpc_socket_keepalive on;
    }
  }
}
`;
}

export function writeProxyConfig(plan: ProxyPlan): string {
  fs.mkdirSync(plan.dir, { recursive: true });
  const file = path.join(plan.dir, 'nginx.conf');
  fs.writeFileSync(file, proxyConfig(plan));
  return file;
}

/** nginx's arguments: prefix, configuration, and the error log before the configuration is read. */
export function proxyArgs(plan: ProxyPlan, configFile: string): string[] {
  return ['-p', plan.dir, '-c', configFile, '-e', path.join(plan.dir, 'error.log')];
}

/** True when the proxy completes an mTLS handshake with the stack's client certificate. */
export function proxyAnswers(plan: Pick<ProxyPlan, 'listenHost' | 'listenPort' | 'files'>, timeoutMs = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tls.connect({
      host: plan.listenHost,
      port: plan.listenPort,
      ca: fs.readFileSync(plan.files.caCert),
      cert: fs.readFileSync(plan.files.clientCert),
      key: fs.readFileSync(plan.files.clientKey),
      ALPNProtocols: ['h2'],
      servername: /^\d+\.\d+\.\d+\.\d+$/.test(plan.listenHost) ? undefined : plan.listenHost,
    });
    const finish = (answer: boolean) => {
      socket.destroy();
      resolve(answer);
    };
    socket.setTimeout(timeoutMs, () => finish(false));
    socket.once('secureConnect', () => finish(socket.alpnProtocol === 'h2'));
    socket.once('error', () => finish(false));
  });
}
