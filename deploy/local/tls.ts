/**
 * The secure local stack's certificates: a private CA made once per stack directory, one server
 * certificate for every service (Temporal's TLS proxy, MariaDB, MinIO) naming localhost, 127.0.0.1 and
 * the stack's host address, and one client certificate (CN=cpflow) for mTLS to Temporal and X509 to
 * MariaDB. Made with the `openssl` command (Debian's openssl package), RSA 2048, keys mode 0600.
 */
import fs from 'node:fs';
import path from 'node:path';
import execa from 'execa';
import { findProgram, type Logger } from './install';
import { StackError } from './state';

export interface TlsFiles {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

const VALID_DAYS = 825;

export function tlsFiles(dir: string): TlsFiles {
  return {
    dir,
    caCert: path.join(dir, 'ca.crt'),
    serverCert: path.join(dir, 'server.crt'),
    serverKey: path.join(dir, 'server.key'),
    clientCert: path.join(dir, 'client.crt'),
    clientKey: path.join(dir, 'client.key'),
  };
}

async function openssl(args: string[], cwd: string): Promise<void> {
  const program = findProgram('openssl');
  if (program === undefined) throw new StackError('the secure stack needs the openssl command (apt-get install openssl)');
  const result = await execa(program, args, { cwd, reject: false, stdin: 'ignore', all: true });
  if (result.exitCode !== 0) throw new StackError(`openssl ${args[0]} failed (exit ${result.exitCode}): ${(result.all ?? '').trim().split('\n').slice(-3).join(' ')}`);
}

/** Names a server certificate must carry for `host`: always loopback and localhost too. */
export function serverNames(host: string): string[] {
  const names = new Set(['DNS:localhost', 'IP:127.0.0.1', /^\d+\.\d+\.\d+\.\d+$/.test(host) ? `IP:${host}` : `DNS:${host}`]);
  return [...names];
}

async function signed(files: TlsFiles, name: 'server' | 'client', subject: string, extensions: string[]): Promise<void> {
  const key = path.join(files.dir, `${name}.key`);
  const csr = path.join(files.dir, `${name}.csr`);
  const ext = path.join(files.dir, `${name}.ext`);
  fs.writeFileSync(ext, `${extensions.join('\n')}\n`);
  await openssl(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', subject], files.dir);
  await openssl(
    ['x509', '-req', '-in', csr, '-CA', files.caCert, '-CAkey', path.join(files.dir, 'ca.key'), '-CAcreateserial', '-out', path.join(files.dir, `${name}.crt`), '-days', String(VALID_DAYS), '-sha256', '-extfile', ext],
    files.dir,
  );
  fs.chmodSync(key, 0o600);
  fs.rmSync(csr, { force: true });
}

/**
 * Make whatever is missing: the CA (kept across restarts so clients' trust stays valid), the server
 * certificate (re-made when `host` is not among its names), the client certificate.
 */
export async function ensureCertificates(dir: string, host: string, log: Logger): Promise<TlsFiles> {
  const files = tlsFiles(dir);
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caKey = path.join(dir, 'ca.key');
  if (!fs.existsSync(files.caCert) || !fs.existsSync(caKey)) {
    log(`making a private CA in ${dir}`);
    await openssl(
      ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', caKey, '-out', files.caCert, '-days', String(VALID_DAYS), '-sha256', '-subj', '/CN=cpflow local stack CA',
        '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'],
      dir,
    );
    fs.chmodSync(caKey, 0o600);
    for (const stale of [files.serverCert, files.clientCert]) fs.rmSync(stale, { force: true });
  }
  const names = serverNames(host);
  const namesFile = path.join(dir, 'server.names');
  const current = fs.existsSync(namesFile) ? fs.readFileSync(namesFile, 'utf8') : '';
  if (!fs.existsSync(files.serverCert) || current !== names.join(',')) {
    log(`making the server certificate for ${names.join(', ')}`);
    await signed(files, 'server', '/CN=cpflow local stack', [
      `subjectAltName=${names.join(',')}`,
      'extendedKeyUsage=serverAuth',
      'keyUsage=critical,digitalSignature,keyEncipherment',
    ]);
    fs.writeFileSync(namesFile, names.join(','));
  }
  if (!fs.existsSync(files.clientCert)) {
    await signed(files, 'client', '/CN=cpflow', ['extendedKeyUsage=clientAuth', 'keyUsage=critical,digitalSignature,keyEncipherment']);
  }
  return files;
}
