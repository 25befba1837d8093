// Browser tests: Debian's Chromium (never a downloaded browser), headless, against a real hub
// started by tests/hub.mjs. Screenshots of every test land in test-results/ (CI keeps them).
import { defineConfig } from '@playwright/test';

export default defineConfig({
  testDir: 'tests',
  testMatch: '*.spec.mjs',
  // One hub per test file; files run one at a time (the machine has two cores and the hub
  // wants one of them).
  workers: 1,
  fullyParallel: false,
  timeout: 60_000,
  expect: { timeout: 5_000 },
  outputDir: 'test-results',
  reporter: [['list']],
  use: {
    browserName: 'chromium',
    viewport: { width: 1920, height: 1080 },
    screenshot: 'on',
    trace: 'retain-on-failure',
    launchOptions: {
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--use-fake-ui-for-media-stream',
        '--use-fake-device-for-media-stream',
        // Host candidates as plain addresses: there is no multicast DNS between two headless pages.
        '--disable-features=WebRtcHideLocalIpsWithMdns',
      ],
    },
  },
});
