/**
 * Renders a report in headless Chromium (the system's /usr/bin/chromium via playwright-core; no
 * browser download) and saves a full-page PNG, for checking reports by eye and in tests.
 */
import fs from 'node:fs';
import { pathToFileURL } from 'node:url';
import { chromium, type Browser } from 'playwright-core';

export const DEFAULT_CHROMIUM_PATH = '/usr/bin/chromium';

/** Path of a usable Chromium (CHROMIUM_PATH or the Debian package's), or undefined when none is installed. */
export function findChromium(): string | undefined {
  const candidate = process.env.CHROMIUM_PATH ?? DEFAULT_CHROMIUM_PATH;
  return fs.existsSync(candidate) ? candidate : undefined;
}

/** Headless, offline: the report must never need the network, so nothing in the browser should reach for it. */
export async function launchChromium(executablePath = findChromium()): Promise<Browser> {
  if (executablePath === undefined) throw new Error(`Chromium not found at ${DEFAULT_CHROMIUM_PATH} (install it with: apt-get install -y chromium, or set CHROMIUM_PATH)`);
  return chromium.launch({
    executablePath,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

export interface ScreenshotResult {
  /** Plotly plots drawn on the page. */
  plots: number;
  /** Network requests other than the report file itself (should be 0: the report is self-contained). */
  externalRequests: string[];
}

/** Opens `htmlPath`, waits until every plot is drawn, and writes a full-page screenshot to `pngPath`. */
export async function screenshotReport(htmlPath: string, pngPath: string, options: { width?: number; timeoutMs?: number } = {}): Promise<ScreenshotResult> {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: options.width ?? 1280, height: 900 } });
    const fileUrl = pathToFileURL(htmlPath).href;
    const externalRequests: string[] = [];
    page.on('request', (request) => {
      if (request.url() !== fileUrl && !request.url().startsWith('data:')) externalRequests.push(request.url());
    });
    await page.goto(fileUrl);
    await page.waitForSelector('html[data-report-ready]', { timeout: options.timeoutMs ?? 60_000, state: 'attached' });
    const ready = await page.getAttribute('html', 'data-report-ready');
    if (ready !== 'yes') throw new Error(`report plots failed to draw: ${await page.textContent('#report-error')}`);
    await page.screenshot({ path: pngPath, fullPage: true });
    const plots = await page.locator('.js-plotly-plot').count();
    return { plots, externalRequests };
  } finally {
    await browser.close();
  }
}
