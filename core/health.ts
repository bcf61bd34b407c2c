import http from 'node:http';

/**
 * The health endpoint of a long-running cpflow process (workers, the starter), for Kubernetes probes:
 *
 *   GET /healthz  200 while the process runs (liveness)
 *   GET /readyz   200 once it does its work (workers polling, the watcher connected), 503 before that
 *                 and while it shuts down; the body says which
 *
 * On CPFLOW_HEALTH_PORT (0.0.0.0), off when unset so several processes can share a laptop.
 */
export interface HealthServer {
  setReady(ready: boolean, detail?: string): void;
  close(): Promise<void>;
  port(): number;
}

export function startHealthServer(port: number, role: string, host = '0.0.0.0'): Promise<HealthServer> {
  let ready = false;
  let detail = 'starting';
  const server = http.createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      response.writeHead(200, { 'content-type': 'text/plain' }).end(`ok ${role}\n`);
    } else if (path === '/readyz') {
      response.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' }).end(`${ready ? 'ready' : 'not ready'}: ${detail}\n`);
    } else {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      // A health server must never keep a finished process alive.
      server.unref();
      resolve({
        setReady: (value, text) => {
          ready = value;
          detail = text ?? (value ? 'ok' : 'not ready');
        },
        close: () => new Promise((done) => server.close(() => done())),
        port: () => {
          const address = server.address();
          return typeof address === 'object' && address !== null ? address.port : port;
        },
      });
    });
  });
}
