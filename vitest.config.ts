import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['./test/helpers/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Integration files start servers on real ports; two workers match the machine's two cores.
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    pool: 'forks',
    reporters: ['default', './test/helpers/plain-summary-reporter.ts'],
  },
});
